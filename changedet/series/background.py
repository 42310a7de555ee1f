"""The site's temporal background and how far each date stands out from it (pure functions on arrays)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np


def temporal_median(stack: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Per-pixel median over the dates that ``use`` allows.

    Parameters
    ----------
    stack : (n, bands, h, w) float32, NaN where a date holds no data.
    use : (n, h, w) bool, the dates each pixel's median may use (observable ones).

    Returns
    -------
    (bands, h, w) float32; where no date is usable, the median of every date with data; NaN where none.

    Notes
    -----
    The median of the observable dates is the site's robust background: an object present on fewer
    than half of them (a vessel at the quay) is not in it, one present on more (a hut built early) is.
    """
    if stack.ndim != 4 or use.shape != (stack.shape[0],) + stack.shape[2:]:
        raise ValueError(f"stack (n, bands, h, w) and use (n, h, w) expected, got {stack.shape} and {use.shape}")
    masked = np.where(use[:, None], stack, np.float32(np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        med = np.nanmedian(masked, axis=0)
        none = ~np.isfinite(med).all(axis=0)
        if none.any():
            med[:, none] = np.nanmedian(stack[:, :, none], axis=0)
    return med.astype(np.float32)


def edge_sigma(background: np.ndarray, band_sigma: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Per-pixel no-change spread (bands, h, w): the noise, plus what a misregistration of
    ``tolerance_px`` makes of the background's local slope (its 3 x 3 maximum).

    Resampling and residual misregistration change an edge's pixels by about slope x shift; without
    this every sharp edge of the site would stand out on the dates resampled most.
    """
    sig = np.asarray(band_sigma, np.float32)[:, None, None]
    if tolerance_px <= 0:
        return np.broadcast_to(sig, background.shape).astype(np.float32)
    out = np.empty(background.shape, np.float32)
    for k, band in enumerate(np.nan_to_num(background).astype(np.float32)):
        gx = cv2.Sobel(band, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
        gy = cv2.Sobel(band, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
        slope = cv2.dilate(np.sqrt(gx * gx + gy * gy), np.ones((3, 3), np.uint8))
        out[k] = np.sqrt(sig[k] ** 2 + (tolerance_px * slope) ** 2)
    return out


def deviation(image: np.ndarray, background: np.ndarray, band_sigma: np.ndarray,
              tolerance_px: float = 0.0) -> np.ndarray:
    """How far a date stands out from the background: RMS over bands of the difference in noise sigmas.

    Parameters
    ----------
    image, background : (bands, h, w) float32 (NaN: no data).
    band_sigma : (bands,) no-change noise.
    tolerance_px : misregistration allowed for (:func:`edge_sigma`).

    Returns
    -------
    (h, w) float32, smoothed by a 3 x 3 mean (a pixel's noise alone does not make an object); 0 where
    either has no data.
    """
    d = (image - background) / edge_sigma(background, band_sigma, tolerance_px)
    z = np.sqrt(np.mean(d * d, axis=0))
    z = np.nan_to_num(z, nan=0.0).astype(np.float32)
    return cv2.blur(z, (3, 3), borderType=cv2.BORDER_REFLECT)


def object_mask(dev: np.ndarray, observable: np.ndarray, threshold_sigma: float) -> np.ndarray:
    """Pixels that stand out (uint8 0/1): above ``threshold_sigma`` where observable, opened by 3 x 3."""
    m = ((dev > threshold_sigma) & observable).astype(np.uint8)
    return cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


def large_bright(evidence_bits: np.ndarray, core_bit: int, rim_bit: int, min_px: int) -> np.ndarray:
    """Bright-and-white regions (rim holding a core) of at least ``min_px`` pixels (bool).

    :func:`changedet.observability.clouds` takes a region filling its minimum-area rectangle for a
    roof; a cloud over most of a small site is cut square by the site's edges, and no roof covers a
    tenth of a site, so such regions are clouds whatever their shape.
    """
    grown = ((evidence_bits & (core_bit | rim_bit)) > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(grown.shape, bool)
    core_px = np.bincount(labels[(evidence_bits & core_bit) > 0], minlength=n)
    keep = (stats[:, cv2.CC_STAT_AREA] >= max(min_px, 1)) & (core_px > 0)
    keep[0] = False
    return keep[labels]
