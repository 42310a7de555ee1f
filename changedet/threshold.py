"""Decide which pixels changed: automatic threshold, hysteresis, clean-up.

The score arrives quantised to ``uint8`` levels 0..254 (255 = nodata), the only
per-pixel product held whole besides the mask itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .config import DecideConfig
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
    return np.bincount(q.ravel(), minlength=256)[: LEVELS + 1].astype(np.float64)


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


def hysteresis(q: np.ndarray, thr: Threshold) -> np.ndarray:
    """Pixels above ``low`` connected (8-neighbourhood) to a pixel above ``high``; uint8 0/1."""
    valid = q != NODATA
    low = ((q > thr.low * LEVELS) & valid).astype(np.uint8)
    high = (q > thr.high * LEVELS) & valid
    n, labels = cv2.connectedComponents(low, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros_like(low)
    keep = np.zeros(n, dtype=bool)
    keep[np.unique(labels[high])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)


def remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop 8-connected regions of fewer than ``min_px`` pixels."""
    if min_px <= 1:
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels].astype(np.uint8)


def fill_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Fill 4-connected holes of at most ``max_px`` pixels."""
    if max_px <= 0:
        return mask
    holes = (mask == 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4, ltype=cv2.CV_32S)
    h, w = mask.shape
    x, y, bw, bh = (stats[:, i] for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    touches = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    small = (stats[:, cv2.CC_STAT_AREA] <= max_px) & ~touches
    small[0] = False
    return (mask.astype(bool) | small[labels]).astype(np.uint8)


def clean(mask: np.ndarray, params: DecideConfig, gsd_m: float) -> np.ndarray:
    """Opening, closing, small-region removal and hole filling, sizes in m²."""
    px_area = gsd_m * gsd_m
    out = mask
    if params.open_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, _disk(params.open_px))
    if params.close_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(params.close_px))
    out = fill_holes(out, int(params.fill_holes_m2 / px_area))
    return remove_small(out, int(np.ceil(params.min_area_m2 / px_area)))


def decide(q: np.ndarray, params: DecideConfig, gsd_m: float,
           fixed: float | None = None) -> tuple[np.ndarray, Threshold]:
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
    mask = cut(q, thr, params, gsd_m)
    mask[q == NODATA] = NODATA
    return mask, thr


def cut(q: np.ndarray, thr: Threshold, params: DecideConfig, gsd_m: float) -> np.ndarray:
    """The pixel decision at given thresholds: hysteresis, then clean-up; uint8 0/1."""
    return clean(hysteresis(q, thr), params, gsd_m)


#: a line's pixels keep at least this share of its typical line evidence (z^2): a quarter is where
#: the segment is half on the line, i.e. centred on its end
LINE_END_SHARE = 0.25


def line_mask(lq: np.ndarray, mask: np.ndarray, params: DecideConfig, gsd_m: float,
              flank_px: int = 3, length_px: int = 11) -> np.ndarray:
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
    """
    out = np.zeros(lq.shape, np.uint8)
    if params.line_min_ratio <= 0:
        return out
    r = params.line_min_ratio
    high, low = r / (1.0 + r), (r / 2) / (1.0 + r / 2)
    seeds = (lq > high * LEVELS) & (lq != NODATA)
    if not seeds.any():
        return out
    del seeds
    near = cv2.dilate((mask == 1).astype(np.uint8), _disk(flank_px)).astype(bool)
    wide = _wide_regions(mask, flank_px, length_px // 2 + 1)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hysteresis(lq, Threshold("line", high, high, low)),
                                                          connectivity=8, ltype=cv2.CV_32S)
    min_px = params.line_min_length_m / gsd_m
    for i in range(1, n):
        x, y, w, h = _box(stats, i)
        if np.hypot(w, h) < min_px:
            continue
        region = labels[y:y + h, x:x + w] == i
        lev = lq[y:y + h, x:x + w].astype(np.float32) / LEVELS
        rr = lev / np.maximum(1.0 - lev, 1e-3)  # back to multiples of the 90th percentile
        region &= rr >= LINE_END_SHARE * float(np.median(rr[region]))
        region &= ~wide[y:y + h, x:x + w]
        m, parts, pstats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8,
                                                               ltype=cv2.CV_32S)
        for j in range(1, m):
            px, py, pw, ph = _box(pstats, j)
            if np.hypot(pw, ph) < min_px:
                continue
            part = parts[py:py + ph, px:px + pw] == j
            far = part & ~near[y + py:y + py + ph, x + px:x + px + pw]
            if far.sum() >= min_px and skeleton_length_px(far) >= min_px:
                out[y + py:y + py + ph, x + px:x + px + pw][part] = 1
    return out


def _box(stats: np.ndarray, i: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of component ``i`` of :func:`cv2.connectedComponentsWithStats`."""
    return (int(stats[i, cv2.CC_STAT_LEFT]), int(stats[i, cv2.CC_STAT_TOP]), int(stats[i, cv2.CC_STAT_WIDTH]),
            int(stats[i, cv2.CC_STAT_HEIGHT]))


def _wide_regions(mask: np.ndarray, flank_px: int, reach_px: int) -> np.ndarray:
    """Pixels within ``reach_px`` of a region of ``mask`` that is not a thin line (bool).

    A region is a thin line when its width along its skeleton (:func:`changedet.objects.widest_px`)
    is at most ``2 * flank_px`` pixels and its skeleton is at least twice that width: a piece of a
    trench the pixel score found. Roofs, hulls and clearings are not, however small.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8), connectivity=8,
                                                          ltype=cv2.CV_32S)
    block = np.zeros(n, bool)
    for i in range(1, n):
        x, y, w, h = _box(stats, i)
        region = labels[y:y + h, x:x + w] == i
        width = widest_px(region)
        block[i] = width > 2 * flank_px or skeleton_length_px(region) < 2 * width
    if not block[1:].any():
        return np.zeros(mask.shape, bool)
    return cv2.dilate(block[labels].astype(np.uint8), _disk(reach_px)).astype(bool)
