"""Small array helpers shared by the stages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BandRoles:
    """0-based indices of the bands a stage needs, or None when the band count does not tell."""

    green: int | None
    nir: int | None
    blue: int | None


def band_roles(n_bands: int) -> BandRoles:
    """Which band is green, NIR and (without NIR) blue, from the band count alone.

    Three bands are taken as R G B (PNG, JPEG, Google Earth exports). With 4 or 5 bands the common
    orders (R G B NIR, B G R NIR, + SWIR) both have green second and NIR fourth; with 13 (Sentinel-2)
    green is B03 and NIR B08. Other counts: no roles.
    """
    return {3: BandRoles(1, None, 2), 4: BandRoles(1, 3, None), 5: BandRoles(1, 3, None),
            13: BandRoles(2, 7, None)}.get(n_bands, BandRoles(None, None, None))


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


#: a window of a grid: (row, col, height, width)
Box = tuple[int, int, int, int]


def iter_windows(shape: tuple[int, int], size: int) -> Iterator[Box]:
    """Tile a (rows, cols) grid into boxes of at most ``size`` pixels, row by row."""
    rows, cols = shape
    for r in range(0, rows, size):
        for c in range(0, cols, size):
            yield (r, c, min(size, rows - r), min(size, cols - c))
