"""Compose the stages into one run over a site: ``detect_pair``.

load -> align -> register -> normalize -> measure -> decide -> objects -> write.
Global quantities (registration, radiometric fit, noise, threshold) are
estimated first from decimated reads and chips; the per-pixel stages then run
window by window with a halo. Whole-scene products are uint8 (quantised score,
line evidence, water, reasons, probability, mask, classes) and the int32 region
labels, held in memory maps past ``processing.memory_budget_mb``
(:mod:`changedet.scratch`); the decision stages go through them window by window
(:mod:`changedet.windowed`, :mod:`changedet.labels`) and let go of the maps' pages
as they go, so the working set does not grow with the scene.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from . import (__version__, categories, cloudmask, differencing, geodesy, learned, objects, observability, parallel,
               quicklook, radiometry, registration, report, resources, scratch, significance, stac, threshold,
               vector, windowed)
from .learned import bands as lbands
from .learned import features as lfeatures
from .learned import guided
from .coregistration import estimate_registration, observability_scale, read_registered, rgb_bands
from .arrays import band_roles, crop, luminance
from .config import Config
from .errors import InputError, OutputError, RegistrationError
from .io import (
    BandWriter,
    as_input,
    Box,
    block_cache,
    OutputStage,
    PairSource,
    grow,
    iter_windows,
    open_pair,
    file_record,
    raster_info,
    strip_rows,
    sweep_dead_scratch,
    describe_band,
    to_cog,
    write_categorical_cog,
    write_json,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.3"  # 1.1: `files` (issue 13); 1.2: scalar centroid_x/y, bbox_col0.., categorical sidecars, report.html; 1.3: inputs.*.datetime, item.json (issue 16)
# 1.3: inputs.*.datetime (and assets), URL/STAC inputs, item.json (issue 16, STAC)
#: ``*.tif.aux.xml``: category names and attribute tables of the categorical rasters (GeoTIFF has no place for them)
OUTPUT_FILES = ["change_mask.tif", "change_mask.tif.aux.xml", "change_class.tif", "change_class.tif.aux.xml",
                "change_score.tif", "detections.geojson", "summary.json", "quicklook.png", "report.html", "item.json"]
#: every file a run may write into its output folder (tie points only when asked and found, the
#: extra vector file only with output.vector_format)
CONTRACT_FILES = (*OUTPUT_FILES, "tiepoints.geojson", "detections.gpkg", "detections.fgb")

#: progress(stage, done, total)
ProgressFn = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def _steps(progress: ProgressFn, stage: str, total: int) -> Callable[[], None]:
    """A callback reporting one more of ``total`` steps of ``stage`` at each call: progress for a
    stage made of a few whole-image steps rather than a loop over windows."""
    progress(stage, 0, total)  # the bar shows (and its clock runs) from the stage's start
    done = iter(range(1, total + 1))
    return lambda: progress(stage, next(done, total), total)


@dataclass(frozen=True)
class RunResult:
    """What ``detect_pair`` produced."""

    out_dir: Path
    summary: dict[str, Any]


class _Timer:
    """Wall seconds (``timings``) and the process's CPU seconds, every thread's (``cpu``), by stage."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.add(name, time.perf_counter() - t0, time.process_time() - c0)

    def record(self) -> dict[str, float]:
        """The run record's ``timings_s``: each stage's wall seconds, then as ``<stage>_cpu`` its CPU seconds
        (``measure_cpu`` / ``measure`` = 2 is two busy cores)."""
        return {**self.timings, **{f"{k}_cpu": v for k, v in self.cpu.items()}}

    def add(self, name: str, wall_s: float, cpu_s: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + wall_s, 3)
        self.cpu[name] = round(self.cpu.get(name, 0.0) + cpu_s, 3)


def workers(cfg: Config) -> int:
    """Threads for the per-window and per-region stages (``processing.workers``; 0 = every core)."""
    return parallel.resolve_workers(cfg.processing.workers)


# --------------------------------------------------------------------------- reading the pair


Chip = tuple[np.ndarray, np.ndarray, np.ndarray]


def read_chips(pair: PairSource, reg: registration.Registration, cfg: Config) -> list[Chip]:
    """(before, registered after, valid) at full resolution on the registration's chip grid."""
    boxes = registration.chip_boxes(pair.shape, cfg.registration.chip_px, cfg.registration.grid)
    return list(parallel.map_windows(partial(read_registered, pair, reg), boxes))


