"""What the output rasters' codes mean, and how they look in a GIS.

The class and mask rasters carry a colour table, category names and a raster attribute table (in
their ``.aux.xml``) and metadata items (in the file) built from the tables here, with the colours
of the quick-look legend (:data:`quicklook.COLOURS`), so that QGIS, ArcGIS and ``gdalinfo`` show
the same classes as ``quicklook.png``.

Their overviews are made here too (:func:`change_first_mode`): GDAL's ``MODE`` keeps the most
frequent code of a block; a 1-pixel-wide trench ties with the background in a 2x2 block (and
survives only on every other column) and is outvoted in every 4x4 block, so it vanished as soon
as a viewer zoomed out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .objects import CLASS_CODES
from .quicklook import COLOURS
from .scratch import release
from .threshold import NODATA


@dataclass(frozen=True)
class Category:
    """One code of a categorical raster."""

    code: int
    name: str
    rgb: tuple[int, int, int]
    meaning: str


@dataclass(frozen=True)
class Legend:
    """The codes of one categorical output raster and the words that go with them."""

    description: str
    categories: tuple[Category, ...]
    nodata: int = NODATA
    nodata_meaning: str = "not observable on either date (cloud, shadow, haze, no data) or outside the overlap"
    tags: dict[str, str] = field(default_factory=dict)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """``{code: (r, g, b, a)}`` for rasterio's ``write_colormap``; nodata is transparent.

        TIFF palettes hold no alpha: readers make only the nodata entry transparent.
        """
        cmap = {c.code: (*c.rgb, 255) for c in self.categories}
        cmap[self.nodata] = (0, 0, 0, 0)
        return cmap

    def names(self) -> list[str]:
        """Category names indexed by code (GDAL's list), codes without a class left empty."""
        out = [""] * (max(c.code for c in self.categories) + 1)
        for c in self.categories:
            out[c.code] = c.name
        return out

    def band_tags(self) -> dict[str, str]:
        """Metadata items of the band: what each code means, the nodata value, units."""
        items = {f"CLASS_{c.code}": "{}: {} (colour #{:02x}{:02x}{:02x})".format(c.name, c.meaning, *c.rgb)
                 for c in self.categories}
        items["NODATA"] = f"{self.nodata}: {self.nodata_meaning}"
        items["UNITS"] = "class code (categorical, no unit)"
        return {**items, **self.tags}


def _rgb(name: str) -> tuple[int, int, int]:
    b, g, r = COLOURS[name]  # the quick-look draws with OpenCV: BGR
    return (r, g, b)


#: "none" is white, a colour the legend does not use
NONE_RGB = (255, 255, 255)
#: change in ``change_mask.tif``: Okabe-Ito vermillion, apart from the four class colours
CHANGE_RGB = (213, 94, 0)

_MEANINGS = {
    "other": "changed, not one of the classes below",
    "trench": "long narrow change (trench, ditch, track, pipeline)",
    "hut": "compact new or removed structure (hut, tent, shelter)",
    "vessel": "boat or ship on water",
}

CLASS_LEGEND = Legend(
    description="change class",
    categories=(Category(0, "none", NONE_RGB, "no change"),
                *(Category(code, name, _rgb(name), _MEANINGS[name])
                  for name, code in sorted(CLASS_CODES.items(), key=lambda kv: kv[1]))),
)

MASK_LEGEND = Legend(
    description="change mask",
    categories=(Category(0, "no change", NONE_RGB, "no change"),
                Category(1, "change", CHANGE_RGB, "changed between the two dates")),
)

SCORE_DESCRIPTION = "change score"
SCORE_TAGS = {
    "UNITS": "dimensionless, 0 (no change) to 1 (certain change)",
    "MEANING": "per-pixel change score of the after image against the before image, on the before grid",
    "NODATA": "NaN: not observable on either date (cloud, shadow, haze, no data) or outside the overlap",
    "OVERVIEW_RESAMPLING": "AVERAGE",
}
CATEGORICAL_OVERVIEWS = ("CHANGE_FIRST_MODE: in each block, the most frequent change code where the block "
                         "holds any change, else the most frequent code; nodata only where the block is all nodata")


def overview_factors(height: int, width: int, block: int = 512) -> list[int]:
    """The decimation factors GDAL's COG driver would choose: 2, 4, ... until the overview fits in one block."""
    factors = []
    f = 1
    while height // f > block or width // f > block:
        f *= 2
        factors.append(f)
    return factors


def change_first_mode(array: np.ndarray, factor: int, nodata: int = NODATA, background: int = 0) -> np.ndarray:
    """Decimate a categorical (h, w) uint8 array by ``factor``, keeping thin changes.

    Parameters
    ----------
    array : (h, w) uint8 codes.
    factor : block side in pixels (>= 1).
    nodata : code ignored unless a block holds nothing else.
    background : the "no change" code, kept only where a block holds no other valid code.

    Returns
    -------
    (ceil(h / factor), ceil(w / factor)) uint8.

    Notes
    -----
    A plain mode counts the background, so a change covering less than half of a block (a
    1-pixel line in a 2x2 block, or any line thinner than ``factor / 2``) is dropped. Here the
    background loses to any change code in the block; among change codes the most frequent wins,
    ties to the lowest code. Each level is made from full resolution, so the result does not
    depend on the other levels.
    """
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"array must be (h, w) uint8, got {array.shape} {array.dtype}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    h, w = array.shape
    oh, ow = -(-h // factor), -(-w // factor)
    # by strips of whole blocks (each block's code depends on that block only), so a large array,
    # or a memory map, is gone through a strip at a time
    rows = max(1, (4 * 2**20) // max(1, ow * factor * factor)) * factor
    codes = _change_codes(array, rows, nodata, background)
    out = np.empty((oh, ow), dtype=np.uint8)
    for r in range(0, h, rows):
        out[r // factor:(r + rows) // factor] = _change_first_strip(np.asarray(array[r:r + rows]), factor, codes,
                                                                    nodata, background)
        release(array)
    return out


def _change_first_strip(array: np.ndarray, factor: int, codes: list[int], nodata: int, background: int) -> np.ndarray:
    """:func:`change_first_mode` of rows of whole blocks (the last strip may end inside one)."""
    h, w = array.shape
    oh, ow = -(-h // factor), -(-w // factor)
    padded = np.full((oh * factor, ow * factor), nodata, dtype=np.uint8)
    padded[:h, :w] = array
    blocks = padded.reshape(oh, factor, ow, factor)
    counts = {v: (blocks == v).sum(axis=(1, 3), dtype=np.int64) for v in (background, *codes)}
    return _change_first_of_counts(counts, codes, nodata, background)


def _change_codes(array: np.ndarray, rows: int, nodata: int, background: int) -> list[int]:
    """The change codes ``array`` holds (neither nodata nor background), ascending; read ``rows`` at a time."""
    present = np.zeros(256, bool)
    for r in range(0, array.shape[0], rows):
        present[np.asarray(array[r:r + rows]).ravel()] = True
        release(array)
    return [c for c in np.flatnonzero(present).tolist() if c not in (nodata, background)]


def change_first_modes(array: np.ndarray, factors: list[int], nodata: int = NODATA,
                       background: int = 0) -> dict[int, np.ndarray]:
    """:func:`change_first_mode` of ``array`` for each of ``factors`` (powers of two), from one pass.

    The same arrays as one call per factor: each level's code still follows from the counts of
    each code over its full-resolution block, but the counts of a block of ``2f`` are summed from
    the four blocks of ``f`` under it, instead of counted again from the full resolution.
    """
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"array must be (h, w) uint8, got {array.shape} {array.dtype}")
    wanted = sorted(set(factors))
    if not wanted:
        return {}
    if any(f < 1 or f & (f - 1) for f in wanted):
        raise ValueError(f"factors must be powers of two, got {factors}")
    h, w = array.shape
    top = wanted[-1]
    rows = max(1, (4 * 2**20) // max(1, w)) // top * top or top  # strips of whole blocks of every level
    codes = _change_codes(array, rows, nodata, background)
    outs = {f: np.empty((-(-h // f), -(-w // f)), np.uint8) for f in wanted}
    for r in range(0, h, rows):
        part = np.asarray(array[r:r + rows])
        counts = {v: (part == v).astype(np.int32) for v in (background, *codes)}
        release(array)
        f = 1
        for target in wanted:
            while f < target:
                counts = {v: _sum_2x2(n) for v, n in counts.items()}
                f *= 2
            outs[target][r // target:r // target + counts[background].shape[0]] = \
                _change_first_of_counts(counts, codes, nodata, background)
    return outs


def _sum_2x2(n: np.ndarray) -> np.ndarray:
    """Counts of 2 x 2 blocks (a partial block at the end sums what it has)."""
    h, w = n.shape
    if h % 2 or w % 2:
        padded = np.zeros((h + h % 2, w + w % 2), n.dtype)
        padded[:h, :w] = n
        n = padded
    return n[0::2, 0::2] + n[0::2, 1::2] + n[1::2, 0::2] + n[1::2, 1::2]


def _change_first_of_counts(counts: dict[int, np.ndarray], codes: list[int], nodata: int,
                            background: int) -> np.ndarray:
    """The code of each block from its counts, by :func:`change_first_mode`'s rule."""
    out = np.full(counts[background].shape, nodata, dtype=np.uint8)
    out[counts[background] > 0] = background
    best = np.zeros(out.shape, dtype=np.int64)
    for code in codes:  # ascending: a tie keeps the lower code
        n = counts[code]
        take = n > best
        out[take] = code
        best[take] = n[take]
    return out
