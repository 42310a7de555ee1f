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
"""

from __future__ import annotations

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

    def to_json(self) -> dict[str, object]:
        return {"band_sigma": [round(s, 4) for s in self.band_sigma], "lum_sigma": round(self.lum_sigma, 4)}


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
    return int(np.ceil(4 * params.ssim_sigma_px + 4 * params.smooth_sigma_px)) + 2 + params.tolerance_px


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
    d = (after - before) / sig
    if brightness_weight >= 1.0 or before.shape[0] < 2:
        return np.mean(d * d, axis=0)
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
        z2 = np.maximum(_tolerant_z2(before, after, sigma, brightness_weight, t),
                        _tolerant_z2(after, before, sigma, brightness_weight, t))
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
