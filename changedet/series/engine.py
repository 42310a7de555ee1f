"""``run_series``: a dated stack of one site -> presence per date, tracks, and the record.

Passes, each streaming so that memory does not grow with the number of dates:

1. register and normalise every date onto the reference grid (:mod:`.stack`), one date at a time;
2. by windows (the side chosen from the number of dates and ``series.memory_mb``), every date's
   observability evidence against the median of all dates, then, per date, ``detect``'s
   not-observable resolution (:mod:`changedet.observability`);
3. by windows, the background (median of the observable dates), water, and per date the pixels
   standing out from the background (:mod:`.background`);
4. per date, regions linked into candidates (:mod:`.presence`); per date, each candidate's contrast
   to its ring; per candidate, the dates of its object state; tracks (:mod:`.tracks`) typed as
   ``detect`` types objects (:mod:`changedet.objects`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .. import objects, observability
from ..arrays import crop
from ..config import Config
from ..io import Box, grow, iter_windows
from ..pipeline import ProgressFn
from . import background, presence
from .stack import Stack
from .tracks import Track, track_events, tracks_of

CLASSES = ("vessel", "hut", "trench", "other")
#: halo of the background pass: water's 2-px Gaussian (4 sigma) and the 3 x 3 blur and opening
BACKGROUND_HALO = 10
#: pixels per date sampled (on a global grid) to measure its spread against the background
SIGMA_SAMPLES = 50_000
#: bits of the per-date observable raster: clear by ``observe.buffer_m``; by ``series.footprint_buffer_m``
SEEN, SEEN_FOOTPRINT = 1, 2


@dataclass
class Analysis:
    """What passes 2-4 found: per date observability, tracks with their footprints."""

    observable_fraction: list[float]
    date_ok: np.ndarray  # (n,) bool
    tracks: list[Track]
    footprints: list[tuple[int, int, np.ndarray]]  # per track: row0, col0, (h, w) bool
    n_candidates: int
    window_px: int


def _windows(stack: Stack, cfg: Config, halo: int) -> tuple[int, list[Box]]:
    side = stack.window_px(stack.n_dates, cfg.series.memory_mb, halo)
    return side, list(iter_windows(stack.shape, side))


def observe_pass(stack: Stack, cfg: Config, progress: ProgressFn) -> list[float]:
    """Pass 2: write each date's observable state and its observable share.

    ``obs_i`` holds bit ``SEEN`` where a pixel is clear of cloud, shadow and nodata by
    ``observe.buffer_m`` (what the background and the regions that stand out use), bit
    ``SEEN_FOOTPRINT`` where by ``series.footprint_buffer_m`` (what an object's footprint and the
    date's share count as seen).
    """
    halo = observability.halo_px()
    _, boxes = _windows(stack, cfg, halo)
    assert stack.scale is not None
    writers = [stack.writer("ev", i, 1, "uint8", None) for i in range(stack.n_dates)]
    bright = np.zeros(stack.n_dates)  # bright white pixels per date: one mostly under cloud is no neighbour
    try:
        for k, box in enumerate(boxes):
            s = stack.read_window(grow(box, halo))
            valid = np.isfinite(s).all(axis=1)
            med = background.temporal_median(s, valid)
            mvalid = np.isfinite(med).all(axis=0)
            m0 = np.nan_to_num(med)
            r, c, h, w = box
            for i in range(stack.n_dates):
                _, ev = observability.evidence(m0, np.nan_to_num(s[i]), valid[i] & mvalid, stack.scale, cfg.observe)
                ev = crop(ev, halo)
                writers[i].write(ev[None], window=_win(box))
                bright[i] += np.count_nonzero(ev & (observability.CORE | observability.RIM))
            progress("observe", k + 1, len(boxes))
    finally:
        for wr in writers:
            wr.close()
    full = (0, 0) + stack.shape
    fractions = []
    bits: dict[int, np.ndarray] = {}  # evidence of the date resolved and of its nearest clear dates

    def evidence_of(i: int) -> np.ndarray:
        if i not in bits:
            bits[i] = stack.read("ev", i, full, fill=0).astype(np.uint8)
        return bits[i]

    radius_px = cfg.series.passing_cloud_radius_m / stack.gsd_m
    clear = np.flatnonzero(bright < cfg.series.large_cloud_share * stack.shape[0] * stack.shape[1])
    for i in range(stack.n_dates):
        valid = np.isfinite(stack.read("date", i, full, stack.n_bands)).all(axis=0) if stack.n_bands > 1 \
            else np.isfinite(stack.read("date", i, full))
        if cfg.observe.enabled:
            ev = evidence_of(i)
            big = background.large_bright(ev, observability.CORE, observability.RIM,
                                          int(cfg.series.large_cloud_share * ev.size))
            around = clear[clear < i][-1:].tolist() + clear[clear > i][:1].tolist()  # nearest clear dates
            neighbours = [evidence_of(k) for k in around]
            passing = background.passing_clouds(ev, neighbours, observability.CORE, observability.RIM, radius_px,
                                                cfg.observe.cloud_max_rectangularity)
            ev = background.passing_dark(ev, neighbours, observability.DARK)
            masks = []
            for buffer_m in (cfg.observe.buffer_m, cfg.series.footprint_buffer_m):
                params = cfg.observe.model_copy(update={"buffer_m": buffer_m})
                reason = observability.resolve(np.zeros_like(ev), ev, valid, stack.gsd_m, params,
                                               more_clouds=(None, passing)).reason
                seen = reason == observability.OBSERVABLE
                masks.append(seen & ~observability._dilate(big, min(int(math.ceil(buffer_m / stack.gsd_m)), 64)))
            seen, see = masks
        else:
            seen = see = valid
        with stack.writer("obs", i, 1, "uint8", None) as ds:
            ds.write((seen.astype(np.uint8) * SEEN + see.astype(np.uint8) * SEEN_FOOTPRINT)[None])
        fractions.append(round(float(see.mean()), 6))
        last_clear = clear[clear <= i][-1:].tolist()
        for k in [k for k in bits if k <= i and k not in last_clear]:
            del bits[k]  # kept: the last clear date so far (the next date's neighbour) and dates after
    for i in range(stack.n_dates):
        stack.path("ev", i).unlink()
    return fractions


def _win(box: Box) -> Any:
    from rasterio.windows import Window

    r, c, h, w = box
    return Window(c, r, w, h)


def spread_pass(stack: Stack, cfg: Config, date_ok: np.ndarray, progress: ProgressFn) -> np.ndarray:
    """Pass 3a: per date and band, the spread of its smoothed difference from the median of the dates.

    Returns (n, bands) (:func:`background.smoothed_sigma`; NaN for dates not observable), measured on
    the same global grid of pixels whatever the windows.
    """
    halo = BACKGROUND_HALO
    _, boxes = _windows(stack, cfg, halo)
    step = max(1, int(math.ceil(math.sqrt(stack.shape[0] * stack.shape[1] / SIGMA_SAMPLES))))
    samples: list[list[np.ndarray]] = [[] for _ in range(stack.n_dates)]
    for k, box in enumerate(boxes):
        gbox = grow(box, halo)
        s = stack.read_window(gbox)
        use = _usable(stack, gbox, date_ok)
        med = background.temporal_median(s, use)
        rows, cols = background.sample_grid(box, step)
        for i in np.flatnonzero(date_ok):
            d = crop(background.smoothed_difference(s[i], med), halo)[:, rows][:, :, cols]
            ok = crop(use[i] & np.isfinite(s[i]).all(axis=0) & np.isfinite(med).all(axis=0), halo)[rows][:, cols]
            samples[i].append(d[:, ok])
        progress("spread", k + 1, len(boxes))
    sigmas = np.full((stack.n_dates, stack.n_bands), np.nan)
    for i in np.flatnonzero(date_ok):
        sigmas[i] = background.smoothed_sigma(np.concatenate(samples[i], axis=1))
    return sigmas


def _usable(stack: Stack, box: Box, date_ok: np.ndarray) -> np.ndarray:
    seen = np.stack([(stack.read("obs", i, box, fill=0).astype(np.uint8) & SEEN) > 0 for i in range(stack.n_dates)])
    return seen & date_ok[:, None, None]


def background_pass(stack: Stack, cfg: Config, date_ok: np.ndarray, sigmas: np.ndarray,
                    wmodel: objects.WaterModel, progress: ProgressFn) -> np.ndarray:
    """Pass 3b: the background raster (lasting steps resolved, :func:`background.step_background`)
    and the steps (``step``: the first date after a pixel's lasting step, 0 where none); returns
    water (uint8, whole)."""
    halo = BACKGROUND_HALO
    _, boxes = _windows(stack, cfg, halo)
    water = np.zeros(stack.shape, np.uint8)
    typical = np.nanmedian(sigmas, axis=0) if np.isfinite(sigmas).any() else np.ones(stack.n_bands)
    bg = stack.writer("background", None, stack.n_bands, "float32", float("nan"))
    steps = stack.writer("step", None, 1, "int16", None)
    try:
        for k, box in enumerate(boxes):
            gbox = grow(box, halo)
            s = stack.read_window(gbox)
            use = _usable(stack, gbox, date_ok)
            med = background.temporal_median(s, use)
            step, after = background.lasting_step(background.smooth_stack(s - med[None]), use, typical,
                                                  cfg.series.step_min_sigma, cfg.series.step_min_sharpness)
            med = background.step_background(s, use, step, after, med)
            bg.write(crop(med, halo), window=_win(box))
            kept = cv2.morphologyEx(step.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
            steps.write(crop(np.where(kept, after, 0).astype(np.int16), halo)[None], window=_win(box))
            r, c, h, w = box
            water[r:r + h, c:c + w] = crop(objects._water_one(np.nan_to_num(med), wmodel, cfg.objects)
                                           & np.isfinite(med).all(axis=0), halo)
            progress("background", k + 1, len(boxes))
    finally:
        bg.close()
        steps.close()
    return objects.keep_large_water(water, cfg.objects, stack.gsd_m)


def mask_pass(stack: Stack, cfg: Config, date_ok: np.ndarray, sigmas: np.ndarray, progress: ProgressFn) -> None:
    """Pass 3b: per date, the pixels standing out from the background (``mask_i``), window by window."""
    halo = BACKGROUND_HALO
    side = stack.window_px(1, cfg.series.memory_mb, halo)
    boxes = list(iter_windows(stack.shape, side))
    nb = stack.n_bands
    for i in range(stack.n_dates):
        with stack.writer("mask", i, 1, "uint8", None) as wr:
            for box in boxes:
                gbox = grow(box, halo)
                m = np.zeros(gbox[2:], np.uint8)
                if date_ok[i]:
                    a = stack.read("date", i, gbox, nb)
                    b = stack.read("background", None, gbox, nb)
                    a, b = (a, b) if nb > 1 else (a[None], b[None])
                    seen = (stack.read("obs", i, gbox, fill=0).astype(np.uint8) & SEEN) > 0
                    dev = background.deviation(a, b, sigmas[i], cfg.series.edge_tolerance_px)
                    m = background.object_mask(dev, seen, cfg.series.deviation_sigma)
                wr.write(crop(m, halo)[None], window=_win(box))
        progress("masks", i + 1, stack.n_dates)


def link_pass(stack: Stack, cfg: Config, date_ok: np.ndarray, progress: ProgressFn) -> list[presence.Candidate]:
    """Pass 4a: the regions of lasting steps and each date's regions, linked into candidates.

    A faint trench stands out on each date in pieces; the pixels where its dates step lasting
    hold it whole and bridge the pieces (a step region is put on its most common first date after).
    """
    min_px = max(4, int(math.ceil(cfg.series.min_area_m2 / stack.gsd_m ** 2)))
    linker = presence.Linker(stack.shape, cfg.series.link_min_overlap, cfg.series.link_max_size_ratio)
    full = (0, 0) + stack.shape
    after = stack.read("step", None, full, fill=0).astype(np.int32)
    for reg in presence.regions_of((after > 0).astype(np.uint8), 0, min_px):
        first = np.bincount(after[reg.row0:reg.bbox[2], reg.col0:reg.bbox[3]][reg.mask]).argmax()
        linker.add(replace(reg, date=int(first)), lasting=True)
    for i in range(stack.n_dates):
        if date_ok[i]:
            mask = stack.read("mask", i, full, fill=0).astype(np.uint8)
            for reg in presence.regions_of(mask, i, min_px):
                linker.add(reg)
        progress("link", i + 1, stack.n_dates)
    return linker.candidates()


def _crop_box(cand: presence.Candidate, margin: int) -> Box:
    h, w = cand.footprint.shape
    return (cand.row0 - margin, cand.col0 - margin, h + 2 * margin, w + 2 * margin)


def _pad(mask: np.ndarray, margin: int) -> np.ndarray:
    return np.pad(mask, margin)


def _paste(canvas: np.ndarray, box: Box, value: np.ndarray) -> np.ndarray:
    """The part of whole ``canvas`` under ``box`` (padded with False past the edge)."""
    r, c, h, w = box
    out = np.zeros((h, w), canvas.dtype)
    r0, c0 = max(r, 0), max(c, 0)
    r1, c1 = min(r + h, canvas.shape[0]), min(c + w, canvas.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - r:r1 - r, c0 - c:c1 - c] = canvas[r0:r1, c0:c1]
    return out


def _neighbours(cands: list[presence.Candidate], margin: int, max_ratio: float) -> list[np.ndarray]:
    """Per candidate, on its crop grown by ``margin``, the footprints of the other candidates no ring
    may run over: those at most ``max_ratio`` times its size (a haze patch over a hut on a few dates
    is its context, not a neighbour; a candidate inside a larger object on many dates is left out
    as a part of it, :func:`conclude`), and not holding most of it (a patch of water within a
    berth is seen against the berth around it, not against the quay beyond the berth)."""
    areas = [int(cd.footprint.sum()) for cd in cands]
    out = []
    for g, cd in enumerate(cands):
        r, c, h, w = _crop_box(cd, margin)
        canvas = np.zeros((h, w), bool)
        for k, other in enumerate(cands):
            if k == g or areas[k] > max_ratio * areas[g]:
                continue
            if areas[k] > areas[g] and 2 * presence.overlap_px(cd, other) >= areas[g]:
                continue  # mostly inside it: a patch of a berth is seen against the berth around it
            oh, ow = other.footprint.shape
            r0, c0 = max(other.row0, r), max(other.col0, c)
            r1, c1 = min(other.row0 + oh, r + h), min(other.col0 + ow, c + w)
            if r1 > r0 and c1 > c0:
                canvas[r0 - r:r1 - r, c0 - c:c1 - c] |= other.footprint[r0 - other.row0:r1 - other.row0,
                                                                        c0 - other.col0:c1 - other.col0]
        out.append(canvas)
    return out


def _stood_out(cand: presence.Candidate, margin: int) -> dict[int, np.ndarray]:
    """Per date on which a candidate stood out, its regions of that date on the candidate's crop
    grown by ``margin`` (bool)."""
    h, w = cand.footprint.shape
    out: dict[int, np.ndarray] = {}
    for reg in cand.regions:
        m = out.setdefault(reg.date, np.zeros((h + 2 * margin, w + 2 * margin), bool))
        r, c = reg.row0 - cand.row0 + margin, reg.col0 - cand.col0 + margin
        m[r:r + reg.mask.shape[0], c:c + reg.mask.shape[1]] |= reg.mask
    return out


def contrast_pass(stack: Stack, cfg: Config, cands: list[presence.Candidate], date_ok: np.ndarray,
                  progress: ProgressFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 4b: per candidate and date, region-minus-ring contrast (G, n, bands), distance to the
    most similar side of the ring (G, n) and observable share of the footprint (G, n, 2: clear by
    ``series.footprint_buffer_m``, by ``observe.buffer_m``).

    The side is measured on what stood out that date where something did (a hull in a berth
    twice its size; else the footprint): the mean of a footprint half hull, half water is a grey
    that a side of its ring may happen to match."""
    g_n = len(cands)
    con = np.full((g_n, stack.n_dates, stack.n_bands), np.nan)
    side = np.full((g_n, stack.n_dates), np.nan)
    share = np.zeros((g_n, stack.n_dates, 2))
    if not cands:
        return con, side, share
    margin = cfg.objects.ring_px + 1
    neighbours = _neighbours(cands, margin, cfg.series.link_max_size_ratio)
    stood_out = [_stood_out(cd, margin) for cd in cands]
    sigma = stack.band_sigma()
    full = (0, 0) + stack.shape
    for i in range(stack.n_dates):
        if not date_ok[i]:
            continue
        img = stack.read("date", i, full, stack.n_bands)
        img = img if stack.n_bands > 1 else img[None]
        bits = stack.read("obs", i, full, fill=0).astype(np.uint8)
        seen = (bits & SEEN_FOOTPRINT) > 0
        strict = (bits & SEEN) > 0
        for g, cd in enumerate(cands):
            box = _crop_box(cd, margin)
            foot = _pad(cd.footprint, margin)
            ok = _paste(seen, box, seen)
            sub = np.stack([_paste(b, box, b) for b in img])
            inside = foot & ok
            around = presence.ring_of(foot, cfg.objects.ring_px, neighbours[g]) & ok
            sub = np.nan_to_num(sub)
            con[g, i] = presence.contrast(sub, inside, around, sigma)
            stood = stood_out[g][i] & ok if i in stood_out[g] else None
            side[g, i] = presence.nearest_side(sub, stood if stood is not None and stood.any() else inside, around,
                                               sigma)
            share[g, i, 0] = inside.sum() / max(int(foot.sum()), 1)
            share[g, i, 1] = (foot & _paste(strict, box, strict)).sum() / max(int(foot.sum()), 1)
        progress("contrast", i + 1, stack.n_dates)
    return con, side, share


def _largest(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if n <= 2:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def object_mask(after: np.ndarray, before: np.ndarray, near: np.ndarray, sigma: np.ndarray, cfg: Config) -> np.ndarray:
    """The object's pixels on one date: where it differs from an empty date, near the candidate (bool).

    ``near`` is the candidate's footprint grown by the context ring; the largest part that differs
    (by ``series.deviation_sigma``, opened 3 x 3) is kept, holes filled. Falls back to ``near``'s
    core (the footprint) when nothing differs.
    """
    dev = background.deviation(after, before, sigma, cfg.series.edge_tolerance_px)
    m = background.object_mask(dev, near, cfg.series.deviation_sigma).astype(bool)
    return objects.fill_holes(_largest(m)) if m.any() else m


def _nearest(dates: list[int], t: int) -> int | None:
    """The date of ``dates`` nearest ``t`` (the earlier on a tie), None when there is none."""
    return int(min(dates, key=lambda d: (abs(d - t), d))) if len(dates) else None


def _object_and_empty(stack: Stack, box: Box, object_date: int, empty_date: int | None,
                      sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A box of an object-state date and of an empty-state date (the background when None):
    (after, before) (bands, h, w) float32 with NaN past the data, where both hold data (h, w), and
    the spread of their difference per band (both dates' spreads against the background)."""
    nb = stack.n_bands

    def read(kind: str, i: int | None) -> np.ndarray:
        x = stack.read(kind, i, box, nb)
        return x if nb > 1 else x[None]

    after = read("date", object_date)
    before = read("background", None) if empty_date is None else read("date", empty_date)
    valid = np.isfinite(after).all(axis=0) & np.isfinite(before).all(axis=0)
    pair = sigmas[object_date] if empty_date is None else np.hypot(sigmas[object_date], sigmas[empty_date])
    return after, before, valid, pair


def classify_track(stack: Stack, cfg: Config, cand: presence.Candidate, track: Track,
                   empty_date: int | None, object_date: int, water: np.ndarray,
                   sigmas: np.ndarray, wmodel: objects.WaterModel) -> tuple[str, float, np.ndarray]:
    """Type a track with ``detect``'s rules: the object between an empty-state and an object-state date.

    ``sigmas`` are the dates' spreads against the background (:func:`background_pass`); two dates'
    difference spreads by both. ``wmodel`` finds water on the empty date: a vessel's pixels are
    water there (on the background's water when no date is empty).

    Returns the class, its confidence and the object's pixels on the crop of the candidate grown
    by ``objects.ring_px + 2`` (bool).
    """
    params = cfg.objects
    margin = params.ring_px + 2
    h, w = cand.footprint.shape
    box = (cand.row0 - margin, cand.col0 - margin, h + 2 * margin, w + 2 * margin)
    foot = np.pad(cand.footprint, margin)
    a, b, valid, pair = _object_and_empty(stack, box, object_date, empty_date, sigmas)
    b, a = np.nan_to_num(b), np.nan_to_num(a)
    sigma = stack.band_sigma()
    near = cv2.dilate(foot.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    obj = object_mask(a, b, near & valid, pair, cfg)
    if obj.sum() < 4:
        obj = foot
    # as ``detect`` does (:func:`changedet.pipeline.refine_edges`): the outline where the object covers half a pixel
    obj = objects.trim_edges(obj, objects.coverage(obj, b, a, sigma), cfg.decide.edge_min_cover)
    score = np.clip(background.deviation(a, b, pair) / (2.0 * cfg.series.deviation_sigma), 0.0, 1.0)
    wat = _paste(water, box, water) > 0
    shadow = objects.cast_shadow(obj & valid, b, a, params)
    core = objects.fill_holes(_largest(objects.object_core(obj, shadow)))
    shape = objects.measure_shape(core, (box[0], box[1]), stack.gsd_m, params)
    ctx = objects.measure_context(obj, b, a, valid, wat, score, sigma, params)
    ctx = replace(ctx, shadow_frac=float(shadow.sum() / max(obj.sum(), 1)))
    track.extra = {"area_m2": round(shape.area_m2, 3), "length_m": round(shape.length_m, 3),
                   "width_m": round(shape.width_m, 3), "water_frac": round(ctx.water_frac, 3)}
    # a vessel floats: without it (on the empty date) its pixels are water; a crane on a pier is not one
    under = objects._water_one(b, wmodel, params) if empty_date is not None else wat
    floating = bool(under[core & valid].mean() >= 0.5) if (core & valid).any() else True
    cls, conf = objects.classify(shape, ctx, params, floating)
    return cls, conf, core


@dataclass
class Evidence:
    """What passes 2-4b measured: per date observability and spread, water, the candidates and,
    per candidate and date, contrast, nearest side and observable share (:func:`contrast_pass`)."""

    fractions: list[float]
    date_ok: np.ndarray  # (n,) bool
    sigmas: np.ndarray  # (n, bands)
    water: np.ndarray  # (H, W) uint8
    wmodel: objects.WaterModel  # water on one date (:func:`changedet.objects.fit_water` on the reference)
    cands: list[presence.Candidate]
    con: np.ndarray  # (G, n, bands)
    side: np.ndarray  # (G, n)
    share: np.ndarray  # (G, n, 2)


def analyse(stack: Stack, cfg: Config, progress: ProgressFn) -> Analysis:
    """Passes 2-4 over a registered stack (:func:`changedet.series.stack.register_dates`)."""
    return conclude(stack, cfg, gather(stack, cfg, progress), progress)


def gather(stack: Stack, cfg: Config, progress: ProgressFn) -> Evidence:
    """Passes 2-4b: observability, spread, background, masks, candidates and their contrasts."""
    fractions = observe_pass(stack, cfg, progress)
    date_ok = np.array([f >= cfg.series.min_observable_fraction for f in fractions])
    sigmas = spread_pass(stack, cfg, date_ok, progress)
    wmodel = objects.fit_water(stack.samples, cfg.objects)
    water = background_pass(stack, cfg, date_ok, sigmas, wmodel, progress)
    mask_pass(stack, cfg, date_ok, sigmas, progress)
    cands = link_pass(stack, cfg, date_ok, progress)
    con, side, share = contrast_pass(stack, cfg, cands, date_ok, progress)
    return Evidence(fractions, date_ok, sigmas, water, wmodel, cands, con, side, share)


def bridged(stack: Stack, cfg: Config, sigmas: np.ndarray, cands: list[presence.Candidate],
            a: tuple[int, Track, np.ndarray, presence.States], b: tuple[int, Track, np.ndarray, presence.States]) -> bool:
    """Whether two pieces present on the same dates are one object: one part of what differs (by
    ``series.deviation_sigma``) between their strongest common date and the nearest date on which
    both are seen empty (else the background) touches both footprints."""
    (ga, tra, sa, sta), (gb, _, sb, stb) = a, b
    obj_date = max(tra.present, key=lambda t: (sa[t] + sb[t], -t))
    absent = np.flatnonzero(sta.observed & ~sta.present & stb.observed & ~stb.present)
    empty = _nearest(absent.tolist(), obj_date)
    cd = presence.union([cands[ga], cands[gb]])
    box = (cd.row0 - 1, cd.col0 - 1, cd.footprint.shape[0] + 2, cd.footprint.shape[1] + 2)
    after, before, valid, pair = _object_and_empty(stack, box, obj_date, empty, sigmas)
    dev = background.deviation(after, before, pair, cfg.series.edge_tolerance_px)
    mask = background.object_mask(dev, valid, cfg.series.deviation_sigma)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    feet = []
    for g in (ga, gb):
        foot = np.zeros(labels.shape, bool)
        h, w = cands[g].footprint.shape
        foot[cands[g].row0 - box[0]:cands[g].row0 - box[0] + h, cands[g].col0 - box[1]:cands[g].col0 - box[1] + w] = \
            cands[g].footprint
        feet.append(set(np.unique(labels[foot & (mask > 0)]).tolist()) - {0})
    return bool(feet[0] & feet[1])


def conclude(stack: Stack, cfg: Config, ev: Evidence, progress: ProgressFn) -> Analysis:
    """Pass 4c: per candidate the dates of its object state, tracks, pieces merged, typed."""
    fractions, date_ok, sigmas, water = ev.fractions, ev.date_ok, ev.sigmas, ev.water
    cands, con, side, share = ev.cands, ev.con, ev.side, ev.share
    covered = presence.covered_dates(cands, stack.n_dates, cfg.series.link_max_size_ratio)
    found: list[tuple[int, Track, np.ndarray, presence.States]] = []  # candidate, run, strength, states
    for g, cd in enumerate(cands):
        if covered[g].sum() * 3 > date_ok.sum():  # inside a larger object on many dates: a part of it
            continue
        observed = date_ok & (share[g, :, 0] >= cfg.series.min_region_observable) & ~covered[g]
        stood = np.zeros(stack.n_dates, bool)
        stood[sorted(cd.dates())] = True
        st = presence.decide_states(con[g], observed, stood, cfg.series.state_min_separation, side[g],
                                     cfg.series.state_min_sharpness)
        # haze beyond a cloud's detected edge hides an object more often than it makes one: a date
        # counts as absent only when the footprint is clear by the full buffer, else it is unobserved
        surely_seen = share[g, :, 1] >= cfg.series.min_region_observable
        st = st and presence.doubt_absence(st, surely_seen)
        st = st and presence.doubt_hazy_presence(st, con[g], surely_seen, cfg.series.state_min_sharpness)
        if st is None:
            continue
        strength = np.linalg.norm(np.nan_to_num(con[g]), axis=1) * float(cd.footprint.sum())
        # another hull moored while the berth was under cloud: judged on dates clear by the full buffer
        judged = np.where(surely_seen[:, None], con[g], np.nan)
        handed_over = functools.partial(presence.handovers, judged, observed=st.observed,
                                        min_separation=cfg.series.state_min_separation,
                                        sharpness=2.0 * cfg.series.state_min_sharpness)
        for tr in tracks_of(g, st.present, st.observed, splits=handed_over):
            if st.value is not None:  # an extension run out for a few dates (on dates clear by the full buffer)
                sure = [t for t in tr.present if share[g, t, 1] >= cfg.series.min_region_observable]
                changed = presence.level_changes(st.value, sure, cfg.series.state_min_separation,
                                                 2.0 * cfg.series.state_min_sharpness)
                tr.events = track_events(tr.present, st.observed, changed)
            found.append((g, tr, strength, st))
    # pieces of one object (a zig-zag trench, a hull's stern) on exactly the same dates, side by side,
    # and joined by what differs between an empty date and one of theirs (two hulls moored end to end are not)
    gap = max(1, int(math.ceil(cfg.series.merge_gap_m / stack.gsd_m)))
    groups = presence.same_object_groups([tuple(f[1].present) for f in found], [cands[f[0]] for f in found], gap,
                                         lambda i, j: bridged(stack, cfg, sigmas, cands, found[i], found[j]))
    tracks: list[Track] = []
    feet: list[tuple[int, int, np.ndarray]] = []
    margin = cfg.objects.ring_px + 2
    objs = [(presence.union([cands[found[i][0]] for i in group]), set(found[group[0]][1].present)) for group in groups]
    parts = presence.parts_of_larger(objs)
    groups = [grp for k, grp in enumerate(groups) if k not in parts]
    for k, group in enumerate(groups):
        members = [found[i] for i in group]
        g, tr, _, st = max(members, key=lambda m: (int(cands[m[0]].footprint.sum()), -m[0]))
        cd = presence.union([cands[m[0]] for m in members])
        strength = np.sum([m[2] for m in members], axis=0)
        absent = [int(t) for t in np.flatnonzero(st.observed & ~st.present)]
        obj_date = max(tr.present, key=lambda t: (strength[t], -t))
        empty = _nearest(absent, obj_date)
        tr.cls, tr.confidence, foot = classify_track(stack, cfg, cd, tr, empty, obj_date, water, sigmas, ev.wmodel)
        tr.extra["separation_sigma"] = round(st.separation, 3)
        if len(members) > 1:
            tr.extra["pieces"] = len(members)
        tracks.append(tr)
        feet.append((cd.row0 - margin, cd.col0 - margin, foot))
        progress("tracks", k + 1, len(groups))
    return Analysis(fractions, date_ok, tracks, feet, len(cands), stack.window_px(stack.n_dates, cfg.series.memory_mb,
                                                                                    BACKGROUND_HALO))


def counts_per_date(analysis: Analysis, n_dates: int) -> list[dict[str, int] | None]:
    """Objects of each class present per date; None where the date is not observable enough."""
    out: list[dict[str, int] | None] = []
    for t in range(n_dates):
        if not analysis.date_ok[t]:
            out.append(None)
            continue
        out.append({k: sum(1 for tr in analysis.tracks if tr.cls == k and t in tr.present) for k in CLASSES})
    return out
