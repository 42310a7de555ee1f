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
from .tracks import Track, tracks_of

CLASSES = ("vessel", "hut", "trench", "other")
#: halo of the background pass: water's 2-px Gaussian (4 sigma) and the 3 x 3 blur and opening
BACKGROUND_HALO = 10


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
    """Pass 2: write each date's not-observable state (``obs_i``: 1 observable); its observable share."""
    halo = observability.halo_px()
    _, boxes = _windows(stack, cfg, halo)
    assert stack.scale is not None
    writers = [stack.writer("ev", i, 1, "uint8", None) for i in range(stack.n_dates)]
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
                writers[i].write(crop(ev, halo)[None], window=_win(box))
            progress("observe", k + 1, len(boxes))
    finally:
        for wr in writers:
            wr.close()
    full = (0, 0) + stack.shape
    fractions = []
    for i in range(stack.n_dates):
        valid = np.isfinite(stack.read("date", i, full, stack.n_bands)).all(axis=0) if stack.n_bands > 1 \
            else np.isfinite(stack.read("date", i, full))
        if cfg.observe.enabled:
            ev = stack.read("ev", i, full, fill=0).astype(np.uint8)
            reason = observability.resolve(np.zeros_like(ev), ev, valid, stack.gsd_m, cfg.observe).reason
            seen = reason == observability.OBSERVABLE
            big = background.large_bright(ev, observability.CORE, observability.RIM,
                                          int(cfg.series.large_cloud_share * ev.size))
            seen &= ~observability._dilate(big, min(int(math.ceil(cfg.observe.buffer_m / stack.gsd_m)), 64))
        else:
            seen = valid
        with stack.writer("obs", i, 1, "uint8", None) as ds:
            ds.write(seen.astype(np.uint8)[None])
        fractions.append(round(float(seen.mean()), 6))
        stack.path("ev", i).unlink()
    return fractions


def _win(box: Box) -> Any:
    from rasterio.windows import Window

    r, c, h, w = box
    return Window(c, r, w, h)


def background_pass(stack: Stack, cfg: Config, date_ok: np.ndarray, progress: ProgressFn) -> np.ndarray:
    """Pass 3: background raster, per-date masks of what stands out (``mask_i``); returns water (uint8, whole)."""
    halo = BACKGROUND_HALO
    _, boxes = _windows(stack, cfg, halo)
    sigma = stack.band_sigma()
    water = np.zeros(stack.shape, np.uint8)
    wmodel = objects.fit_water(stack.samples, cfg.objects)
    bg = stack.writer("background", None, stack.n_bands, "float32", float("nan"))
    writers = [stack.writer("mask", i, 1, "uint8", None) for i in range(stack.n_dates)]
    try:
        for k, box in enumerate(boxes):
            gbox = grow(box, halo)
            s = stack.read_window(gbox)
            seen = np.stack([stack.read("obs", i, gbox, fill=0) > 0 for i in range(stack.n_dates)])
            use = seen & date_ok[:, None, None]
            med = background.temporal_median(s, use)
            bg.write(crop(med, halo), window=_win(box))
            r, c, h, w = box
            water[r:r + h, c:c + w] = crop(objects._water_one(np.nan_to_num(med), wmodel, cfg.objects)
                                           & np.isfinite(med).all(axis=0), halo)
            for i in range(stack.n_dates):
                m = np.zeros(gbox[2:], np.uint8)
                if date_ok[i]:
                    dev = background.deviation(s[i], med, sigma, cfg.series.edge_tolerance_px)
                    m = background.object_mask(dev, use[i], cfg.series.deviation_sigma)
                writers[i].write(crop(m, halo)[None], window=_win(box))
            progress("background", k + 1, len(boxes))
    finally:
        bg.close()
        for wr in writers:
            wr.close()
    return objects.keep_large_water(water, cfg.objects, stack.gsd_m)


def link_pass(stack: Stack, cfg: Config, date_ok: np.ndarray, progress: ProgressFn) -> list[presence.Candidate]:
    """Pass 4a: each date's regions, linked across dates into candidates."""
    min_px = max(4, int(math.ceil(cfg.series.min_area_m2 / stack.gsd_m ** 2)))
    linker = presence.Linker(stack.shape, cfg.series.link_min_overlap)
    full = (0, 0) + stack.shape
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


