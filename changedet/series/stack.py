"""The registered stack of a series on disk: every date on the reference grid, radiometry matched.

Pass 1 (:func:`register_dates`) puts each date, one at a time, through ``detect``'s registration and
radiometric normalisation against the reference and writes it to a tiled float32 scratch raster
(NaN where it holds no data). Later passes read the same window of every date
(:meth:`Stack.read_window`), so memory follows the window, not the number of dates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from .. import differencing, radiometry, registration
from ..config import Config
from ..coregistration import estimate_registration, read_registered, rgb_bands
from ..arrays import band_roles
from ..io import Box, PairSource, _profile, iter_windows, open_pair, raster_info
from .. import observability
from ..observability import Scale
from ..pipeline import ProgressFn
from .dates import DatedImage

#: a date with less than this share of its chips clear keeps its radiometry as read (a fit would follow the cloud)
MIN_CLEAR_SHARE = 0.1


@dataclass(frozen=True)
class DateRecord:
    """What pass 1 found for one date."""

    image: DatedImage
    sha256: str
    shift_px: tuple[float, float]
    confidence: float
    applied: bool
    method: str
    band_sigma: tuple[float, ...]
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"shift_px": [round(v, 3) for v in self.shift_px], "confidence": round(self.confidence, 4),
                "applied": self.applied, "method": self.method}


@dataclass
class Stack:
    """The dates of a series on the reference grid, as scratch rasters in ``folder``."""

    folder: Path
    shape: tuple[int, int]
    n_bands: int
    crs: Any
    transform: Affine
    georeferenced: bool
    gsd_m: float
    records: list[DateRecord] = field(default_factory=list)
    scale: Scale | None = None
    rgb: tuple[int, int, int] | None = None
    samples: np.ndarray | None = None  # (bands, n) reference samples

    @property
    def n_dates(self) -> int:
        return len(self.records)

    def path(self, kind: str, i: int | None = None) -> Path:
        return self.folder / (f"{kind}.tif" if i is None else f"{kind}_{i:04d}.tif")

    def band_sigma(self) -> np.ndarray:
        """No-change noise per band: the median over dates of each pair's robust spread."""
        sig = [r.band_sigma for r in self.records if r.band_sigma]
        return np.median(np.asarray(sig, np.float64), axis=0) if sig else np.ones(self.n_bands)

    def read(self, kind: str, i: int | None, box: Box, bands: int = 1, fill: float = np.nan) -> np.ndarray:
        """A box of one scratch raster, ``fill`` past the grid's edge: (bands, h, w) float32 or (h, w)."""
        r, c, h, w = box
        out = np.full((bands, h, w), fill, np.float32)
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + h, self.shape[0]), min(c + w, self.shape[1])
        if r1 > r0 and c1 > c0:
            with rasterio.open(self.path(kind, i)) as ds:
                out[:, r0 - r:r1 - r, c0 - c:c1 - c] = ds.read(window=Window(c0, r0, c1 - c0, r1 - r0),
                                                               out_dtype="float32")
        return out if bands > 1 else out[0]

    def read_window(self, box: Box, dates: list[int] | None = None) -> np.ndarray:
        """The box of every date (or of ``dates``): (n, bands, h, w) float32, NaN where no data."""
        idx = range(self.n_dates) if dates is None else dates
        return np.stack([self.read("date", i, box, self.n_bands) if self.n_bands > 1
                         else self.read("date", i, box)[None] for i in idx])

    def writer(self, kind: str, i: int | None, count: int, dtype: str, nodata: float | None) -> Any:
        prof = _profile(self.shape[0], self.shape[1], dtype, nodata, self.crs if self.georeferenced else None,
                        self.transform)
        prof["count"] = count
        return rasterio.open(self.path(kind, i), "w", **prof)

    def window_px(self, n_dates: int, memory_mb: int, halo: int) -> int:
        """Window side so that ``n_dates`` windows of every band (float32, with ``halo``) fit ``memory_mb``.

        A few working copies are counted too (the median's sort, differences), hence the factor 4.
        """
        per_px = 4 * 4 * max(n_dates, 1) * self.n_bands
        side = int(math.sqrt(memory_mb * 2**20 / per_px)) - 2 * halo
        return int(min(max(side, 32), max(self.shape)))


