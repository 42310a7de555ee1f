"""Decide which pixels changed: automatic threshold, hysteresis, clean-up.

The score arrives quantised to ``uint8`` levels 0..254 (255 = nodata), the only
per-pixel product held whole besides the mask itself.

The decision goes through the scene by windows (``window_px``, default 1024): regions are
labelled window by window with their seams joined (:mod:`changedet.labels`), openings and
closings are made with a halo, and whole-scene masks come from a :class:`~changedet.scratch.Scratch`
(``scr``, memory maps past the budget), so the working set does not grow with the scene. The
results equal those of whole-array operations (tests/test_threshold.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import scratch, windowed
from .arrays import Box
from .config import DecideConfig
from .labels import label_windowed
from .objects import skeleton_length_px, widest_px

LEVELS = 254
NODATA = 255


@dataclass(frozen=True)
class Threshold:
    """The thresholds used, as scores in 0..1."""

    method: str
    raw: float  # what the automatic method said, before clamping
    high: float
    low: float

    def to_json(self) -> dict[str, object]:
        return {"method": self.method, "raw": round(self.raw, 4), "high": round(self.high, 4),
                "low": round(self.low, 4)}


def quantize(score: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """0..1 float score -> uint8 levels 0..254, 255 where invalid."""
    q = np.rint(np.clip(score, 0.0, 1.0) * LEVELS).astype(np.uint8)
    q[~valid] = NODATA
    return q


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint8 levels -> 0..1 float64 score, 0 where nodata (the inverse of :func:`quantize` up to rounding)."""
    return np.where(q == NODATA, 0, q).astype(np.float64) / LEVELS


def histogram(q: np.ndarray) -> np.ndarray:
    """Counts of each score level 0..254 (nodata excluded)."""
    counts = np.zeros(256, np.int64)
    for r0, r1 in windowed.strips(q.shape, 1024):
        counts += np.bincount(np.asarray(q[r0:r1]).ravel(), minlength=256)
        scratch.release(q)
    return counts[: LEVELS + 1].astype(np.float64)