def sample_pair(chips: list[Chip], max_px: int = 250_000) -> tuple[np.ndarray, np.ndarray]:
    """Co-located valid samples (bands, n) of before and registered after, from the chips."""
    before = np.concatenate([b[:, v] for b, _, v in chips], axis=1)
    after = np.concatenate([a[:, v] for _, a, v in chips], axis=1)
    step = max(1, before.shape[1] // max_px)
    return before[:, ::step], after[:, ::step]


# --------------------------------------------------------------------------- per-window pass


@dataclass(frozen=True)
class _Models:
    reg: registration.Registration
    fit: radiometry.RadiometricFit
    noise: differencing.NoiseModel
    water: objects.WaterModel
    scale: observability.Scale


def line_noise(chips: list[Chip], fit: radiometry.RadiometricFit, lum_sigma: float,
               cfg: Config) -> tuple[tuple[float, ...], float]:
    """No-change spread of line contrasts (:func:`differencing.fit_line_noise`), from every fourth chip."""
    n = cfg.measure.line_length_px
    if n < 2 or cfg.decide.line_min_ratio <= 0:
        return (), 0.0
    used = chips[::4] if len(chips) >= 8 else chips
    return differencing.fit_line_noise([(b, radiometry.apply(a, fit, b), v) for b, a, v in used], lum_sigma, n)


@dataclass(frozen=True)
class _Learned:
    """The learned stage of a run: its head, the RGB stretch and the quantised probability (whole, uint8)."""

    head: learned.Head
    stretch: lfeatures.Stretch
    pq: np.ndarray
    path: str
    fraction_seen: float = 1.0  # share of the grid's windows the model ran on (the cascade skips the rest)

    def to_json(self) -> dict[str, Any]:
        card = self.head.card
        return {"enabled": True, "path": self.path, "sha256": self.head.sha256,
                "fraction_seen": round(self.fraction_seen, 4),
                "encoder": lfeatures.ENCODER_PATH.name,
                "encoder_sha256": card.get("encoder", {}).get("sha256", ""),
                "threshold": round(self.head.threshold, 4), "stretch": self.stretch.to_json(),
                "trained_on": card.get("training", {}).get("datasets", {}),
                "created": card.get("created", "")}


#: the cascade runs the model on a window when a candidate lies this close to it: the reach of the
#: guided filter and of the stride-4 probability's blur across a window's edge (fuse_pass)
CASCADE_MARGIN_PX = 32


def cascade_windows(q: np.ndarray, level: float, window_px: int) -> list[Box]:
    """The windows of the learned stage that hold a candidate: a quantised classical score ``q``
    (uint8, 255 nodata) of at least ``level`` (0..1) within :data:`CASCADE_MARGIN_PX` of them.

    ``level`` <= 0 keeps every window.
    """
    boxes = list(iter_windows(q.shape, window_px))
    if level <= 0:
        return boxes
    least = int(np.ceil(level * threshold.LEVELS))
    cand = windowed.Where(q, lambda a: (a != threshold.NODATA) & (a >= least))
    rows, cols = np.zeros(q.shape[0], bool), np.zeros(q.shape[1], bool)
    for r0, r1 in windowed.strips(q.shape, window_px):
        part = cand[r0:r1]
        rows[r0:r1] = np.any(part, axis=1)
        cols |= np.any(part, axis=0)
    m = CASCADE_MARGIN_PX
    keep = []
    for box in boxes:
        r0, c0 = max(0, box[0] - m), max(0, box[1] - m)
        r1, c1 = box[0] + box[2] + m, box[1] + box[3] + m
        if rows[r0:r1].any() and cols[c0:c1].any() and cand[r0:r1, c0:c1].any():
            keep.append(box)
    return keep


def learned_pass(pair: PairSource, models: _Models, head: learned.Head, stretch: lfeatures.Stretch, cfg: Config,
                 progress: ProgressFn, boxes: list[Box] | None = None,
                 scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """The learned probability of relevant change, quantised (uint8 levels, 255 nodata), whole.

    Windows of ``model.window_px`` see the encoder's halo (on the stride-16 grid), so the result
    does not depend on the window size. The encoder's first part is made once per pixel, by bands
    of window rows (:mod:`changedet.learned.bands`); the pair is read by its tiles. With ``boxes``
    (the cascade, :func:`cascade_windows`), only those windows are run; the others hold 0 where valid.
    """
    shape = pair.shape
    pq = scr.full(shape, threshold.NODATA, np.uint8)
    if boxes is None:
        boxes = list(iter_windows(shape, cfg.model.window_px))
    n = workers(cfg)
    threads = cfg.model.threads or parallel.library_threads(n)

    def inputs(box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, a, v = read_registered(pair, models.reg, box)
        xb = lfeatures.encoder_input(b, v, stretch)
        return xb, lfeatures.encoder_input(radiometry.apply(a, models.fit, b), v, stretch), v

    def pool(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        return parallel.ordered_map(fn, items, n)

    # the head's products run from every worker at once; the workers are done (the windows' generator
    # closed, its pool shut down) before BLAS gets its threads back, also when the run stops midway:
    # resizing OpenBLAS's pool while a product runs crashes the process
    with parallel.capped_blas_threads(n), \
            closing(lbands.window_probabilities(boxes, inputs, head, pool, threshold.quantize, threads)) as results:
        for i, (box, out) in enumerate(results):
            r, c, h, w = box
            pq[r:r + h, c:c + w] = out
            scratch.release(pq)
            progress("learned", i + 1, len(boxes))
    return pq


def run_learned(pair: PairSource, models: _Models, cfg: Config, sb: np.ndarray, q: np.ndarray, lq: np.ndarray,
                obs: observability.Observability, classical: threshold.Threshold,
                progress: ProgressFn, scr: scratch.Scratch = scratch.IN_MEMORY) -> tuple[_Learned, np.ndarray]:
    """The learned stage on the windows the classical score ``q`` finds candidates in (the cascade).

    Returns the stage and the line evidence ``lq`` with lines the model calls irrelevant (kerbs,
    shadows: probability below ``model.veto_probability``) set to 0. What cannot be seen is
    nodata in the probability too.
    """
    head = learned.load_model(cfg.model.path)
    stretch = lfeatures.Stretch.fit(sb, rgb_bands(pair))
    boxes = cascade_windows(q, cfg.model.cascade_score * classical.low, cfg.model.window_px)
    pq = learned_pass(pair, models, head, stretch, cfg, progress, boxes, scr)
    seen = sum(h * w for _, _, h, w in boxes) / float(max(1, q.size))
    ran = set(boxes)
    for r, c, h, w in iter_windows(q.shape, cfg.model.window_px):
        if (r, c, h, w) not in ran:  # no candidate: no relevant change (probability 0) where there are data
            pq[r:r + h, c:c + w][q[r:r + h, c:c + w] != threshold.NODATA] = 0
    # probability below the veto, looked up per level: no whole-scene float copy of the probability
    vetoed = (np.arange(256, dtype=np.float32) / threshold.LEVELS) < cfg.model.veto_probability
    for r, c, h, w in iter_windows(q.shape, cfg.processing.window_px):
        p = np.asarray(pq[r:r + h, c:c + w])
        p[np.asarray(obs.reason[r:r + h, c:c + w]) != observability.OBSERVABLE] = threshold.NODATA
        pq[r:r + h, c:c + w] = p
        ln = np.asarray(lq[r:r + h, c:c + w])
        lq[r:r + h, c:c + w] = np.where(vetoed[p] & (ln != threshold.NODATA), np.uint8(0), ln)
        scratch.release(pq, lq, obs.reason)
    return _Learned(head, stretch, pq, str(cfg.model.path or learned.DEFAULT_MODEL.name), seen), lq


def fuse(score: np.ndarray, prob: np.ndarray, classical_threshold: float, model_threshold: float,
         gate_score: float | np.ndarray, veto_probability: float, refined: np.ndarray | None = None) -> np.ndarray:
    """The fused change score of the classical score ``s`` and the learned probability ``p``.

    ``max(p * min(1, s / gate), min(1, s * t_m / t_c) * [p >= veto_probability])``, with ``t_m``
    the model's threshold and ``t_c`` the classical (automatic) one, so that the model's threshold
    on the fused score keeps a pixel when either

    - the model calls it relevant change (``p >= t_m``) and, where ``gate`` > 0, it changed at full
      resolution by at least ``gate`` (:func:`fuse_pass`: ``model.gate_score`` times the highest
      classical score within 4 px, which trims the stride-4 probability's blur past an edge), or
    - the classical score calls it changed (``s >= t_c``), with the classical outline, and the
      model does not call that change irrelevant (``p >= veto_probability``): a kerb, a shadow or
      a field that the model has learned to ignore is vetoed.

    ``refined`` (optional) is the probability with edges sharpened (:func:`refined_probability`); it
    takes the place of ``p`` in the first term, while the veto uses ``p`` itself.
    """
    s = np.asarray(score, np.float32)
    p = np.asarray(prob, np.float32)
    lp = p if refined is None else np.asarray(refined, np.float32)
    if np.any(np.asarray(gate_score) > 0):
        gate = np.maximum(np.asarray(gate_score, np.float32), np.float32(1e-6))
        learned_part = lp * np.minimum(np.float32(1), s / gate)
    else:
        learned_part = lp
    classical_part = np.minimum(np.float32(1), s * np.float32(model_threshold / max(classical_threshold, 1e-6)))
    classical_part = np.where(p >= veto_probability, classical_part, np.float32(0))
    return np.maximum(learned_part, classical_part).astype(np.float32)


def refined_probability(q: np.ndarray, pq: np.ndarray, box: Box, radius: int, eps: float) -> np.ndarray | None:
    """The learned probability of one window, its edges following the classical score's (float32).

    ``q`` and ``pq`` are the whole quantised classical score and probability (255 nodata, taken as
    0); the window is read with the guided filter's halo, so windows equal the whole image.
    ``None`` when ``radius`` is 0 (no refinement).
    """
    if radius <= 0:
        return None
    r, c, h, w = box
    m = guided.halo(radius)
    r0, c0 = max(0, r - m), max(0, c - m)
    r1, c1 = min(q.shape[0], r + h + m), min(q.shape[1], c + w + m)
    guide, p = (np.where(x == threshold.NODATA, 0, x) for x in (q[r0:r1, c0:c1], pq[r0:r1, c0:c1]))
    out = guided.guided_filter(guide, p, radius, eps, threshold.LEVELS)
    return out[r - r0:r - r0 + h, c - c0:c - c0 + w].astype(np.float32)


def backed_regions(mask: np.ndarray, pq: np.ndarray, min_probability: float,
                   min_piece_px: int = 4 * lfeatures.HEAD_STRIDE ** 2, window_px: int = 1024,
                   scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """``mask`` (uint8: 0, 1, 255 nodata) with the changed regions the model does not back cut back.

    A region (8-connected) stays whole when the mean of the quantised probability ``pq`` over its
    pixels reaches ``min_probability``. Otherwise only its pixels whose own probability reaches
    ``min_probability`` stay, in pieces of at least ``min_piece_px`` (what the model's grid can
    resolve: 2 x 2 cells of stride 4): fragments that only the classical score or line evidence
    found go, and a large merged region keeps the part the model calls changed. Returns a new array
    (from ``scr``), made window by window.
    """
    out = scr.copy(mask)
    if min_probability <= 0:
        return out
    labels, stats = windowed.label(mask, window_px, scr, value=1)
    n = len(stats)
    if n <= 1:
        return out
    # each region's probabilities summed over its pixels in row-major order, as one bincount would
    lab_px, p_px = windowed.label_pixels(labels, window_px, pq)
    sums = windowed.label_sums(lab_px, threshold.dequantize(p_px), n)
    del lab_px, p_px
    weak = sums < min_probability * np.maximum(stats[:, cv2.CC_STAT_AREA].astype(np.int64), 1)
    weak[0] = False
    pieces = scr.zeros(mask.shape, np.uint8)

    def cut_weak(box: Box) -> None:
        r, c, h, w = box
        in_weak = weak[np.asarray(labels[r:r + h, c:c + w])]
        part = np.asarray(out[r:r + h, c:c + w])
        part[in_weak & (threshold.dequantize(np.asarray(pq[r:r + h, c:c + w])) < min_probability)] = 0
        out[r:r + h, c:c + w] = part
        pieces[r:r + h, c:c + w] = in_weak & (part == 1)

    for _ in windowed.map_boxes(cut_weak, mask.shape, window_px):
        scratch.release(out, pq, pieces, labels)
    kept = threshold.remove_small(pieces, min_piece_px, window_px, scr)

    def drop_small(box: Box) -> None:
        r, c, h, w = box
        drop = (np.asarray(pieces[r:r + h, c:c + w]) == 1) & (np.asarray(kept[r:r + h, c:c + w]) == 0)
        if drop.any():
            out[r:r + h, c:c + w][drop] = 0

    for _ in windowed.map_boxes(drop_small, mask.shape, window_px):
        scratch.release(out, pieces, kept)
    return out


def fuse_pass(score_path: Path, q: np.ndarray, lrn: _Learned, classical: threshold.Threshold,
              cfg: Config, scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """Replace the classical score in ``score_path`` by the fused score; returns it quantised (whole, uint8)."""
    fq = scr.full(q.shape, threshold.NODATA, np.uint8)
    local_max = None
    if cfg.model.gate_score > 0:
        size = 2 * lfeatures.HEAD_STRIDE + 1  # the reach of the stride-4 probability's blur
        local_max = scr.zeros(q.shape, np.uint8)
        for box in iter_windows(q.shape, cfg.processing.window_px):
            part, big = windowed.read(q, box, size // 2)
            grown = cv2.dilate(np.where(part == threshold.NODATA, 0, part).astype(np.uint8), np.ones((size, size), np.uint8))
            local_max[box[0]:box[0] + box[2], box[1]:box[1] + box[3]] = windowed.crop(grown, big, box)
            scratch.release(local_max)

    def one(item: tuple[Box, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (r, c, h, w), s = item
        valid = np.isfinite(s)
        p = lrn.pq[r:r + h, c:c + w].astype(np.float32) / threshold.LEVELS
        refined = refined_probability(q, lrn.pq, (r, c, h, w), cfg.model.guide_radius_px, cfg.model.guide_eps)
        gate: float | np.ndarray = 0.0
        if local_max is not None:
            gate = cfg.model.gate_score * local_max[r:r + h, c:c + w].astype(np.float32) / threshold.LEVELS
        f = fuse(np.nan_to_num(s), p, classical.high, lrn.head.threshold, gate, cfg.model.veto_probability, refined)
        return np.where(valid, f, np.float32(np.nan)).astype(np.float32), threshold.quantize(f, valid)

    with rasterio.open(score_path, "r+") as ds:
        boxes = list(iter_windows(q.shape, cfg.processing.window_px))
        # the dataset is read (lazily, in this thread) and written here; workers only compute
        items = ((box, ds.read(1, window=Window(box[1], box[0], box[3], box[2]))) for box in boxes)
        for (r, c, h, w), (f, fqw) in zip(boxes, parallel.ordered_map(one, items, workers(cfg))):
            ds.write(f, 1, window=Window(c, r, w, h))
            fq[r:r + h, c:c + w] = fqw
            scratch.release(fq, q, lrn.pq, *(() if local_max is None else (local_max,)))
    return fq


@dataclass
class _Scores:
    """Whole-scene results of the per-window pass."""

    q: np.ndarray  # quantised change score (uint8, 255 nodata)
    lq: np.ndarray  # quantised line evidence
    water: np.ndarray  # uint8 0/1, large water bodies
    ev_before: np.ndarray  # observability evidence bits of each date
    ev_after: np.ndarray


def score_pass(pair: PairSource, models: _Models, cfg: Config, score_path: Path,
               progress: ProgressFn, lrn: _Learned | None = None,
               scr: scratch.Scratch = scratch.IN_MEMORY) -> _Scores:
    """Score every window; write the float (classical) score.

    Returns the quantised change score, the quantised line evidence, water and the observability
    evidence of both dates (uint8, whole). With a learned stage, line evidence is kept only where
    the probability reaches ``model.veto_probability``.
    """
    halo = max(differencing.halo_px(cfg.measure), observability.halo_px())
    shape = pair.shape
    q = scr.full(shape, threshold.NODATA, np.uint8)
    lq = scr.zeros(shape, np.uint8)
    water = scr.zeros(shape, np.uint8)
    ev_b = scr.zeros(shape, np.uint8)
    ev_a = scr.zeros(shape, np.uint8)
    boxes = list(iter_windows(shape, cfg.processing.window_px))

    def one(box: Box) -> tuple[np.ndarray, ...]:
        b, a, v = read_registered(pair, models.reg, grow(box, halo))
        a_raw, a = a, radiometry.apply(a, models.fit, b)
        s = differencing.change_score(b, a, v, models.noise, cfg.measure)
        ln = differencing.line_score(b, a, v, models.noise, cfg.measure.line_length_px)
        w = objects.water_mask(b, a, v, models.water, cfg.objects)
        eb, ea = observability.evidence(b, a, v, models.scale, cfg.observe, after_raw=a_raw)
        s, ln, v, w, eb, ea = (crop(x, halo) for x in (s, ln, v, w, eb, ea))
        r, c, h, wd = box
        if lrn is not None:  # lines the model calls irrelevant (kerbs, shadows) are not evidence
            p = lrn.pq[r:r + h, c:c + wd].astype(np.float32) / threshold.LEVELS
            ln = np.where(p >= cfg.model.veto_probability, ln, np.float32(0))
        return s, ln, v, w, eb, ea

    writer = BandWriter(score_path, shape, "float32", float("nan"), pair.crs, pair.transform)
    try:
        # each block of the inputs decoded once, though the halo reads it for two rows of windows
        # the windows' pool is shut down before the cache is let go, also when the run stops midway
        with block_cache(pair, cfg.processing.window_px + 2 * halo), \
                closing(parallel.ordered_map(one, boxes, workers(cfg))) as results:
            for i, (box, (s, ln, v, w, eb, ea)) in enumerate(zip(boxes, results)):
                r, c, h, wd = box
                writer.write(box, np.where(v, s, np.float32(np.nan)).astype(np.float32))
                q[r:r + h, c:c + wd] = threshold.quantize(s, v)
                lq[r:r + h, c:c + wd] = threshold.quantize(ln, v)
                water[r:r + h, c:c + wd] = w
                ev_b[r:r + h, c:c + wd] = eb
                ev_a[r:r + h, c:c + wd] = ea
                scratch.release(q, lq, water, ev_b, ev_a)  # memory maps: only the window stays resident
                progress("measure", i + 1, len(boxes))
    finally:
        writer.close()
    scratch.trim_heap()  # the cache's blocks, let go, go back to the system
    with parallel.window_threads(workers(cfg)):
        water = objects.keep_large_water(water, cfg.objects, pair.gsd_m, cfg.processing.window_px, scr)
    return _Scores(q, lq, water, ev_b, ev_a)


def csmask_bands(pair: PairSource, before: str | Path, after: str | Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check that ``observe.cloud_model: csmask`` can run on this pair; the bands it takes from each date.

    Raises ConfigError when the extra is missing, InputError naming the file whose bands do not fit.
    """
    cloudmask.require_installed()
    out = []
    for ds, idx, path in ((pair.before, pair.before_bands, before), (pair.after, pair.after_bands, after)):
        try:
            out.append(cloudmask.model_bands(cloudmask.band_names(tuple(ds.descriptions[i - 1] for i in idx))))
        except ValueError as exc:
            raise InputError(f"{path}: {exc}; or set observe.cloud_model=classical") from None
    if len(out[0]) != len(out[1]):
        out = [b[:4] for b in out]  # both dates through the same model
    return out[0], out[1]


def csmask_pass(pair: PairSource, reg: registration.Registration, cfg: Config, bands: tuple[tuple[int, ...], ...]
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Cloud and shadow masks of both dates (on the grid, ``after`` registered) by ukis-csmask.

    Each date is averaged to about ``observe.csmask_gsd_m`` window by window (windows on block
    boundaries, so the result equals one whole-scene average), classified whole at that size, and
    the classes taken back to the grid by pixel replication.
    """
    o = cfg.observe
    factor = max(1, int(round(o.csmask_gsd_m / pair.gsd_m)))
    gh, gw = -(-pair.height // factor), -(-pair.width // factor)
    sums = [np.zeros((len(b), gh, gw)) for b in bands]
    counts = [np.zeros((gh, gw)) for _ in bands]
    step = max(1, cfg.processing.window_px // factor) * factor

    def one(box: Box) -> list[tuple[np.ndarray, np.ndarray]]:
        b, a, v = read_registered(pair, reg, box)
        return [cloudmask.block_sums(cloudmask.reflectance(img[list(bands[k])], o.csmask_dn_scale,
                                                           o.csmask_dn_offset), v, factor)
                for k, img in enumerate((b, a))]

    boxes = list(iter_windows(pair.shape, step))
    for (r, c, h, w), both in zip(boxes, parallel.ordered_map(one, boxes, workers(cfg))):
        for k, (s, n) in enumerate(both):
            sums[k][:, r // factor:r // factor + s.shape[1], c // factor:c // factor + s.shape[2]] = s
            counts[k][r // factor:r // factor + n.shape[0], c // factor:c // factor + n.shape[1]] = n
    out = []
    for k in range(2):
        ok = counts[k] > 0
        img = (sums[k] / np.maximum(counts[k], 1)).astype(np.float32)
        cs = cloudmask.cloud_shadow(img, ok, o.csmask_product_level, cfg.model.threads)
        out.append(tuple(np.repeat(np.repeat(m, factor, 0), factor, 1)[:pair.height, :pair.width]
                         for m in (cs.cloud, cs.shadow)))
    return (out[0][0], out[0][1]), (out[1][0], out[1][1])


def observe(pair: PairSource, cfg: Config, sc: _Scores, score_path: Path,
            lrn: _Learned | None,
            cloud_shadow: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
            scr: scratch.Scratch = scratch.IN_MEMORY) -> observability.Observability:
    """Find what cannot be seen on either date and take it out of every later stage.

    Not-observable pixels become nodata in the quantised scores (so nothing is decided there),
    NaN in the score raster, and are not water (so no vessel context comes from a cloud).
    Window by window: the reason raster comes from ``scr``.
    """
    win = cfg.processing.window_px
    valid = windowed.Where(sc.q, lambda q: q != threshold.NODATA)
    if cfg.observe.enabled:
        obs = observability.resolve(sc.ev_before, sc.ev_after, valid, pair.gsd_m, cfg.observe, cloud_shadow,
                                    window_px=win, scr=scr)
    else:
        reason = windowed.fill(scr.zeros(sc.q.shape, np.uint8), (
            (box, np.where(valid[box[0]:box[0] + box[2], box[1]:box[1] + box[3]], observability.OBSERVABLE,
                           observability.NODATA).astype(np.uint8)) for box in windowed.windows(sc.q.shape, win)))
        obs = observability.Observability(reason, (None, None))
    sc.ev_before = sc.ev_after = np.zeros((0, 0), np.uint8)  # free them

    def hidden(r: int, c: int, h: int, w: int) -> np.ndarray:
        sel = (np.asarray(obs.reason[r:r + h, c:c + w]) != observability.OBSERVABLE) & \
            (np.asarray(sc.q[r:r + h, c:c + w]) != threshold.NODATA)
        scratch.release(obs.reason, sc.q)
        return sel

    boxes = list(iter_windows(sc.q.shape, win))
    if not any(hidden(*box).any() for box in boxes):
        return obs
    with rasterio.open(score_path, "r+") as ds:
        for r, c, h, w in boxes:
            sel = hidden(r, c, h, w)
            if not sel.any():
                continue
            for arr, value in ((sc.q, threshold.NODATA), (sc.lq, threshold.NODATA), (sc.water, 0)) + \
                    (((lrn.pq, threshold.NODATA),) if lrn is not None else ()):
                arr[r:r + h, c:c + w][sel] = value
                scratch.release(arr)
            window = Window(c, r, w, h)
            score = ds.read(1, window=window)
            score[sel] = np.nan
            ds.write(score, 1, window=window)
    return obs


def add_line_scores(score_path: Path, lines: np.ndarray, lq: np.ndarray, window_px: int) -> None:
    """Give the pixels of lines found by line evidence that evidence in the score raster.

    ``change_score.tif`` then explains every changed pixel: a faint trench's pixels score low
    pixel by pixel, and high as a line. Other pixels keep the fused pixel score.
    """
    boxes = [box for box in iter_windows(lines.shape, window_px)
             if np.any(windowed.read(lines, box)[0] == 1)]  # windows holding a line
    if not boxes:
        return
    with rasterio.open(score_path, "r+") as ds:
        for r, c, h, w in boxes:
            sel = np.asarray(lines[r:r + h, c:c + w]) == 1
            win = Window(c, r, w, h)
            score = ds.read(1, window=win)
            line = np.asarray(lq[r:r + h, c:c + w]).astype(np.float32) / threshold.LEVELS
            score[sel] = np.maximum(score[sel], line[sel])
            ds.write(score, 1, window=win)
            scratch.release(lines, lq)


# --------------------------------------------------------------------------- objects


def reading_order(corners: Sequence[tuple[int, int]], strip_px: int) -> list[int]:
    """Indexes of crops with top-left ``corners`` (row, col) in reading order of strips of ``strip_px``
    rows: by strip, then by column, then as given.

    Crops read in this order walk the inputs' tiles along a strip, so a tile that several regions
    share is decoded about once; in the regions' label order (by first row), consecutive crops jump
    across the whole width, and a row of 512² tiles of two 10980² 4-band uint16 inputs (88 MB) does
    not fit GDAL's 64 MB block cache.
    """
    return sorted(range(len(corners)), key=lambda i: (corners[i][0] // max(1, strip_px), corners[i][1], i))


def refine_edges(pair: PairSource, models: _Models, cfg: Config, mask: np.ndarray,
                 progress: ProgressFn, scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """The mask with each region's outline trimmed to the object's half-coverage edge (uint8, new array).

    Reads a crop around each region (:func:`objects.coverage`, :func:`objects.trim_edges`), then drops
    regions left smaller than ``decide.min_area_m2``.
    """
    min_cover = cfg.decide.edge_min_cover
    if min_cover <= 0:
        return mask
    labels, comps = objects.components(mask, cfg.processing.window_px, scr)
    out = scr.copy(mask)
    sigma = np.asarray(models.noise.band_sigma)
    margin = 4

    def one(comp: objects.Component) -> tuple[np.ndarray, np.ndarray]:
        box = (comp.row_min - margin, comp.col_min - margin, comp.row_max - comp.row_min + 1 + 2 * margin,
               comp.col_max - comp.col_min + 1 + 2 * margin)
        b, a, _ = read_registered(pair, models.reg, box)
        a = radiometry.apply(a, models.fit, b)
        obj = _crop_whole(labels, box, 0) == comp.label
        drop = obj & ~objects.trim_edges(obj, objects.coverage(obj, b, a, sigma), min_cover)
        rows, cols = np.nonzero(drop)
        return rows + box[0], cols + box[1]

    # in the order of the inputs' tiles: the crops of neighbouring regions share the blocks GDAL
    # decoded (the regions' cuts commute: each only clears its own pixels)
    ordered = [comps[i] for i in reading_order([(c.row_min, c.col_min) for c in comps], cfg.processing.window_px)]
    for i, (rows, cols) in enumerate(parallel.ordered_map(one, ordered, workers(cfg))):
        out[rows, cols] = 0
        if i % 64 == 63:  # memory maps keep only the pages of the last crops
            scratch.release(labels, out)
        progress("edges", i + 1, len(comps))
    scratch.release(out)
    win = cfg.processing.window_px
    cleaned = threshold.remove_small(windowed.equals(out, 1), int(np.ceil(cfg.decide.min_area_m2 / pair.gsd_m ** 2)),
                                     win, scr)

    def drop_small(box: Box) -> None:
        r, c, h, w = box
        part = np.asarray(out[r:r + h, c:c + w])
        part[(part == 1) & (np.asarray(cleaned[r:r + h, c:c + w]) == 0)] = 0
        out[r:r + h, c:c + w] = part

    for _ in windowed.map_boxes(drop_small, out.shape, win):
        scratch.release(out, cleaned)
    return out


def describe_objects(pair: PairSource, models: _Models, cfg: Config, labels: np.ndarray,
                     groups: list[objects.Group], q: np.ndarray, water: np.ndarray,
                     progress: ProgressFn) -> tuple[list[objects.Detection], list[str]]:
    """Measure, put in context and type every object (reads a crop around each)."""
    params = cfg.objects
    notes: list[str] = []
    if len(groups) > params.max_objects:
        area = {g: int(np.isin(labels[g.bbox_px[1]:g.bbox_px[3] + 1, g.bbox_px[0]:g.bbox_px[2] + 1],
                               g.labels).sum()) for g in groups}
        keep = set(sorted(groups, key=lambda g: -area[g])[: params.max_objects])
        notes.append(f"objects: {len(groups)} regions, only the {params.max_objects} largest were described")
        groups = [g for g in groups if g in keep]
    margin = params.ring_px + 2
    sigma = np.asarray(models.noise.band_sigma)
    geographic = pair.georeferenced and geodesy.is_geographic(pair.crs) and \
        pair.transform.b == 0 and pair.transform.d == 0

    def one(grp: objects.Group) -> objects.Detection:
        c0, r0, c1, r1 = grp.bbox_px
        box = (r0 - margin, c0 - margin, r1 - r0 + 1 + 2 * margin, c1 - c0 + 1 + 2 * margin)
        b, a, v = read_registered(pair, models.reg, box)
        a = radiometry.apply(a, models.fit, b)
        changed = np.isin(_crop_whole(labels, box, 0), grp.labels)  # the mask's pixels of the object
        obj = objects.group_mask(labels, grp, box)  # with the bridges over its gaps
        wat = _crop_whole(water, box, 0) > 0
        sc = _crop_whole(q, box, threshold.NODATA).astype(np.float32) / threshold.LEVELS
        shadow = objects.cast_shadow(changed & v, b, a, params)
        core = objects.fill_holes(objects.object_core(obj, shadow))
        if geographic:  # pixels of degrees: measured at the object's latitude, geodesically
            shape = geodesy.measure_shape_geographic(core, (box[0], box[1]), pair.transform, pair.crs, params)
        else:
            shape = objects.measure_shape(core, (box[0], box[1]), pair.gsd_m, params)
        ctx = objects.measure_context(changed, b, a, v, wat, np.minimum(sc, 1.0), sigma, params)
        ctx = replace(ctx, shadow_frac=float(shadow.sum() / max(changed.sum(), 1)))
        cls, conf = objects.classify(shape, ctx, params)
        return objects.Detection(id=0, cls=cls, event=objects.event_of(ctx), confidence=conf,
                                 shape=shape, context=ctx, bbox_px=grp.bbox_px, group=grp)

    # described in the order of the inputs' tiles (crops of neighbours share decoded blocks), kept in the groups' order
    order = reading_order([(g.bbox_px[1], g.bbox_px[0]) for g in groups], cfg.processing.window_px)
    found: list[objects.Detection | None] = [None] * len(groups)
    for i, (k, det) in enumerate(zip(order, parallel.ordered_map(one, [groups[k] for k in order], workers(cfg)))):
        found[k] = det
        if i % 64 == 63:  # memory maps keep only the pages of the last crops
            scratch.release(labels, water, q)
        progress("objects", i + 1, len(groups))
    return [replace(det, id=k + 1) for k, det in enumerate(found) if det is not None], notes


def _object_crop(labels: np.ndarray, det: objects.Detection) -> np.ndarray:
    """A detection's pixels (bridges included) in its bounding box (bool)."""
    c0, r0, c1, r1 = det.bbox_px
    box = (r0, c0, r1 - r0 + 1, c1 - c0 + 1)
    if det.group is None:
        raise ValueError("detection without its group")
    return objects.group_mask(labels, det.group, box)


def _crop_whole(arr: np.ndarray, box: Box, fill: int) -> np.ndarray:
    """A box of a whole (h, w) array, padded with ``fill`` past its edge."""
    r, c, h, w = box
    out = np.full((h, w), fill, dtype=arr.dtype)
    r0, c0 = max(r, 0), max(c, 0)
    r1, c1 = min(r + h, arr.shape[0]), min(c + w, arr.shape[1])
    out[r0 - r:r1 - r, c0 - c:c1 - c] = arr[r0:r1, c0:c1]
    return out


def class_image(labels: np.ndarray, mask: np.ndarray, dets: list[objects.Detection], n_labels: int | None = None,
                window_px: int = 1024, scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """The contract's class raster: 0 none, 1..4 by class, 255 nodata (changed pixels only, no bridges).

    Made window by window (into an array from ``scr``); ``n_labels`` is the largest label (default:
    ``labels.max()``).
    """
    lut = np.zeros((int(labels.max()) if n_labels is None else n_labels) + 1, dtype=np.uint8)
    for d in dets:
        if d.group is not None:
            lut[list(d.group.labels)] = objects.CLASS_CODES[d.cls]
    out = scr.zeros(labels.shape, np.uint8)

    def one(box: Box) -> None:
        r, c, h, w = box
        part = lut[labels[r:r + h, c:c + w]]
        part[mask[r:r + h, c:c + w] == threshold.NODATA] = threshold.NODATA
        out[r:r + h, c:c + w] = part

    for _ in windowed.map_boxes(one, labels.shape, window_px):
        scratch.release(out, labels, mask)
    return out


def clear_labels(mask: np.ndarray, labels: np.ndarray, drop: list[int], window_px: int) -> None:
    """Set ``mask`` to 0 (in place) where ``labels`` is one of ``drop``, window by window."""
    drop_arr = np.asarray(sorted(drop), dtype=labels.dtype)

    def one(box: Box) -> None:
        r, c, h, w = box
        sel = np.isin(labels[r:r + h, c:c + w], drop_arr)
        if sel.any():
            mask[r:r + h, c:c + w][sel] = 0

    for _ in windowed.map_boxes(one, labels.shape, window_px):
        scratch.release(labels, mask)


# --------------------------------------------------------------------------- outputs


def detection_features(pair: PairSource, dets: list[objects.Detection],
                       labels: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """GeoJSON features and the summary's detection records."""
    feats, records = [], []
    for k, d in enumerate(dets):
        if k % 64 == 63:  # a memory map keeps only the pages of the last crops
            scratch.release(labels)
        c0, r0, c1, r1 = d.bbox_px
        obj = _object_crop(labels, d)
        tr = pair.transform @ Affine.translation(c0, r0)
        geom = vector.geometry_json(vector.simplified_outline(obj, tr), pair.crs if pair.georeferenced else None)
        cx, cy = d.shape.centroid_px
        if pair.georeferenced:
            centroid = vector.point_to_wgs84(*(pair.transform @ (cx + 0.5, cy + 0.5)), pair.crs,
                                             vector.DECIMALS_WGS84)
        else:
            centroid = [round(cx + 0.5, vector.DECIMALS_PX), round(cy + 0.5, vector.DECIMALS_PX)]
        # scalar properties only, names of at most 10 characters: Shapefile and GeoPackage keep them all
        props = {
            "id": d.id, "class": d.cls, "event": d.event, "confidence": round(d.confidence, 4),
            "area_m2": round(d.shape.area_m2, 3), "length_m": round(d.shape.length_m, 3),
            "width_m": round(d.shape.width_m, 3), "orientation_deg": round(d.shape.orientation_deg, 2),
            "centroid_x": centroid[0], "centroid_y": centroid[1],
            "bbox_col0": c0, "bbox_row0": r0, "bbox_col1": c1, "bbox_row1": r1,
        }
        feats.append({"type": "Feature", "id": d.id, "geometry": geom, "properties": props})
        # the summary keeps the list-valued keys of schema 1.1 beside the scalar ones
        extra = {"centroid": centroid, "bbox_px": list(d.bbox_px),
                 "elongation": round(d.shape.elongation, 3), "rectangularity": round(d.shape.rectangularity, 3),
                 "water_frac": round(d.context.water_frac, 3), "ring_change": round(d.context.ring_change, 3),
                 "ring_level": round(d.context.ring_level, 3),
                 "mean_score": round(d.context.mean_score, 4),
                 "brightness_change": round(d.context.brightness_change, 3),
                 "shadow_frac": round(d.context.shadow_frac, 3)}
        if d.group is not None and len(d.group.labels) > 1:
            extra["parts_bbox_px"] = [list(_region_bbox(labels, lab, d.bbox_px)) for lab in d.group.labels]
        records.append({**props, **extra})
    return feats, records


def _region_bbox(labels: np.ndarray, label: int, within: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Bounding box (col_min, row_min, col_max, row_max) of one mask region inside a detection's box."""
    c0, r0, c1, r1 = within
    rows, cols = np.nonzero(labels[r0:r1 + 1, c0:c1 + 1] == label)
    return c0 + int(cols.min()), r0 + int(rows.min()), c0 + int(cols.max()), r0 + int(rows.max())


def tiepoint_features(pair: PairSource, reg: registration.Registration) -> dict[str, Any]:
    """The registration's tie points as GeoJSON points on the before grid, with their vectors."""
    feats = []
    model = reg.matrix
    for i, chip in enumerate(reg.chips):
        x, y = chip.col, chip.row
        pred = model @ np.array([x, y, 1.0])
        props = {"id": i + 1, "x_px": round(x, 3), "y_px": round(y, 3), "dx_px": round(chip.dx, 4),
                 "dy_px": round(chip.dy, 4), "ncc": round(chip.ncc, 4),
                 "inlier": bool(reg.inliers[i]) if reg.inliers else None,
                 "held_back": bool(reg.held_back[i]) if reg.held_back else None,
                 "model_error_px": round(float(np.hypot(x + chip.dx - pred[0], y + chip.dy - pred[1])), 4)}
        if pair.georeferenced:
            coords = vector.point_to_wgs84(*(pair.transform @ (x + 0.5, y + 0.5)), pair.crs)
        else:
            coords = [round(x + 0.5, 3), round(y + 0.5, 3)]
        feats.append({"type": "Feature", "id": i + 1, "geometry": {"type": "Point", "coordinates": coords},
                      "properties": props})
    return vector.feature_collection(feats, pair.georeferenced)


@dataclass(frozen=True)
class Panels:
    """What the quick-look and the report draw: decimated panels and detections in panel pixels."""

    before: np.ndarray  # (h, w, 3) uint8 BGR
    after: np.ndarray  # (h, w, 3) uint8 BGR, registered and normalised
    outlines: list[quicklook.Outline]
    hidden: np.ndarray | None  # (h, w) bool, not observable
    metres_per_px: float  # ground size of a panel pixel
    north_deg: float | None  # true north, clockwise from the panel's up
    counts: dict[str, int]


def input_label(record: dict[str, Any]) -> str:
    """How a panel names its date: the input's ``datetime`` (its date part) when known, else its file name."""
    when = record.get("datetime")
    if when:
        return str(when)[:10] if len(str(when)) >= 10 and str(when)[4] == "-" else str(when)
    return Path(str(record.get("path", ""))).name


def _shrink_by_strips(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` (uint8, may be a memory map) resized onto ``shape`` (h, w) by area averaging, read in
    strips of whole output rows (:func:`changedet.io.strip_rows`): a whole-scene mask is never
    held at once."""
    (big_h, big_w), (h, w) = mask.shape, shape[:2]
    if h >= big_h:  # enlarged (a small tile): at most the panel's size
        return cv2.resize(np.asarray(mask, np.uint8), (w, h), interpolation=cv2.INTER_AREA)
    rows_per_out = big_h / h
    step = max(1, int(strip_rows(big_w, 1) // rows_per_out))
    out = np.empty((h, w), np.uint8)
    for o0 in range(0, h, step):
        o1 = min(h, o0 + step)
        r0, r1 = int(round(o0 * rows_per_out)), int(round(o1 * rows_per_out))
        out[o0:o1] = cv2.resize(np.asarray(mask[r0:max(r1, r0 + 1)], np.uint8), (w, o1 - o0),
                                interpolation=cv2.INTER_AREA)
        scratch.release(mask)
    return out


def quicklook_panels(pair: PairSource, models: _Models, cfg: Config, dets: list[objects.Detection],
                     labels: np.ndarray, observable: np.ndarray | None = None) -> Panels:
    """Decimated before/after panels and the detections' outlines on them."""
    max_px = cfg.processing.quicklook_max_px
    b, bv, f = pair.read_decimated("before", max_px)
    a, av, _ = pair.read_decimated("after", max_px)
    small = models.reg.matrix.copy()
    small[:, 2] /= f
    a, av = registration.resample(a, av, (0, 0) + a.shape[1:], small, (0, 0) + b.shape[1:])
    a = radiometry.apply(a, models.fit, b)
    pb, lohi = quicklook.stretch(b, bv)
    pa, _ = quicklook.stretch(a, av & bv, lohi)
    up = max(1.0, 480.0 / max(pb.shape[:2]))  # small tiles are enlarged so an editor can read them
    if up > 1:
        size = (int(round(pb.shape[1] * up)), int(round(pb.shape[0] * up)))
        pb = cv2.resize(pb, size, interpolation=cv2.INTER_NEAREST)
        pa = cv2.resize(pa, size, interpolation=cv2.INTER_NEAREST)
    hidden = None
    if observable is not None:
        # what cannot be seen, on the panel grid; pixels of the reference outside the overlap stay unhatched
        hidden = _shrink_by_strips(observable, pb.shape[:2]) == 0
    scale = up / f
    outlines = []
    for k, d in enumerate(dets):
        if k % 64 == 63:  # a memory map keeps only the pages of the last crops
            scratch.release(labels)
        c0, r0, c1, r1 = d.bbox_px
        obj = _object_crop(labels, d).astype(np.uint8)
        contours, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        pts = max(contours, key=len).reshape(-1, 2).astype(np.float64)
        pts = (pts + [c0 + 0.5, r0 + 0.5]) * scale
        if len(pts) < 3:
            pts = np.array([[c0, r0], [c1 + 1, r0], [c1 + 1, r1 + 1], [c0, r1 + 1]], dtype=float) * scale
        outlines.append(quicklook.Outline(d.id, d.cls, d.event, np.round(pts).astype(np.int32)))
    counts = {k: sum(d.cls == k for d in dets) for k in objects.CLASS_CODES}
    north = None
    if pair.georeferenced and pair.crs is not None:
        north = quicklook.north_angle_deg(pair.crs.to_wkt(), list(pair.transform)[:6], pair.width, pair.height)
    return Panels(pb, pa, outlines, hidden, pair.gsd_m / scale, north, counts)


def render_quicklook(panels: Panels, site: str, dates: tuple[str, str] = ("", "")) -> np.ndarray:
    """The quick-look picture of :func:`quicklook_panels`, (H, W, 3) uint8 BGR."""
    return quicklook.render(panels.before, panels.after, panels.outlines, panels.counts, site, panels.hidden,
                            dates=dates, metres_per_px=panels.metres_per_px, north_deg=panels.north_deg)


def _summary(site: str, before: Any, after: Any, pair: PairSource, models: _Models, cfg: Config,
             thr: threshold.Threshold, mask: np.ndarray, records: list[dict[str, Any]], warns: list[str],
             timings: dict[str, float], applied: bool, obs: observability.Observability) -> dict[str, Any]:
    counts = {k: sum(r["class"] == k for r in records) for k in objects.CLASS_CODES}
    obs_km2 = obs.observable_km2(pair.gsd_m)
    mask_counts = np.zeros(256, np.int64)
    for r0, r1 in windowed.strips(mask.shape, 1024):
        mask_counts += np.bincount(np.asarray(mask[r0:r1]).ravel(), minlength=256)
        scratch.release(mask)
    changed, known = int(mask_counts[1]), int(mask_counts.sum() - mask_counts[255])
    reg = models.reg.to_json()
    reg["applied"] = applied
    return {
        "schema_version": SCHEMA_VERSION,
        "changedet_version": __version__,
        "site": site,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"before": before.to_json(), "after": after.to_json()},
        "grid": {
            "crs": pair.crs.to_string() if pair.crs else None,
            "transform": [round(v, 10) for v in list(pair.transform)[:6]],
            "width": pair.width, "height": pair.height, "gsd_m": round(pair.gsd_m, 6),
            "georeferenced": pair.georeferenced,
        },
        "registration": reg,
        "radiometry": {**models.fit.to_json(), "noise": models.noise.to_json()},
        "threshold": thr.to_json(),
        "config": cfg.record(),
        "counts": counts,
        "changed_area_m2": round(float(changed) * pair.gsd_m ** 2, 3),
        "changed_fraction": round(float(changed) / max(known, 1), 6),
        "observable_fraction": obs.observable_fraction(),
        "observable_km2": round(obs_km2, 6),
        "detections_per_km2": round(len(records) / obs_km2, 3) if obs_km2 > 0 else 0.0,
        "not_observable_m2": obs.areas_m2(pair.gsd_m),
        "observability": {"enabled": cfg.observe.enabled,
                          "shadow_offset_px": {"before": obs.shadow_offset_px[0], "after": obs.shadow_offset_px[1]}},
        "detections": records,
        "warnings": warns,
        "timings_s": timings,
    }


# --------------------------------------------------------------------------- the run


def detect_pair(before: str | Path, after: str | Path, out_dir: str | Path, config: Config | None = None, *,
                site: str | None = None, gsd_m: float | None = None, require_registration: bool = False,
                progress: ProgressFn | None = None, assets: Sequence[str] = ()) -> RunResult:
    """Detect what is new in ``after`` relative to ``before`` and write the output contract.

    Parameters
    ----------
    before, after : any GDAL rasters of the same site (paths, URLs, ``/vsi…`` paths, kept as given), or
        STAC Items (``.json`` files or URLs); ``before`` is the reference grid.
    out_dir : output folder; created, or its contract files replaced, only when the run completes.
    config : effective configuration (default: :class:`~changedet.config.Config()`).
    site : a name for the run record (default: the output folder's name).
    gsd_m : ground sample distance in metres, overriding the grid's.
    require_registration : raise :class:`RegistrationError` when registration confidence is low.
    progress : callback ``(stage, done, total)``.
    assets : STAC Item assets to read (default: ``visual``, else the 10 m bands); see :mod:`changedet.stac`.

    Returns
    -------
    RunResult with the output folder and the summary written to ``summary.json``.
    """
    cfg = config or Config()
    progress = progress or _no_progress
    scratch.return_large_blocks()  # freed window arrays go back to the system, not to fragmented heaps
    # GDAL's block cache defaults to 5 % of RAM; windows are read once, so a small cache keeps memory flat.
    # rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64, in bytes: a bare 64 was a 64-byte cache, and
    # copying a PNG input printed GDAL's "block cache size (64) should be at least the size of the swath"
    # GDAL decodes the blocks of one read and encodes the COGs' tiles on threads of its own
    n = workers(cfg)
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20, GDAL_NUM_THREADS=str(parallel.cpu_count())), \
            warnings.catch_warnings(), parallel.capped_library_threads(n):
        # the missing georeferencing is recorded once, in the summary's warnings
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return _detect(before, after, out_dir, cfg, site, gsd_m, require_registration, progress, tuple(assets))


def _detect(before: str | Path, after: str | Path, out_dir: str | Path, cfg: Config, site: str | None,
            gsd_m: float | None, require_registration: bool, progress: ProgressFn,
            assets: Sequence[str] = ()) -> RunResult:
    timer = _Timer()
    if str(out_dir) == "":
        raise OutputError("--out is empty; give the output folder")
    out_dir = Path(out_dir)
    site = site or out_dir.name
    t0, c0 = time.perf_counter(), time.process_time()

    def check_size(height: int, width: int) -> None:
        resources.check_grid(before, height, width, cfg.limits, cfg.model.enabled, workers=workers(cfg),
                             out_dir=out_dir)

    sweep_dead_scratch()
    before_in, after_in = stac.resolve_input(before, assets), stac.resolve_input(after, assets)
    decimate_px = (cfg.registration.coarse_max_px, cfg.processing.quicklook_max_px)
    with open_pair(before_in, after_in, gsd_m or cfg.gsd_m, check_size, decimate_px, workers(cfg)) as pair:
        # the inputs' hashes (for the record) are made on threads of their own while the run goes on: hashlib
        # lets go of the GIL, and a 10980² 4-band uint16 input (0.77 GB) took about 2.8 s of one core at the load
        # a run that fails stops them at their next chunk (a batch's failed sites would leave them reading)
        stop = threading.Event()
        hashes = tuple(parallel.Later(partial(stac.input_sha256, stop=stop), as_input(x).open_path,
                                      name="changedet-sha256") for x in (before_in, after_in))
        try:
            info_b = raster_info(pair.before, before_in, pair.datetimes[0], sha256=None)
            info_a = raster_info(pair.after, after_in, pair.datetimes[1], sha256=None)
            timer.add("load", time.perf_counter() - t0, time.process_time() - c0)
            stage = OutputStage(out_dir, CONTRACT_FILES)
            warns = list(pair.warnings)
            with stage:
                return _run(pair, cfg, stage, site, info_b, info_a, warns, timer, require_registration, progress,
                            hashes)
        finally:
            stop.set()  # after a complete run the hashes are made already (the record waited for them)


def _score_cog(scratch_tif: Path, dst: Path) -> None:
    """``change_score.tif``: the float score raster described and copied to a COG."""
    describe_band(scratch_tif, categories.SCORE_DESCRIPTION, categories.SCORE_TAGS)
    to_cog(scratch_tif, dst, "average", "FLOATING_POINT")


def _add_lines(mask: np.ndarray, lines: np.ndarray, box: Box) -> None:
    """Mark the pixels of ``lines`` changed in one window of ``mask`` (in place)."""
    r, c, h, w = box
    part = np.asarray(mask[r:r + h, c:c + w])
    part[(part == 0) & (np.asarray(lines[r:r + h, c:c + w]) == 1)] = 1
    mask[r:r + h, c:c + w] = part


def _hide_unobservable(mask: np.ndarray, reason: np.ndarray, box: Box) -> None:
    """Set one window of ``mask`` to nodata where change cannot be seen (in place)."""
    r, c, h, w = box
    mask[r:r + h, c:c + w][np.asarray(reason[r:r + h, c:c + w]) != observability.OBSERVABLE] = threshold.NODATA


def _run(pair: PairSource, cfg: Config, stage: OutputStage, site: str, info_b: Any, info_a: Any,
         warns: list[str], timer: _Timer, require_registration: bool, progress: ProgressFn,
         hashes: tuple[Callable[[], str | None], ...] = ()) -> RunResult:
    scr = scratch.Scratch(stage.path, int(cfg.processing.memory_budget_mb * 2**20))
    csm_bands = None  # checked first: a missing extra or unfit bands must not cost a registration
    if cfg.observe.enabled and cfg.observe.cloud_model == "csmask":
        csm_bands = csmask_bands(pair, info_b.path, info_a.path)
    with timer("register"), parallel.window_threads(workers(cfg)):
        reg = estimate_registration(pair, cfg.registration, progress, cfg.observe)
        warns.extend(reg.warnings)
        applied = reg.method == "none" or reg.confidence >= cfg.registration.min_confidence
        if not applied:
            msg = (f"registration confidence {reg.confidence:.2f} is below {cfg.registration.min_confidence}: "
                   "the images may not match (different scene, clouds, water); no correction applied")
            if require_registration:
                raise RegistrationError(f"{info_a.path}: {msg}")
            warns.append(msg)
        used = reg if applied else replace(reg, matrix=registration.translation(0, 0), field=None)
    with timer("normalize"), parallel.window_threads(workers(cfg)):
        step = _steps(progress, "normalize", 4)
        chips = read_chips(pair, used, cfg)
        step()
        sb, sa = sample_pair(chips)
        fit = radiometry.fit_normalization(sb, sa, cfg.normalize)
        noise = differencing.fit_noise(sb, radiometry.apply(sa[:, None, :], fit, sb[:, None, :])[:, 0, :])
        step()
        line_sigma, line_t90 = line_noise(chips, fit, noise.lum_sigma, cfg)
        noise = replace(noise, line_sigma=line_sigma, line_t90=line_t90)
        del chips
        step()
        water_model = objects.fit_water(sb, cfg.objects)
        models = _Models(used, fit, noise, water_model, observability_scale(pair, sb))
        step()
    with timer("measure"):
        sc = score_pass(pair, models, cfg, stage.file("score.scratch.tif"), progress, scr=scr)
    with timer("observe"), parallel.window_threads(workers(cfg)):
        given = csmask_pass(pair, used, cfg, csm_bands) if csm_bands is not None else None
        obs = observe(pair, cfg, sc, stage.file("score.scratch.tif"), None, given, scr)
        q, lq, water = sc.q, sc.lq, sc.water
        del sc
    lrn = None
    if cfg.model.enabled:
        with timer("learned"):
            progress("learned", 0, 1)  # loading the model and the first window take a while
            classical = threshold.choose(threshold.histogram(q), cfg.decide)
            lrn, lq = run_learned(pair, models, cfg, sb, q, lq, obs, classical, progress, scr)
            scratch.trim_heap()
    with timer("decide"), parallel.window_threads(workers(cfg)):
        step = _steps(progress, "decide", 4 if lrn is None else 5)
        if lrn is not None:
            q = fuse_pass(stage.file("score.scratch.tif"), q, lrn, classical, cfg, scr)
            step()
            mask, thr = threshold.decide(q, cfg.decide, pair.gsd_m, lrn.head.threshold, window_px=cfg.processing.window_px, scr=scr)
            thr = replace(thr, raw=classical.raw)
        else:
            mask, thr = threshold.decide(q, cfg.decide, pair.gsd_m, window_px=cfg.processing.window_px, scr=scr)
        step()
        mask, budget = significance.keep_significant(
            mask, q, windowed.equals(obs.reason, observability.OBSERVABLE), pair.gsd_m,
            cfg.decide.false_alarms_per_km2, thr.low, lambda sim_q: threshold.cut(sim_q, thr, cfg.decide, pair.gsd_m),
            progress, window_px=cfg.processing.window_px, scr=scr)
        if budget.rejected:
            warns.append(f"false-alarm budget: {budget.rejected} of {budget.tested} changed regions "
                         f"({budget.rejected_m2:.0f} m²) not significant at "
                         f"{cfg.decide.false_alarms_per_km2:g} false alarms per km²")
        step()
        lines = threshold.line_mask(lq, mask, cfg.decide, pair.gsd_m, differencing.LINE_FLANK_PX,
                                    cfg.measure.line_length_px, cfg.processing.window_px, scr)
        for _ in windowed.map_boxes(partial(_add_lines, mask, lines), mask.shape, cfg.processing.window_px):
            scratch.release(mask, lines)
        add_line_scores(stage.file("score.scratch.tif"), lines, lq, cfg.processing.window_px)
        del lq, lines
        step()
        mask = refine_edges(pair, models, cfg, mask, progress, scr)
        if lrn is not None:
            mask = backed_regions(mask, lrn.pq, cfg.model.region_probability * lrn.head.threshold,
                                  window_px=cfg.processing.window_px, scr=scr)
        step()
        # clean-up and edges never reach into what cannot be seen
        for _ in windowed.map_boxes(partial(_hide_unobservable, mask, obs.reason), mask.shape,
                                    cfg.processing.window_px):
            scratch.release(mask, obs.reason)
    # the score raster is final: its COG is made (mostly on one core: the overviews) while the objects are described
    score_cog = stage.later(_score_cog, stage.file("score.scratch.tif"), stage.file("change_score.tif"))
    with timer("objects"), parallel.window_threads(workers(cfg)):
        mask = objects.split_touching(mask, pair.gsd_m, cfg.objects, cfg.processing.window_px, scr)
        labels, comps = objects.components(mask, cfg.processing.window_px, scr)
        groups = objects.group_fragments(labels, comps, water, pair.gsd_m, cfg.objects)
        dets, notes = describe_objects(pair, models, cfg, labels, groups, q, water, progress)
        warns.extend(notes)
        dets, dropped = objects.drop_small_broad(dets, cfg.objects)
        if dropped:
            clear_labels(mask, labels, [lab for d in dropped for lab in d.group.labels], cfg.processing.window_px)
            warns.append(f"objects: {len(dropped)} small fragments of broad change (ploughing, harvest, "
                         f"clearing; under {cfg.objects.broad_min_area_m2:g} m²) left out")
        fine = objects.too_fine(pair.gsd_m, cfg.objects)
        warns.extend(f"too fine for the grid: {why}" for why in fine.values())
        classes = class_image(labels, mask, dets, len(comps), cfg.processing.window_px, scr)
    with timer("write"):
        step = _steps(progress, "write", 6)
        crs, tr = pair.crs, pair.transform
        # the categorical COGs are made on threads of their own while the vectors and the quick-look are written
        cogs = [stage.later(write_categorical_cog, stage.file(name), arr, legend, crs, tr) for name, arr, legend in
                (("change_mask.tif", mask, categories.MASK_LEGEND), ("change_class.tif", classes, categories.CLASS_LEGEND))]
        feats, records = detection_features(pair, dets, labels)
        step()
        write_json(stage.file("detections.geojson"), vector.feature_collection(feats, pair.georeferenced), compact=True)
        names = [n for n in OUTPUT_FILES if n not in ("summary.json", "item.json")]
        if cfg.output.vector_format:
            extra_name = "detections" + vector.VECTOR_FORMATS[cfg.output.vector_format][1]
            vector.write_features(stage.file(extra_name), feats, cfg.output.vector_format, pair.georeferenced)
            names.append(extra_name)
        if cfg.registration.write_tiepoints and reg.chips:
            write_json(stage.file("tiepoints.geojson"), tiepoint_features(pair, reg))
            names.append("tiepoints.geojson")
        seen = windowed.fill(scr.zeros(mask.shape, np.uint8), (
            (box, np.isin(windowed.read(obs.reason, box)[0], (observability.OBSERVABLE, observability.NODATA)))
            for box in windowed.windows(mask.shape, cfg.processing.window_px)))
        panels = quicklook_panels(pair, models, cfg, dets, labels, seen)
        del seen
        if hashes:  # the inputs' hashes, made meanwhile
            info_b, info_a = (replace(info, sha256=h()) for info, h in zip((info_b, info_a), hashes))
        dates = (input_label(info_b.to_json()), input_label(info_a.to_json()))
        # encoded here and written by Python: a failed write is then an OSError with its cause,
        # not libpng's "Write Error" on stderr
        step()
        stage.file("quicklook.png").write_bytes(quicklook.encode_png(render_quicklook(panels, site, dates)))
        step()
        for task in (*cogs, score_cog):
            task()
            step()
    summary = _summary(site, info_b, info_a, pair, replace(models, reg=reg), cfg, thr, mask,
                       records, warns, timer.timings, applied, obs)
    summary["false_alarm_budget"] = {**budget.to_json(), "expected_false_detections": round(
        cfg.decide.false_alarms_per_km2 * summary["observable_km2"], 3)}
    summary["model"] = lrn.to_json() if lrn else {"enabled": False}
    summary["too_fine"] = fine
    with timer("report"):
        stage.file("report.html").write_text(
            report.render_html(summary, panels.before, panels.after, panels.outlines, panels.metres_per_px,
                               panels.north_deg), encoding="utf-8")
    summary["timings_s"] = timer.record()
    summary["run"] = {"workers": workers(cfg), "cores": parallel.cpu_count(),
                      "scratch_peak_mb": round(scr.peak_mapped_bytes / 2**20, 1)}
    # the STAC Item describes every other file; the record (with its hash) is written after it
    (stage.file("item.json")).write_text(stac.dumps(stac.run_item(summary, [*names, "summary.json"])),
                                         encoding="utf-8")
    names.append("item.json")
    summary["files"] = file_record(stage.file("summary.json").parent, names)
    write_json(stage.file("summary.json"), summary)
    stage.commit([*names, "summary.json"])  # the record last: it never describes files of another run
    return RunResult(stage.out_dir, summary)


def summary_schema() -> dict[str, Any]:
    """The JSON Schema that ``summary.json`` validates against (shipped in the package)."""
    import json
    from importlib.resources import files

    return json.loads(files("changedet").joinpath("schema/summary.schema.json").read_text(encoding="utf-8"))