def clear_samples(chips: list[tuple[np.ndarray, np.ndarray, np.ndarray]], scale: Scale | None,
                  cfg: Config, max_px: int = 250_000) -> tuple[np.ndarray, np.ndarray]:
    """Co-located (bands, n) samples of reference and date from the chips, without what either date
    hides (cloud, shadow, haze by ``detect``'s evidence tests): a mostly cloudy date must not set the fit."""
    sb, sa = [], []
    for b, a, v in chips:
        keep = v
        if scale is not None and cfg.observe.enabled:
            eb, ea = observability.evidence(b, a, v, scale, cfg.observe)
            keep = v & (eb == 0) & (ea == 0)
        sb.append(b[:, keep])
        sa.append(a[:, keep])
    b_all, a_all = np.concatenate(sb, axis=1), np.concatenate(sa, axis=1)
    step = max(1, b_all.shape[1] // max_px)
    return b_all[:, ::step], a_all[:, ::step]


def _register_one(pair: PairSource, img: DatedImage, is_ref: bool, cfg: Config, scale: Scale | None,
                  progress: ProgressFn) -> tuple[registration.Registration, radiometry.RadiometricFit,
                                                 tuple[float, ...], DateRecord]:
    sha = raster_info(pair.after, img.path).sha256
    if is_ref:
        reg = registration.identity()
        fit = radiometry.identity_fit(pair.n_bands)
        return reg, fit, (), DateRecord(img, sha, (0.0, 0.0), 1.0, True, "reference", ())
    reg = estimate_registration(pair, cfg.registration, progress, cfg.observe)
    applied = reg.method == "none" or reg.confidence >= cfg.registration.min_confidence
    notes = list(reg.warnings)
    if not applied:
        notes.append(f"registration confidence {reg.confidence:.2f} is below {cfg.registration.min_confidence}; "
                     "no correction applied")
    used = reg if applied else replace(reg, matrix=registration.translation(0, 0), field=None)
    boxes = registration.chip_boxes(pair.shape, cfg.registration.chip_px, cfg.registration.grid)
    chips = [read_registered(pair, used, box) for box in boxes]
    sb, sa = clear_samples(chips, scale, cfg)
    total = sum(int(v.sum()) for _, _, v in chips)
    if sb.shape[1] < max(1000, MIN_CLEAR_SHARE * total):
        notes.append("radiometry: too little of the date is clear of cloud and haze for a fit; left as read")
        fit = radiometry.identity_fit(pair.n_bands)
        sb = np.concatenate([b[:, v] for b, _, v in chips], axis=1)
        sa = np.concatenate([a[:, v] for _, a, v in chips], axis=1)
    else:
        fit = radiometry.fit_normalization(sb, sa, cfg.normalize)
    noise = differencing.fit_noise(sb, radiometry.apply(sa[:, None, :], fit, sb[:, None, :])[:, 0, :])
    rec = DateRecord(img, sha, tuple(float(v) for v in used.shift_px), float(reg.confidence), applied, reg.method,
                     tuple(noise.band_sigma), tuple(notes))
    return used, fit, tuple(noise.band_sigma), rec


def register_dates(images: list[DatedImage], ref: int, folder: Path, cfg: Config, gsd_m: float | None,
                   progress: ProgressFn) -> Stack:
    """Pass 1: every date registered and normalised onto the reference grid, written to ``folder``.

    The grid is the whole reference image; a date covering part of it is NaN elsewhere. A date that
    does not overlap the reference raises :class:`~changedet.errors.NoOverlapError` naming it.
    """
    stack: Stack | None = None
    ref_img = images[ref]
    records: dict[int, DateRecord] = {}
    order = [ref] + [i for i in range(len(images)) if i != ref]  # the reference first: its scale serves the rest
    for k, i in enumerate(order):
        img = images[i]
        with open_pair(ref_img.path, img.path, gsd_m) as pair:
            if stack is None:
                full = Window(0, 0, pair.before.width, pair.before.height)
                stack = Stack(folder, (pair.before.height, pair.before.width), pair.n_bands,
                              pair.crs, pair.before.window_transform(full), pair.georeferenced, pair.gsd_m)
                stack.rgb = rgb_bands(pair) if pair.n_bands >= 3 else None
            reg, fit, _, rec = _register_one(pair, img, i == ref, cfg, stack.scale, progress)
            _write_date(stack, pair, reg, fit, i, cfg.processing.window_px)
            if i == ref:
                stack.samples = _samples(stack, i)
                stack.scale = Scale.fit(stack.samples, stack.rgb, band_roles(stack.n_bands).nir, None)
            records[i] = rec
        progress("register", k + 1, len(images))
    assert stack is not None
    stack.records = [records[i] for i in range(len(images))]
    return stack


def _write_date(stack: Stack, pair: PairSource, reg: registration.Registration, fit: radiometry.RadiometricFit,
                i: int, window_px: int) -> None:
    """One date on the reference grid (NaN where it holds no data)."""
    r_off, c_off = int(pair.grid_window.row_off), int(pair.grid_window.col_off)
    with stack.writer("date", i, stack.n_bands, "float32", float("nan")) as ds:
        for r, c, h, w in iter_windows(stack.shape, window_px):
            b, a, v = read_registered(pair, reg, (r - r_off, c - c_off, h, w))
            a = radiometry.apply(a, fit, b)
            a = np.where(v[None], a, np.float32(np.nan)).astype(np.float32)
            ds.write(a, window=Window(c, r, w, h))


def _samples(stack: Stack, i: int, max_px: int = 200_000) -> np.ndarray:
    """Valid pixels (bands, n) of a date, decimated: the scene's band scale for observability and water."""
    with rasterio.open(stack.path("date", i)) as ds:
        f = max(1.0, math.sqrt(stack.shape[0] * stack.shape[1] / max_px))
        h, w = max(1, int(stack.shape[0] / f)), max(1, int(stack.shape[1] / f))
        data = ds.read(out_shape=(stack.n_bands, h, w), out_dtype="float32")
    flat = data.reshape(stack.n_bands, -1)
    return flat[:, np.isfinite(flat).all(axis=0)]