def contrast_pass(stack: Stack, cfg: Config, cands: list[presence.Candidate], date_ok: np.ndarray,
                  progress: ProgressFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 4b: per candidate and date, region-minus-ring contrast (G, n, bands), distance to the
    most similar side of the ring (G, n) and observable share of the footprint (G, n)."""
    g_n = len(cands)
    con = np.full((g_n, stack.n_dates, stack.n_bands), np.nan)
    side = np.full((g_n, stack.n_dates), np.nan)
    share = np.zeros((g_n, stack.n_dates))
    if not cands:
        return con, side, share
    margin = cfg.objects.ring_px + 1
    taken = np.zeros(stack.shape, bool)  # every candidate's footprint: no ring runs over another object
    for cd in cands:
        h, w = cd.footprint.shape
        taken[cd.row0:cd.row0 + h, cd.col0:cd.col0 + w] |= cd.footprint
    sigma = stack.band_sigma()
    full = (0, 0) + stack.shape
    for i in range(stack.n_dates):
        if not date_ok[i]:
            continue
        img = stack.read("date", i, full, stack.n_bands)
        img = img if stack.n_bands > 1 else img[None]
        seen = stack.read("obs", i, full, fill=0) > 0
        for g, cd in enumerate(cands):
            box = _crop_box(cd, margin)
            foot = _pad(cd.footprint, margin)
            ok = _paste(seen, box, seen)
            sub = np.stack([_paste(b, box, b) for b in img])
            inside = foot & ok
            around = presence.ring_of(foot, cfg.objects.ring_px, _paste(taken, box, taken)) & ok
            sub = np.nan_to_num(sub)
            con[g, i] = presence.contrast(sub, inside, around, sigma)
            side[g, i] = presence.nearest_side(sub, inside, around, sigma)
            share[g, i] = inside.sum() / max(int(foot.sum()), 1)
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


def classify_track(stack: Stack, cfg: Config, cand: presence.Candidate, track: Track,
                   empty_date: int | None, object_date: int, water: np.ndarray) -> tuple[str, float, np.ndarray]:
    """Type a track with ``detect``'s rules: the object between an empty-state and an object-state date.

    Returns the class, its confidence and the object's pixels on the crop of the candidate grown
    by ``objects.ring_px + 2`` (bool).
    """
    params = cfg.objects
    margin = params.ring_px + 2
    h, w = cand.footprint.shape
    box = (cand.row0 - margin, cand.col0 - margin, h + 2 * margin, w + 2 * margin)
    foot = np.pad(cand.footprint, margin)
    nb = stack.n_bands

    def read(kind: str, i: int | None) -> np.ndarray:
        x = stack.read(kind, i, box, nb)
        return x if nb > 1 else x[None]

    b = read("background", None) if empty_date is None else read("date", empty_date)
    a = read("date", object_date)
    valid = np.isfinite(b).all(axis=0) & np.isfinite(a).all(axis=0)
    b, a = np.nan_to_num(b), np.nan_to_num(a)
    sigma = stack.band_sigma()
    near = cv2.dilate(foot.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    obj = object_mask(a, b, near & valid, sigma, cfg)
    if obj.sum() < 4:
        obj = foot
    score = np.clip(background.deviation(a, b, sigma) / (2.0 * cfg.series.deviation_sigma), 0.0, 1.0)
    wat = _paste(water, box, water) > 0
    shadow = objects.cast_shadow(obj & valid, b, a, params)
    core = objects.fill_holes(_largest(objects.object_core(obj, shadow)))
    shape = objects.measure_shape(core, (box[0], box[1]), stack.gsd_m, params)
    ctx = objects.measure_context(obj, b, a, valid, wat, score, sigma, params)
    ctx = replace(ctx, shadow_frac=float(shadow.sum() / max(obj.sum(), 1)))
    track.extra = {"area_m2": round(shape.area_m2, 3), "length_m": round(shape.length_m, 3),
                   "width_m": round(shape.width_m, 3), "water_frac": round(ctx.water_frac, 3)}
    cls, conf = objects.classify(shape, ctx, params)
    return cls, conf, core


def analyse(stack: Stack, cfg: Config, progress: ProgressFn) -> Analysis:
    """Passes 2-4 over a registered stack (:func:`changedet.series.stack.register_dates`)."""
    fractions = observe_pass(stack, cfg, progress)
    date_ok = np.array([f >= cfg.series.min_observable_fraction for f in fractions])
    water = background_pass(stack, cfg, date_ok, progress)
    cands = link_pass(stack, cfg, date_ok, progress)
    con, side, share = contrast_pass(stack, cfg, cands, date_ok, progress)
    tracks: list[Track] = []
    feet: list[tuple[int, int, np.ndarray]] = []
    for g, cd in enumerate(cands):
        observed = date_ok & (share[g] >= cfg.series.min_region_observable)
        stood = np.zeros(stack.n_dates, bool)
        stood[sorted(cd.dates())] = True
        st = presence.decide_states(con[g], observed, stood, cfg.series.state_min_separation, side[g])
        if st is None:
            continue
        strength = np.linalg.norm(np.nan_to_num(con[g]), axis=1)
        absent = [int(t) for t in np.flatnonzero(st.observed & ~st.present)]
        margin = cfg.objects.ring_px + 2
        for tr in tracks_of(g, st.present, st.observed):
            obj_date = max(tr.present, key=lambda t: (strength[t], -t))
            empty = min(absent, key=lambda t: (abs(t - obj_date), t)) if absent else None
            tr.cls, tr.confidence, foot = classify_track(stack, cfg, cd, tr, empty, obj_date, water)
            tr.extra["separation_sigma"] = round(st.separation, 3)
            tracks.append(tr)
            feet.append((cd.row0 - margin, cd.col0 - margin, foot))
        progress("tracks", g + 1, len(cands))
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
