"""Pixel and structural differencing, fused into one 0..1 change score.

* Change-vector magnitude: per-band differences in units of that band's
  no-change noise (robust sigma of the difference), ``z^2 = mean_b (d_b/s_b)^2``,
  mapped to 0..1 by ``z^2 / (z^2 + k^2)`` (0.5 at ``k`` sigmas).
  With two or more bands the change vector can be split into its part along
  the pixel's own spectral direction (brightness: shadow, haze, sun angle,
  greener or drier vegetation of the same hue) and the part across it (a new
  material); ``brightness_weight`` < 1 discounts the former.  With
  ``tolerance_px`` > 0 each pixel takes the smallest change vector over the
  after pixels within that distance, so the last fraction of a pixel of
  misregistration (and one-pixel jitter of edges) is not flagged.
* Structural dissimilarity: one minus the contrast-structure term of local
  SSIM (Wang et al. 2004) on luminance, with Gaussian windows (OpenCV) and the
  stabilising constant set from the noise level, so that flat noisy areas do
  not look like change.
* Fusion, a probabilistic OR (either kind of evidence can flag change):
  ``score = 1 - (1 - cva) * (1 - w * ssim)`` with ``w = ssim_weight``, lightly smoothed.
* Line evidence, a separate score for thin lines of change (a trench, a track)
  too faint pixel by pixel: each band's difference averaged along a short
  segment through the pixel, less its average along the parallel segments on
  either side, at 12 orientations (:func:`line_score`). Averaging along the
  line beats the pixel noise down; comparing with both sides removes broad
  change (a greener field, haze). It is thresholded on its own and kept only
  where it traces a long line (:func:`changedet.threshold.line_mask`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .arrays import luminance, robust_sigma
from .config import MeasureConfig


@dataclass(frozen=True)
class NoiseModel:
    """No-change spread of the normalized difference, estimated once per pair."""

    band_sigma: tuple[float, ...]
    lum_sigma: float
    #: spread of each band's line contrast (:func:`line_contrast`) without change; empty: no line evidence
    line_sigma: tuple[float, ...] = ()
    #: 90th percentile of :func:`line_z2` over the pair
    line_t90: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"band_sigma": [round(s, 4) for s in self.band_sigma], "lum_sigma": round(self.lum_sigma, 4),
                "line_sigma": [round(s, 5) for s in self.line_sigma], "line_t90": round(self.line_t90, 4)}


def fit_noise(before: np.ndarray, after: np.ndarray) -> NoiseModel:
    """Robust spread of ``after - before`` per band and of luminance.

    Parameters
    ----------
    before, after : (bands, n) samples, ``after`` already normalized.
    """
    diff = after - before
    sig = [max(robust_sigma(d), 1e-3) for d in diff]
    lum = max(robust_sigma(diff.mean(axis=0)), 1e-3)
    return NoiseModel(tuple(sig), lum)


def halo_px(params: MeasureConfig) -> int:
    """Pixels of context a window needs on each side for exact results."""
    pixel = int(np.ceil(4 * params.ssim_sigma_px + 4 * params.smooth_sigma_px)) + 2 + params.tolerance_px
    line = params.line_length_px // 2 + LINE_FLANK_PX + 3 if params.line_length_px > 1 else 0
    return max(pixel, line)


# --------------------------------------------------------------------------- line evidence

LINE_ORIENTATIONS = 12
#: distance from a line's centre to the parallel segments it is compared with: lines up to about
#: 4 px wide stand clear of both
LINE_FLANK_PX = 3


def segment_kernel(length_px: int, angle_rad: float) -> np.ndarray:
    """Mean along an anti-aliased segment of ``length_px`` through the kernel's centre (sums to 1, odd sides)."""
    size = (length_px + 2) | 1
    c = size // 2
    up = 8  # drawn 8x larger with 1/8-pixel end points (cv2 shift=3), then area-averaged down
    img = np.zeros((size * up, size * up), np.uint8)
    dx, dy = (length_px - 1) / 2 * math.cos(angle_rad), (length_px - 1) / 2 * math.sin(angle_rad)
    p0 = (int(round((c - dx + 0.5) * up * 8)), int(round((c - dy + 0.5) * up * 8)))
    p1 = (int(round((c + dx + 0.5) * up * 8)), int(round((c + dy + 0.5) * up * 8)))
    cv2.line(img, p0, p1, 255, up, cv2.LINE_AA, shift=3)
    ker = cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    # cropped to its nonzero rows and columns, keeping the centre: a 13 x 3 kernel is filtered
    # directly, a 13 x 13 one through the DFT, nine times slower
    rows, cols = np.nonzero(ker.any(axis=1))[0], np.nonzero(ker.any(axis=0))[0]
    r = max(c - int(rows.min()), int(rows.max()) - c)
    q = max(c - int(cols.min()), int(cols.max()) - c)
    ker = ker[c - r:c + r + 1, c - q:c + q + 1]
    return ker / ker.sum()