def otsu(hist: np.ndarray) -> float:
    """Otsu's threshold (1979) of a level histogram, as a 0..1 score."""
    total = hist.sum()
    if total == 0:
        return 1.0
    levels = np.arange(hist.size, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 / total - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    # the criterion is flat across an empty gap between the modes: take the plateau's middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    # threshold between level t and t+1: pixels > t are change
    return float((0.5 * (best[0] + best[-1]) + 0.5) / LEVELS)


def kittler_illingworth(hist: np.ndarray) -> float:
    """Minimum-error threshold (Kittler & Illingworth 1986) of a level histogram, as a 0..1 score.

    Models the histogram as two Gaussians (no change, change) and takes the level that minimises
    ``J(t) = 1 + 2 (P1 ln s1 + P2 ln s2) - 2 (P1 ln P1 + P2 ln P2)``. Unlike Otsu it copes with
    classes of very different size and spread, the usual case when little has changed.
    """
    total = hist.sum()
    if total == 0:
        return 1.0
    p = hist / total
    levels = np.arange(hist.size, dtype=np.float64)
    p1 = np.cumsum(p)
    m1 = np.cumsum(p * levels)
    q1 = np.cumsum(p * levels**2)
    p2 = 1.0 - p1
    m2, q2 = m1[-1] - m1, q1[-1] - q1
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1, mu2 = m1 / p1, m2 / p2
        v1 = q1 / p1 - mu1**2
        v2 = q2 / p2 - mu2**2
        j = 1 + (p1 * np.log(v1) + p2 * np.log(v2)) - 2 * (p1 * np.log(p1) + p2 * np.log(p2))
    # a class needs some spread (a variance below a quarter level is a single spike)
    ok = (p1 > 0) & (p2 > 0) & (v1 > 0.25) & (v2 > 0.25) & np.isfinite(j)
    if not ok.any():
        return otsu(hist)
    best = int(np.flatnonzero(ok)[np.argmin(j[ok])])
    return float((best + 0.5) / LEVELS)


def zscore(hist: np.ndarray, k: float) -> float:
    """``median + k * robust sigma`` of the level histogram, as a 0..1 score."""
    total = hist.sum()
    if total == 0:
        return 1.0
    cdf = np.cumsum(hist) / total
    med = float(np.searchsorted(cdf, 0.5))
    dev_hist = np.zeros(hist.size)
    np.add.at(dev_hist, np.abs(np.arange(hist.size) - int(med)), hist)
    mad = float(np.searchsorted(np.cumsum(dev_hist) / total, 0.5))
    return float((med + k * 1.4826 * max(mad, 0.5)) / LEVELS)


def choose(hist: np.ndarray, params: DecideConfig) -> Threshold:
    """Pick the high and low thresholds from the score histogram."""
    if params.method == "otsu":
        raw = otsu(hist)
    elif params.method == "kittler":
        raw = kittler_illingworth(hist)
    else:
        raw = zscore(hist, params.zscore_k)
    high = float(np.clip(raw, params.min_score, params.max_score))
    return Threshold(params.method, raw, high, high * params.hysteresis_low_ratio)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def hysteresis(q: np.ndarray, thr: Threshold, window_px: int = 1024,
               scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """Pixels above ``low`` connected (8-neighbourhood) to a pixel above ``high``; uint8 0/1."""
    lo, hi = thr.low * LEVELS, thr.high * LEVELS
    labels, stats = label_windowed(windowed.Where(q, lambda a: (a > lo) & (a != NODATA)), window_px, scr)
    out = scr.zeros(q.shape, np.uint8)
    n = len(stats)
    if n <= 1:
        return out

    def strong(box: Box) -> np.ndarray:
        r, c, h, w = box
        part = np.asarray(q[r:r + h, c:c + w])
        found = np.asarray(labels[r:r + h, c:c + w])[(part > hi) & (part != NODATA)]
        scratch.release(q, labels)
        return found

    keep = np.zeros(n, dtype=bool)
    for _, found in windowed.map_boxes(strong, q.shape, window_px):
        keep[found] = True  # no sort needed
    keep[0] = False
    return windowed.fill(out, windowed.apply(labels, keep.astype(np.uint8), window_px))


def remove_small(mask: np.ndarray, min_px: int, window_px: int = 1024,
                 scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """Drop 8-connected regions of fewer than ``min_px`` pixels."""
    if min_px <= 1:
        return mask
    labels, stats = label_windowed(mask, window_px, scr)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return windowed.fill(scr.zeros(mask.shape, np.uint8), windowed.apply(labels, keep.astype(np.uint8), window_px))


def fill_holes(mask: np.ndarray, max_px: int, window_px: int = 1024,
               scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """Fill 4-connected holes of at most ``max_px`` pixels."""
    if max_px <= 0:
        return mask
    labels, stats = label_windowed(mask, window_px, scr, value=0, connectivity=4)
    h, w = mask.shape
    x, y, bw, bh = (stats[:, i] for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    touches = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    small = (stats[:, cv2.CC_STAT_AREA] <= max_px) & ~touches
    small[0] = False
    out = scr.zeros(mask.shape, np.uint8)

    def one(box: Box) -> None:
        r, c, hh, ww = box
        part = small[np.asarray(labels[r:r + hh, c:c + ww])]
        out[r:r + hh, c:c + ww] = (np.asarray(mask[r:r + hh, c:c + ww]).astype(bool) | part).astype(np.uint8)

    for _ in windowed.map_boxes(one, mask.shape, window_px):
        scratch.release(out, mask, labels)
    return out


def _morphology(mask: np.ndarray, op: int, radius: int, window_px: int, scr: scratch.Scratch) -> np.ndarray:
    """``cv2.morphologyEx(mask, op, disk(radius))`` (an opening or a closing) by windows with a halo."""
    return windowed.morphology(mask, op, _disk(radius), 2, window_px, scr)


def clean(mask: np.ndarray, params: DecideConfig, gsd_m: float, window_px: int = 1024,
          scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """Opening, closing, small-region removal and hole filling, sizes in m²."""
    px_area = gsd_m * gsd_m
    out = mask
    if params.open_px > 0:
        out = _morphology(out, cv2.MORPH_OPEN, params.open_px, window_px, scr)
    if params.close_px > 0:
        out = _morphology(out, cv2.MORPH_CLOSE, params.close_px, window_px, scr)
    out = fill_holes(out, int(params.fill_holes_m2 / px_area), window_px, scr)
    return remove_small(out, int(np.ceil(params.min_area_m2 / px_area)), window_px, scr)


def decide(q: np.ndarray, params: DecideConfig, gsd_m: float,
           fixed: float | None = None, *, window_px: int = 1024,
           scr: scratch.Scratch = scratch.IN_MEMORY) -> tuple[np.ndarray, Threshold]:
    """Threshold the quantised score and clean the result.

    ``fixed`` replaces the automatic threshold (a learned model's calibrated one); hysteresis
    still grows regions down to ``hysteresis_low_ratio`` of it.

    Returns
    -------
    mask : (h, w) uint8, 0 no change, 1 change, 255 nodata.
    threshold : the thresholds used.
    """
    if fixed is None:
        thr = choose(histogram(q), params)
    else:
        thr = Threshold("model", fixed, fixed, fixed * params.hysteresis_low_ratio)
    mask = cut(q, thr, params, gsd_m, window_px, scr)

    def nodata(box: Box) -> None:
        r, c, h, w = box
        mask[r:r + h, c:c + w][np.asarray(q[r:r + h, c:c + w]) == NODATA] = NODATA

    for _ in windowed.map_boxes(nodata, q.shape, window_px):
        scratch.release(mask, q)
    return mask, thr


def cut(q: np.ndarray, thr: Threshold, params: DecideConfig, gsd_m: float, window_px: int = 1024,
        scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """The pixel decision at given thresholds: hysteresis, then clean-up; uint8 0/1."""
    return clean(hysteresis(q, thr, window_px, scr), params, gsd_m, window_px, scr)


#: a line's pixels keep at least this share of its typical line evidence (z^2): a quarter is where
#: the segment is half on the line, i.e. centred on its end
LINE_END_SHARE = 0.25


def line_mask(lq: np.ndarray, mask: np.ndarray, params: DecideConfig, gsd_m: float,
              flank_px: int = 3, length_px: int = 11, window_px: int = 1024,
              scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """Long thin lines of change from the quantised line evidence that ``mask`` misses; uint8 0/1.

    Parameters
    ----------
    lq : quantised line evidence (:func:`changedet.differencing.line_score`, 255 nodata).
    mask : the change mask so far (0/1/255).
    params : ``line_min_ratio`` and ``line_min_length_m``.
    gsd_m : metres per pixel.
    flank_px : distance at which a line is compared with its sides.
    length_px : length of the segments the evidence averages.

    Notes
    -----
    1. Hysteresis between ``line_min_ratio`` and half of it, in multiples of the pair's 90th
       percentile of the evidence.
    2. In each region, pixels below :data:`LINE_END_SHARE` of the region's median evidence go: the
       evidence of a segment reaches past a line's end and beside it.
    3. Pixels within half a segment of a region of ``mask`` that is not a thin line go
       (:func:`_wide_regions`): the outline of a new roof or hull and the shadow along it are lines
       of change too, a small roof shows as a line along each axis, and a segment half on a hull's
       bow traces an arc around it; all of that belongs to the object.
    4. What is left is kept, region by region, when its part further than ``flank_px`` from
       ``mask`` has a skeleton at least ``line_min_length_m`` long: a faint trench, with the
       pieces of it the pixel score found, but not the streaks noise makes, as long as the segment,
       nor what is left of the evidence around an object.

    No opening: it would erase lines two pixels wide.

    Made window by window (``window_px``; the masks from ``scr``), equal to the whole-array result.
    """
    out = scr.zeros(lq.shape, np.uint8)
    if params.line_min_ratio <= 0:
        return out
    r = params.line_min_ratio
    high, low = r / (1.0 + r), (r / 2) / (1.0 + r / 2)
    if not any(np.any((part > high * LEVELS) & (part != NODATA))
               for part in (np.asarray(lq[r0:r1]) for r0, r1 in windowed.strips(lq.shape, window_px))):
        return out
    scratch.release(lq)
    near = _dilate_windowed(windowed.equals(mask, 1), flank_px, window_px, scr)
    wide = _wide_regions(mask, flank_px, length_px // 2 + 1, window_px, scr)
    lines = hysteresis(lq, Threshold("line", high, high, low), window_px, scr)
    labels, stats = label_windowed(lines, window_px, scr)
    del lines
    min_px = params.line_min_length_m / gsd_m
    for i in range(1, len(stats)):
        x, y, w, h = _box(stats, i)
        if np.hypot(w, h) < min_px:
            continue
        if i % 256 == 0:  # memory maps: let go of the pages the regions so far touched
            scratch.release(labels, lq, wide, near, out)
        region = np.asarray(labels[y:y + h, x:x + w]) == i
        lev = np.asarray(lq[y:y + h, x:x + w]).astype(np.float32) / LEVELS
        rr = lev / np.maximum(1.0 - lev, 1e-3)  # back to multiples of the 90th percentile
        region &= rr >= LINE_END_SHARE * float(np.median(rr[region]))
        region &= ~(np.asarray(wide[y:y + h, x:x + w]) > 0)
        m, parts, pstats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8,
                                                               ltype=cv2.CV_32S)
        for j in range(1, m):
            px, py, pw, ph = _box(pstats, j)
            if np.hypot(pw, ph) < min_px:
                continue
            part = parts[py:py + ph, px:px + pw] == j
            far = part & ~(np.asarray(near[y + py:y + py + ph, x + px:x + px + pw]) > 0)
            if far.sum() >= min_px and skeleton_length_px(far) >= min_px:
                out[y + py:y + py + ph, x + px:x + px + pw][part] = 1
    scratch.release(labels, lq, wide, near, out)
    return out


def _dilate_windowed(src: np.ndarray | windowed.Where, radius: int, window_px: int,
                     scr: scratch.Scratch) -> np.ndarray:
    """``cv2.dilate(src, disk(radius))`` (uint8 0/1) by windows with a halo of ``radius``."""
    out = scr.zeros(src.shape, np.uint8)
    kernel = _disk(radius)

    def one(box: Box) -> None:
        part, big = windowed.read(src, box, radius)
        r, c, h, w = box
        out[r:r + h, c:c + w] = windowed.crop(cv2.dilate(part.astype(np.uint8), kernel), big, box)

    for _ in windowed.map_boxes(one, src.shape, window_px):
        scratch.release(out)
    return out


def _box(stats: np.ndarray, i: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of component ``i`` of :func:`cv2.connectedComponentsWithStats`."""
    return (int(stats[i, cv2.CC_STAT_LEFT]), int(stats[i, cv2.CC_STAT_TOP]), int(stats[i, cv2.CC_STAT_WIDTH]),
            int(stats[i, cv2.CC_STAT_HEIGHT]))


def _wide_regions(mask: np.ndarray, flank_px: int, reach_px: int, window_px: int = 1024,
                  scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray:
    """Pixels within ``reach_px`` of a region of ``mask`` that is not a thin line (uint8 0/1).

    A region is a thin line when its width along its skeleton (:func:`changedet.objects.widest_px`)
    is at most ``2 * flank_px`` pixels and its skeleton is at least twice that width: a piece of a
    trench the pixel score found. Roofs, hulls and clearings are not, however small.
    """
    labels, stats = label_windowed(mask, window_px, scr, value=1)
    n = len(stats)
    block = np.zeros(n, bool)
    for i in range(1, n):
        x, y, w, h = _box(stats, i)
        region = np.asarray(labels[y:y + h, x:x + w]) == i
        width = widest_px(region)
        block[i] = width > 2 * flank_px or skeleton_length_px(region) < 2 * width
        if i % 256 == 0:
            scratch.release(labels)
    if not block[1:].any():
        return scr.zeros(mask.shape, np.uint8)
    lut = block.astype(np.uint8)
    return _dilate_windowed(windowed.Where(labels, lambda lab: lut[lab]), reach_px, window_px, scr)
