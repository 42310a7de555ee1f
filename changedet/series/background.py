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


def edge_sigma(background: np.ndarray, sigma: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Per-pixel no-change spread (bands, h, w): ``sigma``, plus what a misregistration of
    ``tolerance_px`` makes of the background's local slope (its 3 x 3 maximum).

    Resampling and residual misregistration change an edge's pixels by about slope x shift; without
    this every sharp edge of the site would stand out on the dates resampled most.
    """
    sig = np.asarray(sigma, np.float32)[:, None, None]
    if tolerance_px <= 0:
        return np.broadcast_to(sig, background.shape).astype(np.float32)
    out = np.empty(background.shape, np.float32)
    for k, band in enumerate(np.nan_to_num(background).astype(np.float32)):
        gx = cv2.Sobel(band, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
        gy = cv2.Sobel(band, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
        slope = cv2.dilate(np.sqrt(gx * gx + gy * gy), np.ones((3, 3), np.uint8))
        out[k] = np.sqrt(sig[k] ** 2 + (tolerance_px * slope) ** 2)
    return out


def smoothed_difference(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Image minus background per band, averaged over 3 x 3 ((bands, h, w) float32; 0 where either has no data).

    Averaging the signed difference before combining bands cuts a pixel's noise about threefold
    while keeping an object of two or more pixels across: a faint trench stands out of it, not
    out of the raw difference.
    """
    d = np.nan_to_num(np.asarray(image, np.float32) - np.asarray(background, np.float32), nan=0.0)
    return np.stack([cv2.blur(b, (3, 3), borderType=cv2.BORDER_REFLECT) for b in d])


def deviation(image: np.ndarray, background: np.ndarray, sigma: np.ndarray,
              tolerance_px: float = 0.0) -> np.ndarray:
    """How far a date stands out from the background: RMS over bands of the smoothed difference in sigmas.

    Parameters
    ----------
    image, background : (bands, h, w) float32 (NaN: no data).
    sigma : (bands,) no-change spread of the smoothed difference (:func:`smoothed_difference`,
        measured by :func:`smoothed_sigma`).
    tolerance_px : misregistration allowed for (:func:`edge_sigma`).

    Returns
    -------
    (h, w) float32; 0 where either has no data.
    """
    d = smoothed_difference(image, background) / edge_sigma(background, sigma, tolerance_px)
    z = np.sqrt(np.mean(d * d, axis=0))
    bad = ~(np.isfinite(image).all(axis=0) & np.isfinite(background).all(axis=0))
    z[bad] = 0.0
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def smoothed_sigma(samples: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Robust no-change spread per band of smoothed differences ((bands, n) samples -> (bands,)).

    The median absolute deviation: objects that stand out (less than half the samples) do not set it.
    """
    s = np.asarray(samples, np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        return np.full(s.shape[0] if s.ndim == 2 else 1, np.nan)
    med = np.median(s, axis=1, keepdims=True)
    return np.maximum(1.4826 * np.median(np.abs(s - med), axis=1), floor)


def sample_grid(box: tuple[int, int, int, int], step: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns inside ``box`` (row, col, h, w) of the global grid of every ``step``-th pixel,
    relative to the box: the same pixels whatever the windows."""
    r, c, h, w = box
    rows = np.arange(-r % step, h, step)
    cols = np.arange(-c % step, w, step)
    return rows, cols


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


def passing_clouds(bits: np.ndarray, neighbours: list[np.ndarray], core_bit: int, rim_bit: int,
                   min_radius_px: float, max_rectangularity: float) -> np.ndarray:
    """Bright-and-white regions (rim holding a core) of one date that the dates before and after do
    not share: ragged blobs whose core holds a disk of ``min_radius_px`` (bool).

    ``bits`` are the date's evidence bits against the median of the dates
    (:func:`changedet.observability.evidence`); ``neighbours`` the bits of the nearest dates before
    and after it that are not mostly under cloud. A region counts as passing when under half of it
    is bright and white on each of them.
    :func:`changedet.observability.clouds` asks a larger core of a pair of dates, as a new road or a
    roof row is bright against the other date too; in a series those last, a cloud passes. A hull
    moored for one date or a roof fills its minimum-area rectangle (``max_rectangularity``) and is kept.
    """
    grown = ((bits & (core_bit | rim_bit)) > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1 or min_radius_px <= 0:
        return np.zeros(grown.shape, bool)
    core = (bits & core_bit) > 0
    radius = cv2.distanceTransform(core.astype(np.uint8), cv2.DIST_L2, 5)
    deepest = np.zeros(n, np.float32)
    np.maximum.at(deepest, labels[core], radius[core])
    keep = deepest >= min_radius_px
    keep[0] = False
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    for other in neighbours:
        shared = np.bincount(labels.ravel(), weights=((other & (core_bit | rim_bit)) > 0).ravel(), minlength=n)
        keep &= shared < 0.5 * area
    for i in np.flatnonzero(keep):
        x, y, w, h = stats[i, :4]
        sub = (labels[y:y + h, x:x + w] == i).astype(np.uint8)
        contours, _ = cv2.findContours(sub, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        (_, _), (rw, rh), _ = cv2.minAreaRect(np.concatenate(contours))
        keep[i] = area[i] < max_rectangularity * max(rw * rh, 1.0)
    return keep[labels]


def passing_dark(bits: np.ndarray, neighbours: list[np.ndarray], dark_bit: int) -> np.ndarray:
    """The date's evidence bits with ``dark_bit`` kept only on dark regions the dates before and
    after do not share (uint8, a copy).

    A cloud's shadow passes with its cloud; against the median of the dates, a berth left empty
    is dark too, on every date its vessel is away. Left in, it is where the shadow search lays a
    cloud of the same date (the rarer dark pixels are, the more it stands out), and the berth is
    masked as shadow on the date a vessel is at the next one. ``neighbours`` are the bits of the
    nearest dates before and after that are not mostly under cloud (:func:`passing_clouds`); a dark
    region counts as passing when under half of it is dark on each of them.
    """
    dark = ((bits & dark_bit) > 0).astype(np.uint8)
    out = bits.copy()
    if not neighbours or not dark.any():
        return out
    n, labels = cv2.connectedComponents(dark, connectivity=8, ltype=cv2.CV_32S)
    area = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    keep = np.ones(n, bool)
    for other in neighbours:
        shared = np.bincount(labels.ravel(), weights=((other & dark_bit) > 0).ravel(), minlength=n)
        keep &= shared < 0.5 * area
    keep[0] = True
    out[~keep[labels]] &= np.uint8(~dark_bit & 0xFF)
    return out


def smooth_stack(stack: np.ndarray) -> np.ndarray:
    """Every date's bands averaged over 3 x 3 ((n, bands, h, w) float32; NaN stays NaN where a date has no data)."""
    out = np.empty(stack.shape, np.float32)
    for i in range(stack.shape[0]):
        bad = ~np.isfinite(stack[i]).all(axis=0)
        for b in range(stack.shape[1]):
            out[i, b] = cv2.blur(np.nan_to_num(stack[i, b]), (3, 3), borderType=cv2.BORDER_REFLECT)
        out[i][:, bad] = np.nan
    return out


def lasting_step(stack: np.ndarray, use: np.ndarray, sigma: np.ndarray, min_sigma: float,
                 min_sharpness: float, min_dates: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose dates fall into a lasting "before" and "after" level, and the first date after.

    Parameters
    ----------
    stack : (n, bands, h, w) float32, dates in time order, smoothed (:func:`smooth_stack`); best
        centred on each pixel's median (float32 sums of squares).
    use : (n, h, w) bool, the dates each pixel may use.
    sigma : (bands,) no-change spread of a smoothed date against the background.
    min_sigma : the two levels differ by at least this many ``sigma`` (RMS over bands).
    min_sharpness : ... and by at least this many times the spread of the dates within the levels:
        a structure built between two dates is a step, the season's slow drift is not.
    min_dates : each level holds at least this many usable dates.

    Returns
    -------
    (h, w) bool, the pixels with a step, and (h, w) int32, the index of the first date after it
    (0 where there is none).

    Notes
    -----
    Per pixel the split of its usable dates into before and after that maximises the between-level
    sum of squares (Otsu's criterion along time, with running sums: memory of two dates).
    """
    n, nb = stack.shape[:2]
    x = np.where(use[:, None], np.nan_to_num(stack), np.float32(0.0)).astype(np.float32)
    u = use.astype(np.float32)
    tot_n = u.sum(axis=0)
    tot_s = x.sum(axis=0)
    tot_q = (x * x).sum(axis=0)
    run_n = np.zeros(tot_n.shape)
    run_s = np.zeros(tot_s.shape)
    run_q = np.zeros(tot_q.shape)
    best = np.full(tot_n.shape, -1.0)
    best_k = np.zeros(tot_n.shape, np.int32)
    best_d = np.zeros(tot_s.shape)
    best_w = np.zeros(tot_n.shape)
    sig2 = np.asarray(sigma, np.float64)[:, None, None] ** 2
    for k in range(1, n):
        run_n += u[k - 1]
        run_s += x[k - 1]
        run_q += x[k - 1] ** 2
        n1, n2 = run_n, tot_n - run_n
        ok = (n1 >= min_dates) & (n2 >= min_dates)
        if not ok.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            m1 = run_s / n1
            m2 = (tot_s - run_s) / n2
            d = m2 - m1
            bss = (n1 * n2 / (n1 + n2)) * np.sum(d * d / sig2, axis=0)
            within = (run_q - n1 * m1 * m1 + (tot_q - run_q) - n2 * m2 * m2) / np.maximum(n1 + n2 - 2, 1)
            wss = np.mean(np.maximum(within, 0.0) / sig2, axis=0)
        better = ok & (bss >= best)  # ties (unusable dates between): the first usable date after
        best = np.where(better, bss, best)
        best_k = np.where(better, k, best_k)
        best_d = np.where(better[None], d, best_d)
        best_w = np.where(better, wss, best_w)
    level = np.sqrt(np.mean(best_d * best_d / sig2, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        sharp = level / np.sqrt(np.maximum(best_w, 1e-12))
    step = (best >= 0) & (level >= min_sigma) & (sharp >= min_sharpness)
    return step, np.where(step, best_k, 0).astype(np.int32)


def step_background(stack: np.ndarray, use: np.ndarray, step: np.ndarray, first_after: np.ndarray,
                    median: np.ndarray | None = None) -> np.ndarray:
    """The background with lasting steps resolved: where ``step``, the median of the usable dates on
    the side of the step that holds more of them, elsewhere of all usable dates (:func:`temporal_median`).

    A trench dug halfway through the series is neither in nor out of the plain median (a blend of
    both states, from which neither stands out clearly); a vessel moored on the first five of thirty
    dates, or a hut built on the fifth, is on the side it shares with fewer dates either way.
    """
    med = temporal_median(stack, use) if median is None else median
    if not step.any():
        return med
    n = stack.shape[0]
    before = use & (np.arange(n)[:, None, None] < first_after[None])
    after = use & ~before
    longer = np.where((before.sum(axis=0) >= after.sum(axis=0))[None], before, after)
    side = temporal_median(stack, longer)
    return np.where(step[None], side, med).astype(np.float32)