@functools.lru_cache(maxsize=8)
def _segment_kernels(length_px: int) -> tuple[np.ndarray, ...]:
    return tuple(segment_kernel(length_px, _angle(k)) for k in range(LINE_ORIENTATIONS))


def _angle(k: int) -> float:
    """Angle in radians of orientation ``k`` of :data:`LINE_ORIENTATIONS`, over 180 degrees."""
    return math.pi * k / LINE_ORIENTATIONS


def _inside(valid: np.ndarray, reach_px: int) -> np.ndarray:
    """Valid pixels at least ``reach_px`` from an invalid pixel and from the array's edge (bool)."""
    k = np.ones((2 * reach_px + 1, 2 * reach_px + 1), np.uint8)
    return cv2.erode(np.pad(valid.astype(np.uint8), 1), k)[1:-1, 1:-1].astype(bool)


def _shift(img: np.ndarray, dx: float, dy: float, out: np.ndarray | None = None) -> np.ndarray:
    """``out[y, x] = img[y + dy, x + dx]``, bilinear, edges reflected (into ``out`` when given)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), dst=out,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def line_contrast(diff: np.ndarray, length_px: int, k: int) -> np.ndarray:
    """Contrast of a line of ``diff`` through each pixel against both its sides; (h, w) -> (h, w) float32.

    The mean of ``diff`` along a segment of ``length_px`` at orientation ``k`` of
    :data:`LINE_ORIENTATIONS` (angle ``pi k / 12`` from x right, y down) less
    the larger magnitude of its means along the parallel segments :data:`LINE_FLANK_PX` to either
    side, with the line's sign; 0 where the sides change as much. A line of change has changed
    and its sides have not: not so the edge of a broad change (one side changed as much), a road
    through a field that greened for the season (the line itself did not change), nor the
    plus-minus pair along a strong edge that moved or sharpened a little (one side changed the
    other way).
    """
    seg = cv2.filter2D(diff.astype(np.float32), -1, _segment_kernels(length_px)[k], borderType=cv2.BORDER_REFLECT)
    nx, ny = -math.sin(_angle(k)) * LINE_FLANK_PX, math.cos(_angle(k)) * LINE_FLANK_PX
    sides = np.maximum(np.abs(_shift(seg, nx, ny)), np.abs(_shift(seg, -nx, -ny)))
    return (np.sign(seg) * np.maximum(np.abs(seg) - sides, 0.0)).astype(np.float32)


def line_z2(diff: np.ndarray, line_sigma: np.ndarray, length_px: int) -> np.ndarray:
    """Strongest line of change through each pixel: ``max over orientations of mean_b (c_b / s_b)^2``.

    Parameters
    ----------
    diff : (bands, h, w) after - before, normalized.
    line_sigma : (bands,) no-change spread of each band's :func:`line_contrast`.
    length_px : segment length.

    A trench dug into vegetation brightens the visible bands and darkens the
    near-infrared: luminance hides it, every band on its own shows it.

    Notes
    -----
    The same numbers as squaring :func:`line_contrast` band by band, bit for bit
    (tests/test_differencing.py), with less work: the bands are shifted together, as the
    channels of one image (OpenCV's 3- and 4-channel warps give each channel what the 1-channel
    warp gives it); the square needs no sign (``(-m) / s`` is ``-(m / s)`` exactly); each step is
    done in place. This is the measure stage's largest cost.
    """
    h, w = diff.shape[1:]
    best = np.zeros((h, w), np.float32)
    acc = np.empty((h, w), np.float32)
    sig = np.asarray(line_sigma, dtype=np.float32)
    kernels = _segment_kernels(length_px)
    bands = [np.ascontiguousarray(band, dtype=np.float32) for band in diff]
    # buffers reused by every orientation: a window's temporaries are large enough that fresh
    # ones would each be mapped, faulted in and zeroed anew
    bufs = {cn: (np.zeros((h, w, cn) if cn > 1 else (h, w), np.float32),
                 np.empty((h, w, cn) if cn > 1 else (h, w), np.float32),
                 np.empty((h, w, cn) if cn > 1 else (h, w), np.float32))
            for cn in {cn for _, cn in _channel_groups(len(bands))}}
    for k in range(LINE_ORIENTATIONS):
        nx, ny = -math.sin(_angle(k)) * LINE_FLANK_PX, math.cos(_angle(k)) * LINE_FLANK_PX
        first = True
        for idx, cn in _channel_groups(len(bands)):
            seg, side, other = bufs[cn]
            for j, b in enumerate(idx):
                if cn > 1:
                    seg[..., j] = cv2.filter2D(bands[b], -1, kernels[k], borderType=cv2.BORDER_REFLECT)
                else:
                    cv2.filter2D(bands[b], -1, kernels[k], dst=seg, borderType=cv2.BORDER_REFLECT)
            np.abs(_shift(seg, nx, ny, side), out=side)
            np.abs(_shift(seg, -nx, -ny, other), out=other)
            np.maximum(side, other, out=side)
            c = np.abs(seg, out=other)
            c -= side
            np.maximum(c, np.float32(0), out=c)
            spread = np.ones(cn, np.float32)  # each channel by its band's spread (an empty one by 1)
            spread[:len(idx)] = sig[list(idx)]
            flat = c.reshape(h, -1)
            flat /= np.tile(spread, w) if cn > 1 else spread[0]
            c *= c
            for j in range(len(idx)):  # added band after band, as one band at a time would
                cb = c[..., j] if cn > 1 else c
                if first:  # 0 + x is x for the squares (never -0)
                    acc[...] = cb
                    first = False
                else:
                    acc += cb
        acc /= np.float32(diff.shape[0])
        np.maximum(best, acc, out=best)
    return best


def _channel_groups(n_bands: int) -> list[tuple[tuple[int, ...], int]]:
    """Bands in groups shifted as one image: (band indexes, channels), 4 or 3 channels at a time.

    OpenCV's 2-channel warp rounds differently from its 1-channel one, so a pair of bands gets a
    third, empty channel; a single band stays alone.
    """
    groups = []
    for start in range(0, n_bands, 4):
        idx = tuple(range(start, min(start + 4, n_bands)))
        groups.append((idx, 3 if len(idx) == 2 else len(idx)))
    return groups


def fit_line_noise(chips: list[tuple[np.ndarray, np.ndarray, np.ndarray]], lum_sigma: float,
                   length_px: int) -> tuple[tuple[float, ...], float]:
    """No-change spread of each band's line contrast, and the 90th percentile of :func:`line_z2`.

    Parameters
    ----------
    chips : (before, after, valid) crops spread over the pair, ``after`` registered and normalized.
    lum_sigma : no-change spread of the luminance difference (for :func:`persistent_edges`).
    length_px : segment length.

    Measured on the pair itself: neighbouring pixels' noise is correlated (blur, resampling, texture
    that changed with the season), so the spread of a line mean is not ``sigma / sqrt(length)``.
    The 90th percentile, not a higher one: a few trenches or ships in the chips, with the evidence
    around them, are already a few per cent of their pixels, and moved a 99th percentile of synth
    scenes from 5 to 37 or 250, while the 90th stayed between 2.7 and 3.4. Pixels on edges of
    both dates are left out, as :func:`line_score` leaves them out. Returns ``((), 0)`` when no
    chip is large enough.
    """
    used = []
    for b, a, v in chips:
        inner = _inside(v, length_px // 2 + LINE_FLANK_PX + 2) & ~persistent_edges(b, a, lum_sigma)
        if inner.sum() >= 100:
            used.append((np.where(v[None], a - b, np.float32(0)).astype(np.float32), inner))
    if not used:
        return (), 0.0
    sig = []
    for band in range(used[0][0].shape[0]):
        vals = np.concatenate([line_contrast(d[band], length_px, k)[inner]
                               for d, inner in used for k in range(0, LINE_ORIENTATIONS, 3)])
        sig.append(max(robust_sigma(vals[vals != 0]), 1e-9))
    z2 = np.concatenate([line_z2(d, np.asarray(sig), length_px)[inner] for d, inner in used])
    return tuple(sig), max(float(np.percentile(z2, 90)), 1e-9)


#: a pixel is on an edge of both dates when the weaker date's luminance gradient is this many times
#: what noise alone gives
EDGE_K = 4.0


def persistent_edges(before: np.ndarray, after: np.ndarray, lum_sigma: float) -> np.ndarray:
    """Pixels on a strong edge in both images (bool, (h, w)).

    The Sobel gradient magnitude of luminance, in units of what image noise alone gives (an
    image's noise is about the difference's ``lum_sigma / sqrt(2)``, and a Sobel component has
    ``sqrt(12)`` times the pixel noise), above :data:`EDGE_K` in the weaker of the two dates. A
    road's or roof's edge that moved a fraction of a pixel, sharpened, or clipped differently is a
    one-pixel line of change along it; a new trench cuts ground that had no edge there.
    """
    noise = max(float(lum_sigma), 1e-6) / math.sqrt(2.0) * math.sqrt(12.0)

    def grad(img: np.ndarray) -> np.ndarray:
        lum = luminance(img).astype(np.float32)
        gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
        gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
        return np.sqrt(gx * gx + gy * gy)

    return np.minimum(grad(before), grad(after)) > EDGE_K * noise


def line_score(before: np.ndarray, after: np.ndarray, valid: np.ndarray, noise: NoiseModel,
               length_px: int) -> np.ndarray:
    """Line evidence, 0..1: ``r / (1 + r)`` with ``r = line_z2 / line_t90``; (bands, h, w) -> (h, w) float32.

    0.5 at the pair's 90th percentile (no change is about 2 at its 99th percentile), 0.75 at three
    times it. 0 on edges of both dates (:func:`persistent_edges`); within reach of the segment and
    its sides of invalid pixels and of the array's edge (so the caller's halo must cover that reach,
    :func:`halo_px`); and everywhere when the noise model has no line calibration or ``length_px`` < 2.
    """
    if length_px < 2 or not noise.line_sigma or noise.line_t90 <= 0:
        return np.zeros(before.shape[1:], np.float32)
    after = np.where(valid[None], after, before)
    r = line_z2(after - before, np.asarray(noise.line_sigma), length_px) / np.float32(noise.line_t90)
    out = r / (1.0 + r)
    out[persistent_edges(before, after, noise.lum_sigma)] = 0.0
    # a segment or its sides reaching past the data (the tile's edge, nodata) sees a false edge there
    out[~_inside(valid, length_px // 2 + LINE_FLANK_PX + 1)] = 0.0
    return out.astype(np.float32)


def change_z2(before: np.ndarray, after: np.ndarray, sigma: np.ndarray, brightness_weight: float = 1.0) -> np.ndarray:
    """Squared change-vector magnitude in noise units, ``mean_b (d_b / s_b)^2``; (bands, h, w) -> (h, w).

    Parameters
    ----------
    before, after : (bands, h, w) float arrays, ``after`` normalized to ``before``.
    sigma : (bands,) no-change noise per band.
    brightness_weight : weight of the part of the change vector along the pixel's spectral direction
        (the mean of both dates); 1 is plain CVA. Ignored with one band, where brightness is all there is.

    Notes
    -----
    Splitting the change vector into a brightness part and a spectral-angle part is the polar form of
    change-vector analysis (Johnson & Kasischke 1998, "Change vector analysis: a technique for the
    multispectral monitoring of land cover and condition").
    """
    sig = np.asarray(sigma, dtype=np.float32)[:, None, None]
    d = after - before
    if np.result_type(d, sig) == d.dtype and np.broadcast_shapes(d.shape, sig.shape) == d.shape:
        d /= sig  # in place: the same numbers without another array
    else:
        d = d / sig
    if brightness_weight >= 1.0 or before.shape[0] < 2:
        d *= d
        return np.mean(d, axis=0)
    u = (after + before) / sig
    norm2 = np.sum(u * u, axis=0)
    par = np.sum(d * u, axis=0) / np.maximum(norm2, np.float32(1e-12))  # d_par = par * u
    total = np.sum(d * d, axis=0)
    along2 = par * par * norm2
    across2 = np.maximum(total - along2, 0.0)
    return (across2 + np.float32(brightness_weight**2) * along2) / np.float32(before.shape[0])


def _tolerant_z2(before: np.ndarray, after: np.ndarray, sigma: np.ndarray, brightness_weight: float,
                 t: int) -> np.ndarray:
    """Smallest squared change of each ``before`` pixel against the ``after`` pixels within ``t``."""
    h, w = before.shape[1:]
    z2 = change_z2(before, after, sigma, brightness_weight)
    pad = np.pad(after, ((0, 0), (t, t), (t, t)), mode="edge")
    for dy in range(-t, t + 1):
        for dx in range(-t, t + 1):
            if dx or dy:
                moved = pad[:, t + dy:t + dy + h, t + dx:t + dx + w]
                np.minimum(z2, change_z2(before, moved, sigma, brightness_weight), out=z2)
    return z2


def _tolerant_z2_both(before: np.ndarray, after: np.ndarray, sigma: np.ndarray, brightness_weight: float,
                      t: int) -> np.ndarray:
    """``max(_tolerant_z2(before, after), _tolerant_z2(after, before))``, bit for bit, at half the work.

    :func:`change_z2` is symmetric in its two images, so the comparison of ``after`` at ``(y, x)``
    with ``before`` at ``(y + dy, x + dx)`` is the first direction's comparison at offset
    ``(-dy, -dx)``, taken at ``(y + dy, x + dx)``: each offset's map serves both directions. Only
    the frame of ``t`` pixels, where the second direction reads ``before``'s padded edge, is
    computed on its own.
    """
    h, w = before.shape[1:]
    if h <= 4 * t or w <= 4 * t:
        return np.maximum(_tolerant_z2(before, after, sigma, brightness_weight, t),
                          _tolerant_z2(after, before, sigma, brightness_weight, t))
    first = change_z2(before, after, sigma, brightness_weight)
    second = first.copy()
    pad = np.pad(after, ((0, 0), (t, t), (t, t)), mode="edge")
    for dy in range(-t, t + 1):
        for dx in range(-t, t + 1):
            if dx or dy:
                z = change_z2(before, pad[:, t + dy:t + dy + h, t + dx:t + dx + w], sigma, brightness_weight)
                np.minimum(first, z, out=first)
                # after at (y, x) against before at (y - dy, x - dx), where that is inside
                dst = second[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
                np.minimum(dst, z[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)], out=dst)
    # the frame, where before's padded edge is read: each side from a strip of 2t rows or columns
    band = 2 * t
    for rows, cols, keep_r, keep_c in (
            (slice(0, band), slice(None), slice(0, t), slice(None)),
            (slice(h - band, h), slice(None), slice(t, band), slice(None)),
            (slice(None), slice(0, band), slice(None), slice(0, t)),
            (slice(None), slice(w - band, w), slice(None), slice(t, band))):
        strip = _tolerant_z2(after[:, rows, cols], before[:, rows, cols], sigma, brightness_weight, t)
        second[rows, cols][keep_r, keep_c] = strip[keep_r, keep_c]
    return np.maximum(first, second)


def cva_score(before: np.ndarray, after: np.ndarray, noise: NoiseModel, k: float, brightness_weight: float = 1.0,
              tolerance_px: int = 0) -> np.ndarray:
    """Change-vector magnitude mapped to 0..1; (bands, h, w) -> (h, w) float32.

    With ``tolerance_px`` > 0 the comparison is made both ways: each ``before`` pixel against the
    closest ``after`` pixel within that many pixels (a square), and each ``after`` pixel against the
    closest ``before`` pixel; the larger of the two is kept. A misaligned edge finds its match in both
    directions; a new object does not (its edge pixels match the ground beside them one way only),
    so objects keep their size. Pixels near the array edge compare with fewer neighbours.
    """
    sigma = np.asarray(noise.band_sigma)
    t = tolerance_px
    if t > 0:
        z2 = _tolerant_z2_both(before, after, sigma, brightness_weight, t)
    else:
        z2 = change_z2(before, after, sigma, brightness_weight)
    return (z2 / (z2 + np.float32(k * k))).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def ssim_dissimilarity(a: np.ndarray, b: np.ndarray, sigma: float, c2: float) -> np.ndarray:
    """``1 - cs`` of local SSIM, clipped to 0..1; (h, w) -> (h, w) float32.

    ``cs = (2 cov + C2) / (var_a + var_b + C2)`` with Gaussian-weighted moments.
    """
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    mu_a, mu_b = _blur(a, sigma), _blur(b, sigma)
    var_a = _blur(a * a, sigma) - mu_a * mu_a
    var_b = _blur(b * b, sigma) - mu_b * mu_b
    cov = _blur(a * b, sigma) - mu_a * mu_b
    cs = (2 * cov + c2) / (np.maximum(var_a, 0) + np.maximum(var_b, 0) + c2)
    return np.clip(1.0 - cs, 0.0, 1.0).astype(np.float32)


def change_score(before: np.ndarray, after: np.ndarray, valid: np.ndarray, noise: NoiseModel,
                 params: MeasureConfig) -> np.ndarray:
    """Fused 0..1 change score of a (bands, h, w) pair; invalid pixels get 0.

    The caller passes windows with :func:`halo_px` pixels of context and crops them.
    """
    # invalid pixels copy the other date so that filters see no false edge next to them
    after = np.where(valid[None], after, before)
    cva = cva_score(before, after, noise, params.cva_k, params.brightness_weight, params.tolerance_px)
    # noise of one image's luminance is about the difference's spread / sqrt(2)
    c2 = (params.ssim_noise_k * noise.lum_sigma / np.sqrt(2)) ** 2
    ssim = ssim_dissimilarity(luminance(before), luminance(after), params.ssim_sigma_px, float(c2))
    score = 1.0 - (1.0 - cva) * (1.0 - params.ssim_weight * ssim)
    score[~valid] = 0.0
    if params.smooth_sigma_px > 0:
        score = _blur(score, params.smooth_sigma_px)
    score[~valid] = 0.0
    return np.clip(score, 0.0, 1.0).astype(np.float32)
