"""Decide which pixels changed: automatic threshold, hysteresis, clean-up.

The score arrives quantised to ``uint8`` levels 0..254 (255 = nodata), the only
per-pixel product held whole besides the mask itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .config import DecideConfig

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


def decide(q: np.ndarray, params: DecideConfig, gsd_m: float) -> tuple[np.ndarray, Threshold]:
    """Threshold the quantised score and clean the result.

    Returns
    -------
    mask : (h, w) uint8, 0 no change, 1 change, 255 nodata.
    threshold : the thresholds used.
    """
    thr = choose(histogram(q), params)
    mask = clean(hysteresis(q, thr), params, gsd_m)
    mask[q == NODATA] = NODATA
    return mask, thr
