"""Small array helpers shared by the stages."""

from __future__ import annotations

import numpy as np


def luminance(bands: np.ndarray) -> np.ndarray:
    """Mean over bands: (bands, h, w) -> (h, w) float32."""
    return np.asarray(bands, dtype=np.float32).mean(axis=0)


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 * median absolute deviation: the standard deviation of the bulk, ignoring outliers."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


def crop(array: np.ndarray, halo: int) -> np.ndarray:
    """Remove ``halo`` pixels from each side of the last two axes."""
    if halo == 0:
        return array
    return array[..., halo:-halo, halo:-halo]
