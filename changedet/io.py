"""Everything that touches files: open and validate rasters, put ``after`` on the
grid of ``before``, read windows, and write outputs atomically.

The stages (registration, radiometry, differencing, threshold, objects) never
import this module; :mod:`changedet.pipeline` composes the two.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from . import categories, parallel
from .arrays import Box, iter_windows
from .errors import ChangedetError, InputError, NoOverlapError, OutputError, OutputWriteError
from .stac import Input, acquisition_datetime, input_sha256, is_remote

log = logging.getLogger(__name__)

#: Windows are (row0, col0, height, width) tuples on the output grid.


@dataclass(frozen=True)
class RasterInfo:
    """What ``summary.json`` records of one input."""

    path: str
    sha256: str | None
    crs: str | None
    width: int
    height: int
    resolution: tuple[float, float]
    bands: int
    dtype: str
    datetime: str | None = None
    assets: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"assets": list(self.assets)} if self.assets else {}
        return {
            "path": self.path,
            "sha256": self.sha256,
            "crs": self.crs,
            "width": self.width,
            "height": self.height,
            "resolution": list(self.resolution),
            "bands": self.bands,
            "dtype": self.dtype,
            "datetime": self.datetime,
            **extra,
        }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def open_raster(path: str | Path, label: str | None = None) -> rasterio.DatasetReader:
    """Open a raster for reading, turning GDAL's failures into one clear :class:`InputError`.

    ``path`` is opened as given: a local file, a URL (``https://``, ``s3://``) or a GDAL ``/vsi…`` path,
    or a VRT document; ``label`` names it in messages (default: ``path``).
    """
    name = str(path)
    label = label or name
    remote = is_remote(name) or name.lstrip().startswith("<")
    if not remote:
        if not Path(name).exists():
            raise InputError(f"{label}: no such file; check the path")
        if Path(name).is_dir():
            raise InputError(f"{label}: is a folder, not a raster file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(name)
    except RasterioIOError as exc:
        if remote:
            why = " ".join(str(exc).split())[:200]
            raise InputError(f"{label}: cannot be opened ({why}); check the URL, the network and any "
                             "credentials (AWS_*, GS_*), or that it is a raster") from None
        raise InputError(
            f"{label}: not a raster GDAL can read (corrupt, or not an image); give a GeoTIFF, PNG, JPEG or other GDAL raster"
        ) from None
    path = label  # type: ignore[assignment]
    if ds.count == 0 or ds.width < 8 or ds.height < 8:
        ds.close()
        raise InputError(f"{path}: has no bands or is smaller than 8x8 pixels; give a real image")
    if any(str(dt).startswith("complex") for dt in ds.dtypes):
        dtype = ds.dtypes[0]
        ds.close()
        raise InputError(
            f"{path}: complex data ({dtype}) is not supported; convert it to amplitude first, e.g. "
            f"gdal_translate DERIVED_SUBDATASET:AMPLITUDE:{path} amplitude.tif "
            f"(or gdal_calc.py -A {path} --calc='abs(A)' --type=Float32 --outfile=amplitude.tif)"
        )
    return ds


#: drivers whose windowed reads decode far more than the window (JPEG 2000 code-blocks, whole PNG or
#: JPEG streams): reading a crop around each of thousands of objects from a Sentinel-2 JP2 took
#: about 0.3 s a crop. Such inputs are copied once to a local tiled GeoTIFF (:func:`local_copy`).
SLOW_WINDOW_DRIVERS = frozenset({"JP2OpenJPEG", "JPEG2000", "JP2ECW", "JP2KAK", "JP2MrSID", "ECW", "MrSID",
                                 "PNG", "JPEG", "GIF"})


#: local copies of slow-format inputs go to ``$TMPDIR/changedet-inputs-XXXX``
SCRATCH_PREFIX = "changedet-inputs-"


class _ScratchDir:
    """A temporary folder for local copies of inputs, removed on ``close``; marked with its owner."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{owner_token()}-"))
        try:
            mark_owner(self.path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def local_copy(ds: Any, folder: Path, name: str) -> rasterio.DatasetReader:
    """A tiled, lightly compressed GeoTIFF copy of ``ds`` in ``folder``, opened for reading.

    GDAL's CreateCopy keeps the bands, georeferencing, nodata, colour interpretation and masks.
    """
    dst = folder / f"{name}.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        rasterio.shutil.copy(ds, str(dst), driver="GTiff", TILED="YES", BLOCKXSIZE=256, BLOCKYSIZE=256,
                             COMPRESS="DEFLATE", ZLEVEL=1, BIGTIFF="IF_SAFER", NUM_THREADS="2")
        return rasterio.open(dst)


def is_georeferenced(ds: Any) -> bool:
    """True when the dataset has a CRS and a non-identity geotransform."""
    return ds.crs is not None and ds.transform != Affine.identity()


def data_band_indexes(ds: Any) -> list[int]:
    """1-based band indexes without alpha bands."""
    idx = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha]
    return idx or [1]


def as_input(path: str | Path | Input) -> Input:
    """An input as named: a path or URL is opened as the same string."""
    return path if isinstance(path, Input) else Input(str(path), str(path))


def raster_info(ds: Any, path: str | Path | Input, when: str | None | bool = False,
                sha256: str | None | bool = False) -> RasterInfo:
    """Describe an opened input for the run record (SHA-256 None for inputs that cannot be streamed).

    ``when`` is its acquisition time when already known (:attr:`PairSource.datetimes`), else read from ``ds``;
    ``sha256`` its hash when already known (made meanwhile, :class:`~changedet.parallel.Later`), else computed here.
    """
    inp = as_input(path)
    res = (float(abs(ds.transform.a)), float(abs(ds.transform.e))) if is_georeferenced(ds) else (1.0, 1.0)
    return RasterInfo(
        path=inp.name,
        sha256=input_sha256(inp.open_path) if sha256 is False else sha256,  # type: ignore[arg-type]
        crs=ds.crs.to_string() if ds.crs else None,
        width=ds.width,
        height=ds.height,
        resolution=res,
        bands=len(data_band_indexes(ds)),
        dtype=str(ds.dtypes[0]),
        datetime=acquisition_datetime(ds, inp) if when is False else when,  # type: ignore[arg-type]
        assets=inp.assets,
    )


def gsd_from_grid(crs: Any, transform: Affine, height: int) -> float | None:
    """Ground sample distance in metres of a georeferenced grid, None when unknown.

    A geographic CRS gets metres per degree at the grid's centre latitude.
    """
    if crs is None:
        return None
    px = math.sqrt(abs(transform.a * transform.e))
    if crs.is_projected:
        factor = crs.linear_units_factor[1] if hasattr(crs, "linear_units_factor") else 1.0
        return float(px * factor)
    lat = transform.f + transform.e * height / 2.0
    m_per_deg = 111_320.0 * math.sqrt(abs(math.cos(math.radians(lat))))
    return float(px * m_per_deg)


@dataclass
class PairSource:
    """``before`` and ``after`` opened, with ``after`` on ``before``'s grid.

    The output grid is the window of ``before`` that ``after`` overlaps.
    Read methods take boxes on that grid and may run past its edge; pixels
    outside it come back invalid.
    """

    before: Any
    after: Any
    grid_window: Window
    before_bands: list[int]
    after_bands: list[int]
    georeferenced: bool
    gsd_m: float
    warnings: list[str] = field(default_factory=list)
    paths: tuple[str, str] = ("before", "after")  # the files as the user named them, for messages
    datetimes: tuple[str | None, str | None] = (None, None)  # acquisition times, read from the files as opened
    _closers: list[Any] = field(default_factory=list)
    # rasterio dataset handles are not thread-safe: worker threads read each input through its own
    # lock (``after`` may be a warped view of its file, never of ``before``'s), so a read of one
    # input overlaps a read of the other
    _before_lock: Any = field(default_factory=threading.Lock, repr=False)
    _after_lock: Any = field(default_factory=threading.Lock, repr=False)
    # decimated reads made ahead (:meth:`decimate`), by (which, max_px), each handed out once
    _decimated: dict[tuple[str, int], Decimation] = field(default_factory=dict, repr=False)

    @property
    def height(self) -> int:
        return int(self.grid_window.height)

    @property
    def width(self) -> int:
        return int(self.grid_window.width)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def n_bands(self) -> int:
        return len(self.before_bands)

    @property
    def transform(self) -> Affine:
        return self.before.window_transform(self.grid_window)

    @property
    def crs(self) -> Any:
        return self.before.crs if self.georeferenced else None

    def close(self) -> None:
        for obj in reversed(self._closers):
            obj.close()
        self._closers.clear()

    def __enter__(self) -> PairSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_before(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Read a box of ``before``: (bands, h, w) float32 and a (h, w) bool validity mask."""
        with self._before_lock:
            return _read_box(self.before, self.before_bands, box, self.grid_window, self.paths[0])

    def read_after(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Read a box of ``after`` on the grid, before image-based registration."""
        with self._after_lock:
            return _read_box(self.after, self.after_bands, box, self.grid_window, self.paths[1])

    def read_decimated(self, which: str, max_px: int) -> Decimation:
        """Read the whole grid decimated so that its long side is at most ``max_px``.

        Returns (bands, h, w) float32, (h, w) bool validity and the decimation factor.
        Non-finite values (NaN, ±Inf) are invalid, as in :meth:`read_before`. A read made
        ahead by :meth:`decimate` is handed out (once) instead of reading again.

        Notes
        -----
        Read in strips of full-resolution rows, each shrunk by area averaging
        (``cv2.INTER_AREA``) over its valid pixels: 3-4 times faster than GDAL's ``average``
        resampling of the whole window, in memory bounded by one strip. A pixel of the
        result is valid where at least half of what it covers is.
        """
        kept = self._decimated.pop((which, max_px), None)
        if kept is not None:
            return kept
        return self._decimate(which, (max_px,))[max_px]

    def decimate(self, which: str, sizes: tuple[int, ...] | list[int]) -> dict[int, Decimation]:
        """:meth:`read_decimated` of ``which`` for every long side in ``sizes``, from one pass over
        the image, each kept for one later :meth:`read_decimated`; also returned by size."""
        out = self._decimate(which, tuple(sizes))
        for px, got in out.items():
            self._decimated[(which, px)] = got
        return out

    def _decimate(self, which: str, sizes: tuple[int, ...]) -> dict[int, Decimation]:
        read = self.read_before if which == "before" else self.read_after
        ds = self.before if which == "before" else self.after
        plans = {px: _DecimationPlan.of(self.height, self.width, px, self.n_bands) for px in dict.fromkeys(sizes)}
        if len(plans) == 1 or isinstance(ds, WarpedVRT):
            # a warped view's pixels may depend on the window read: each size reads its own strips
            return {px: _decimate_strips(read, plan, self.n_bands, self.width) for px, plan in plans.items()}
        return _decimate_together(read, plans, self.n_bands, self.width,
                                  min(ds.block_shapes[0][0], strip_rows(self.width, self.n_bands)))


#: a decimated read: (bands, h, w) float32, (h, w) bool validity, the decimation factor
Decimation = tuple[np.ndarray, np.ndarray, float]


@dataclass(frozen=True)
class _DecimationPlan:
    """How :meth:`PairSource.read_decimated` reads a grid: output shape and strips of full-resolution rows."""

    factor: float
    out_h: int
    out_w: int
    strips: tuple[tuple[int, int, int, int], ...]  # (out row 0, out row 1, full-res row 0, rows to read)

    @staticmethod
    def of(height: int, width: int, max_px: int, n_bands: int = 1) -> _DecimationPlan:
        factor = max(1.0, max(height, width) / float(max_px))
        out_h = max(1, int(round(height / factor)))
        out_w = max(1, int(round(width / factor)))
        rows_per_out = height / out_h
        step = max(1, int(strip_rows(width, n_bands) // rows_per_out))  # output rows per strip
        strips = []
        for o0 in range(0, out_h, step):
            o1 = min(out_h, o0 + step)
            r0, r1 = int(round(o0 * rows_per_out)), int(round(o1 * rows_per_out))
            strips.append((o0, o1, r0, max(1, r1 - r0)))
        return _DecimationPlan(factor, out_h, out_w, tuple(strips))


def _decimate_strips(read: Callable[[Box], tuple[np.ndarray, np.ndarray]], plan: _DecimationPlan,
                     n_bands: int, width: int) -> Decimation:
    """One decimated read, strip by strip (:meth:`PairSource.read_decimated`)."""
    data = np.zeros((n_bands, plan.out_h, plan.out_w), dtype=np.float32)
    valid = np.zeros((plan.out_h, plan.out_w), dtype=bool)
    for o0, o1, r0, n in plan.strips:
        strip, sv = read((r0, 0, n, width))
        data[:, o0:o1], valid[o0:o1] = _shrink(strip, sv, (o1 - o0, plan.out_w))
    return data, valid, plan.factor


def _decimate_together(read: Callable[[Box], tuple[np.ndarray, np.ndarray]], plans: dict[int, _DecimationPlan],
                       n_bands: int, width: int, chunk_rows: int) -> dict[int, Decimation]:
    """Several decimated reads from one pass over the rows: the same strips as
    :func:`_decimate_strips` takes, cut from rows read once, in runs that end on block rows."""
    out = {px: (np.zeros((n_bands, p.out_h, p.out_w), np.float32), np.zeros((p.out_h, p.out_w), bool))
           for px, p in plans.items()}
    events = sorted((r0 + n, px, o0, o1, r0) for px, p in plans.items() for o0, o1, r0, n in p.strips)
    first_needed = [0] * len(events)  # the lowest row any strip from here on needs
    low = None
    for i in range(len(events) - 1, -1, -1):
        low = events[i][4] if low is None else min(low, events[i][4])
        first_needed[i] = low
    height = max(e[0] for e in events)
    chunk_rows = max(1, chunk_rows)
    buf = np.zeros((n_bands, 0, width), np.float32)
    buf_valid = np.zeros((0, width), bool)
    lo = hi = 0
    for i, (end, px, o0, o1, r0) in enumerate(events):
        keep = first_needed[i]
        if keep > lo:  # rows no later strip needs
            buf, buf_valid = buf[:, keep - lo:], buf_valid[keep - lo:]
            lo = keep
        if end > hi:
            top = min(height, -(-end // chunk_rows) * chunk_rows)
            new, new_valid = read((hi, 0, top - hi, width))
            buf = np.concatenate([buf, new], axis=1)
            buf_valid = np.concatenate([buf_valid, new_valid], axis=0)
            hi = top
        data, valid = out[px]
        data[:, o0:o1], valid[o0:o1] = _shrink(buf[:, r0 - lo:end - lo], buf_valid[r0 - lo:end - lo],
                                               (o1 - o0, plans[px].out_w))
    return {px: (data, valid, plans[px].factor) for px, (data, valid) in out.items()}


@contextmanager
def reading(path: str | Path, ds: Any, window: Window) -> Iterator[None]:
    """Turn a read of ``window`` of ``ds`` that fails part-way (a truncated file, a corrupt tile) into
    an :class:`InputError` naming ``path`` and the rows of the damaged block.

    Such files open fine: GDAL only finds the damage when it decodes the blocks a read needs.
    """
    try:
        yield
    except RasterioError as exc:
        reason = _gdal_reason(exc)
        r0 = int(window.row_off)
        r1 = r0 + max(int(math.ceil(window.height)), 1) - 1
        block = _BLOCK.search(reason)
        src = getattr(ds, "src_dataset", ds)  # GDAL names the block of the file, not of a warped view
        if block and getattr(src, "block_shapes", None):
            bh = src.block_shapes[0][0]
            r0 = int(block.group(2)) * bh
            r1 = min(r0 + bh, src.height) - 1
        rows = f"row {r0}" if r0 == r1 else f"rows {r0}–{r1}"
        raise InputError(f"{path}: is damaged: reading {rows} failed ({reason}); re-download or re-export it") from None


#: GDAL's words for a block it could not decode: "IReadBlock failed at X offset 1, Y offset 2"
_BLOCK = re.compile(r"X offset (\d+), Y offset (\d+)")


def _gdal_reason(exc: BaseException) -> str:
    """GDAL's own words for a failed read, one line and without the file's name.

    rasterio's "Read failed. See previous exception for details." carries them in its cause.
    """
    seen = []
    cur: BaseException | None = exc
    while cur is not None and len(seen) < 4:
        text = " ".join(str(cur).split())
        if text and not text.startswith("Read failed"):
            seen.append(text)
        cur = cur.__cause__ or cur.__context__
    reason = seen[0] if seen else "read failed"
    reason = re.sub(r"^.*?, (band \d+: )", r"\1", reason)  # GDAL starts with the file's full path
    return reason if len(reason) <= 160 else reason[:157] + "..."


_DECIMATE_STRIP_PX = 512  # full-resolution rows read at a time by PairSource.read_decimated ...
_DECIMATE_STRIP_BYTES = 96 * 2**20  # ... and at most this much float32 of all bands: a wide scene reads fewer rows


def strip_rows(width: int, n_bands: int) -> int:
    """Full-resolution rows a whole-width strip read may hold: :data:`_DECIMATE_STRIP_PX`, fewer on
    a scene so wide that they would pass :data:`_DECIMATE_STRIP_BYTES` (memory flat in the width)."""
    return max(1, min(_DECIMATE_STRIP_PX, _DECIMATE_STRIP_BYTES // max(1, 4 * n_bands * width)))


def _shrink(data: np.ndarray, valid: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(bands, h, w) data averaged over its valid pixels onto ``shape`` (area averaging), and validity."""
    import cv2

    h, w = shape
    vf = valid.astype(np.float32)
    cover = cv2.resize(vf, (w, h), interpolation=cv2.INTER_AREA)
    out = np.empty((data.shape[0], h, w), dtype=np.float32)
    everywhere = bool(valid.all())  # x * 1 is x: the product is only needed where some pixel is invalid
    for k in range(data.shape[0]):
        out[k] = cv2.resize(data[k] if everywhere else data[k] * vf, (w, h), interpolation=cv2.INTER_AREA)
    ok = cover >= 0.5
    out = np.where(ok, out / np.maximum(cover, np.float32(1e-6)), np.float32(0)).astype(np.float32)
    return out, ok


def drop_nonfinite(data: np.ndarray, valid: np.ndarray) -> None:
    """NaN and ±Inf are nodata, declared or not: mark them invalid (in place) and set every band there to 0.

    Float products use NaN for nodata without always declaring it, and one band may hold a NaN the
    others do not; no stage downstream may see a non-finite value.
    """
    if data.dtype.kind != "f":
        return
    bad = ~np.isfinite(data).all(axis=0)
    if bad.any():
        valid &= ~bad
        data[:, bad] = 0


def _all_valid(ds: Any) -> bool:
    """Whether every band of ``ds`` has GDAL's all-valid mask (no nodata, mask band nor alpha)."""
    return all(list(flags) == [MaskFlags.all_valid] for flags in ds.mask_flag_enums)


def _read_box(ds: Any, bands: list[int], box: Box, grid: Window, path: str) -> tuple[np.ndarray, np.ndarray]:
    row0, col0, h, w = box
    r_lo, c_lo = max(row0, 0), max(col0, 0)
    r_hi, c_hi = min(row0 + h, int(grid.height)), min(col0 + w, int(grid.width))
    inside = (r_hi - r_lo, c_hi - c_lo) == (h, w)
    data = (np.empty if inside else np.zeros)((len(bands), h, w), dtype=np.float32)
    valid = np.zeros((h, w), dtype=bool)
    if r_hi <= r_lo or c_hi <= c_lo:
        return data, valid
    win = Window(grid.col_off + c_lo, grid.row_off + r_lo, c_hi - c_lo, r_hi - r_lo)
    sub = (slice(r_lo - row0, r_hi - row0), slice(c_lo - col0, c_hi - col0))
    with reading(path, ds, win):
        if inside:  # GDAL converts straight into the result: no copy
            ds.read(bands, window=win, out=data)
        else:
            data[(slice(None),) + sub] = ds.read(bands, window=win, out_dtype="float32")
        if _all_valid(ds):  # what dataset_mask gives then, without asking it: it costs as much as
            valid[sub] = True  # the read, and broke the block cache's reuse of the read's blocks
        else:
            valid[sub] = ds.dataset_mask(window=win) > 0
    if any(np.dtype(ds.dtypes[b - 1]).kind not in "uib" for b in bands):  # integers are always finite
        drop_nonfinite(data, valid)
    return data, valid


def _same_grid(a: Any, b: Any) -> bool:
    return a.crs == b.crs and a.transform.almost_equals(b.transform) and a.shape == b.shape


def _overlap_window(before: Any, after: Any, georef: bool) -> Window:
    if not georef:
        return Window(0, 0, min(before.width, after.width), min(before.height, after.height))
    left, bottom, right, top = transform_bounds(after.crs, before.crs, *after.bounds, densify_pts=21)
    b = before.bounds
    left, right = max(left, b.left), min(right, b.right)
    bottom, top = max(bottom, b.bottom), min(top, b.top)
    if right <= left or top <= bottom:
        raise NoOverlapError(
            f"{after.name}: does not overlap {before.name}; give two images of the same site"
        )
    win = rasterio.windows.from_bounds(left, bottom, right, top, transform=before.transform)
    win = win.round_offsets(op="ceil").round_lengths(op="floor")
    win = win.intersection(Window(0, 0, before.width, before.height))
    if win.width < 16 or win.height < 16:
        raise NoOverlapError(
            f"{after.name}: overlaps {before.name} by less than 16x16 pixels; give two images of the same site"
        )
    return win


def open_pair(before_path: str | Path | Input, after_path: str | Path | Input, gsd_m: float | None = None,
              check_size: Callable[[int, int], None] | None = None,
              decimate_px: tuple[int, ...] = (512,), threads: int = 2) -> PairSource:
    """Open both inputs, validate them and put ``after`` on ``before``'s grid.

    Parameters
    ----------
    before_path, after_path : any raster GDAL reads (a path or URL, kept as given), or an
        :class:`~changedet.stac.Input` resolved from a STAC Item. ``before`` is the reference grid.
    gsd_m : ground sample distance in metres; overrides the grid's (needed for
        images without georeferencing, where it defaults to 1 with a warning).
    check_size : called with the output grid's (height, width) as soon as it is known, before
        any read of image data; raises to refuse a pair too large to process.
    decimate_px : long sides of the decimated reads made ahead, in one pass over each image
        (:meth:`PairSource.decimate`), for the later stages (the coarse registration, the
        quick-look); the smallest also checks that each image shows something.
    threads : the two images are read (and decimated) at once on this many threads (1: in turn).
    """
    before_in, after_in = as_input(before_path), as_input(after_path)
    before_path, after_path = before_in.name, after_in.name
    before = open_raster(before_in.open_path, before_path)
    closers: list[Any] = [before]
    try:
        after = open_raster(after_in.open_path, after_path)
        closers.append(after)
        datetimes = (acquisition_datetime(before, before_in), acquisition_datetime(after, after_in))
        notes: list[str] = []
        geo_b, geo_a = is_georeferenced(before), is_georeferenced(after)
        if geo_b != geo_a:
            raise InputError(
                f"{after_path if geo_b else before_path}: has no georeferencing but the other image has; "
                "give both with or both without georeferencing"
            )
        georef = geo_b and geo_a
        if not georef:
            notes.append("inputs have no georeferencing: outputs are in pixel coordinates")
            if before.shape != after.shape:
                notes.append(
                    f"images differ in size ({before.width}x{before.height} vs {after.width}x{after.height}); "
                    "using their top-left-aligned overlap"
                )
        grid = _overlap_window(before, after, georef)
        if check_size is not None:
            check_size(int(grid.height), int(grid.width))
        # after the checks, so that their messages name the inputs
        if before.driver in SLOW_WINDOW_DRIVERS or after.driver in SLOW_WINDOW_DRIVERS:
            with _signals_held():  # a stop signal lands after the folder is marked and will be closed
                scratch = _ScratchDir()
                closers.insert(0, scratch)  # closed last, after the copies in it
            if before.driver in SLOW_WINDOW_DRIVERS:
                with reading(before_path, before, Window(0, 0, before.width, before.height)):
                    before = local_copy(before, scratch.path, "before")
                closers.append(before)
            if after.driver in SLOW_WINDOW_DRIVERS:
                with reading(after_path, after, Window(0, 0, after.width, after.height)):
                    after = local_copy(after, scratch.path, "after")
                closers.append(after)
        fills = []
        for name, path in (("before", before_path), ("after", after_path)):
            ds = before if name == "before" else after
            fill = undeclared_fill(ds, path)
            fills.append(fill)
            if fill is not None:
                notes.append(f"{path}: no nodata value is declared; the value {fill:g} that fills its corners "
                             "is taken as nodata (set one with gdal_edit.py -a_nodata to override)")
        if fills[0] is not None:
            before = WarpedVRT(before, src_nodata=fills[0], nodata=fills[0], resampling=Resampling.nearest)
            closers.append(before)
        after_src: Any = after
        if georef and not _same_grid(before, after):
            after_src = WarpedVRT(after, crs=before.crs, transform=before.transform, width=before.width,
                                  height=before.height, resampling=Resampling.cubic,
                                  **({"src_nodata": fills[1], "nodata": fills[1]} if fills[1] is not None else {}))
        elif fills[1] is not None:
            after_src = WarpedVRT(after, src_nodata=fills[1], nodata=fills[1], resampling=Resampling.nearest)
        if after_src is not after:
            closers.append(after_src)
        if georef and not _same_grid(before, after):
            notes.append("after was warped onto the grid of before (CRS, resolution or extent differ)")
        b_bands, a_bands = data_band_indexes(before), data_band_indexes(after)
        if len(b_bands) != len(a_bands):
            n = min(len(b_bands), len(a_bands))
            notes.append(f"band counts differ ({len(b_bands)} vs {len(a_bands)}); using the first {n}")
            b_bands, a_bands = b_bands[:n], a_bands[:n]
        gsd = gsd_m or (gsd_from_grid(before.crs, before.transform, before.height) if georef else None)
        if gsd is None:
            gsd = 1.0
            notes.append("no ground sample distance known: areas and lengths are in pixels (give --gsd)")
        pair = PairSource(before=before, after=after_src, grid_window=grid, before_bands=b_bands,
                          after_bands=a_bands, georeferenced=georef, gsd_m=float(gsd), warnings=notes,
                          paths=(str(before_path), str(after_path)), datetimes=datetimes, _closers=closers)
        # one pass over each image gives the decimated reads of the later stages and the check that
        # it shows something; only an image that looks empty there gets the exact check
        sizes = tuple(decimate_px) or (512,)
        inputs = (("before", b_bands, before_path), ("after", a_bands, after_path))
        # both reads are done before any check can raise: a read still running when the handler
        # below closes its image would crash the process
        made = list(parallel.ordered_map(lambda which: pair.decimate(which, sizes)[min(sizes)],
                                         [which for which, *_ in inputs], min(2, threads)))
        for (which, bands, path), (data, valid, _) in zip(inputs, made):
            if not shows_something(data, valid):
                check_observable(pair.read_before if which == "before" else pair.read_after, pair.shape,
                                 len(bands), path)
        return pair
    except RasterioError as exc:
        for obj in reversed(closers):
            obj.close()
        raise InputError(f"{after_path}: cannot be put on the grid of {before_path} ({exc}); check both files") from None
    except BaseException:
        for obj in reversed(closers):
            obj.close()
        raise


def undeclared_fill(ds: Any, path: str | Path) -> float | None:
    """The fill value of an image that declares no nodata: 0 in every band at two or more corners.

    Scenes cut from a larger product (a Sentinel-2 tile's corner, a rotated strip) are often padded
    with 0 without saying so; AROSICS guards against it the same way. None when the image declares
    nodata or a mask, has no georeferencing, or its corners hold data.
    """
    if ds.nodata is not None or any(MaskFlags.all_valid not in flags for flags in ds.mask_flag_enums):
        return None
    if not is_georeferenced(ds):  # the fill is then applied by a warped view, which needs a grid
        return None
    bands = data_band_indexes(ds)
    corners = [(0, 0), (0, ds.width - 1), (ds.height - 1, 0), (ds.height - 1, ds.width - 1)]
    zero = 0
    for r, c in corners:
        with reading(path, ds, Window(c, r, 1, 1)):
            zero += bool(np.all(ds.read(bands, window=Window(c, r, 1, 1)) == 0))
    return 0.0 if zero >= 2 else None


def shows_something(data: np.ndarray, valid: np.ndarray) -> bool:
    """Whether a decimated image (bands, h, w) has valid pixels whose values differ in some band.

    When it does, so does the image (an average of one value is that value), and
    :func:`check_observable` has nothing to say about it.
    """
    if not valid.any():
        return False
    values = data[:, valid]
    return bool(np.any(values.max(axis=1) != values.min(axis=1)))


def check_observable(read: Callable[[Box], tuple[np.ndarray, np.ndarray]], shape: tuple[int, int], n_bands: int,
                     path: str | Path) -> None:
    """Raise :class:`InputError` when an image holds nothing to see: every pixel nodata, or one value.

    ``read`` gives a box of the image ((bands, h, w) data and (h, w) validity, as
    :meth:`PairSource.read_before`) on a grid of ``shape``; the image is read by whole-width strips
    (:func:`strip_rows`, memory flat whatever its size), and the check ends at the first strip that
    shows two values. An exact check, where a decimated read only shows cells at least half valid.

    Not one read decimated by GDAL's ``average``: through the warped view that takes an undeclared
    fill as nodata, GDAL held much of the image for it (3.8 GB for a 40000² image).
    """
    h, w = shape
    rows = strip_rows(w, n_bands)
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    for r0 in range(0, h, rows):
        data, valid = read((r0, 0, min(rows, h - r0), w))
        if not valid.any():
            continue
        values = data[:, valid]
        s_lo, s_hi = values.min(axis=1), values.max(axis=1)
        lo = s_lo if lo is None else np.minimum(lo, s_lo)
        hi = s_hi if hi is None else np.maximum(hi, s_hi)
        if np.any(lo != hi):
            return
    if lo is None:
        raise InputError(f"{path}: nothing observable in it: every pixel is nodata; check the file or its nodata value")
    v = ", ".join(f"{x:g}" for x in lo)
    raise InputError(f"{path}: nothing observable in it: every pixel is ({v}); "
                     "check the file (an empty export or a failed download?)")


#: the most :func:`block_cache` raises GDAL's block cache to
BLOCK_CACHE_CAP_BYTES = 384 * 2**20


def rows_block_bytes(ds: Any, rows_px: int) -> int:
    """Bytes of GDAL blocks holding ``rows_px`` full-width rows of ``ds`` anywhere in it (every band)."""
    src = getattr(ds, "src_dataset", None)  # a warped view reads its source's blocks
    bh, bw = ds.block_shapes[0]
    itemsize = sum(np.dtype(dt).itemsize for dt in ds.dtypes)
    block_rows = -(-rows_px // max(bh, 1)) + 1  # a run of rows crosses one block row more when misaligned
    own = block_rows * -(-ds.width // max(bw, 1)) * bw * bh * itemsize
    return own + (rows_block_bytes(src, rows_px) if src is not None else 0)


@contextmanager
def block_cache(pair: PairSource, rows_px: int, cap_bytes: int = BLOCK_CACHE_CAP_BYTES) -> Iterator[None]:
    """GDAL's block cache raised, while in the block, to hold the blocks of ``rows_px`` full-width
    rows of both inputs (at most ``cap_bytes``); set back after, which lets the extra blocks go.

    A pass over the grid by windows with a halo reads each block row again for the next row of
    windows; a cache that holds one row of windows' blocks decodes each block once. With 512²
    windows, a 20 px halo and 512² tiles, the default 64 MB cache decoded a 5490² pair's blocks
    2.2 times each (2.9 times at 10980²), and reading took 2.8 times the CPU. Nothing changes
    when no cache size is set (GDAL's default, 5 % of the memory, is kept).
    """
    from rasterio.env import get_gdal_config, set_gdal_config

    old = get_gdal_config("GDAL_CACHEMAX", normalize=False)
    try:
        current = int(old) if old is not None else None
    except ValueError:  # a size in MB or "5%": left as it is
        current = None
    need = sum(rows_block_bytes(ds, rows_px) for ds in (pair.before, pair.after))
    need = min(cap_bytes, need + need // 4)  # a quarter more: nodata masks' blocks, lookahead
    if current is None or need <= current:
        yield
        return
    set_gdal_config("GDAL_CACHEMAX", need)
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", old, normalize=False)  # GDAL drops blocks past the old size


def grow(box: Box, halo: int) -> Box:
    """The box with ``halo`` pixels more on every side (may run past the grid)."""
    r, c, h, w = box
    return (r - halo, c - halo, h + 2 * halo, w + 2 * halo)


# --------------------------------------------------------------------------- output


# ---- who owns a staging or scratch folder: a dead run's are swept by the next run

#: the file in a staging or scratch folder that names the process writing it
OWNER_FILE = ".changedet-owner.json"
#: staging folders are ``.<output name>.changedet-XXXX`` beside the output folder
STAGING_MARK = ".changedet-"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/PID/stat`` (state first, start time at index 19); None when not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def owner_record() -> dict[str, Any]:
    """This process as the owner of a folder: pid, host, boot and the process start time.

    The start time (clock ticks after boot, from ``/proc/PID/stat``) tells a reused pid from the owner.
    """
    pid = os.getpid()
    stat = _proc_stat(pid)
    return {"tool": "changedet", "pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "pid_namespace": _pid_namespace(), "start_ticks": stat[19] if stat else None}


def owner_token() -> str:
    """This process in a folder's name: ``HOST.PID.START`` (HOST a hash of the host name and pid namespace).

    The name is set atomically when the folder is made, so even a run killed before it wrote its
    :data:`OWNER_FILE` can be judged dead by the next run.
    """
    rec = owner_record()
    host = hashlib.sha256(f"{rec['host']}\0{rec['pid_namespace']}".encode()).hexdigest()[:8]
    return f"{host}.{rec['pid']}.{rec['start_ticks'] or 0}"


_TOKEN = re.compile(r"(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.(?P<start>\d+)-[A-Za-z0-9_]+")


def _owner_from_name(name: str) -> dict[str, Any] | None:
    """The owner record a folder's name implies (:func:`owner_token`), or None when it has no token."""
    m = _TOKEN.search(name)
    if m is None or not m.group(0) == name[m.start():]:
        return None
    mine = owner_token().split(".")[0] == m["host"]
    return {"tool": "changedet", "pid": int(m["pid"]), "host": socket.gethostname() if mine else None,
            "boot_id": None, "pid_namespace": _pid_namespace() if mine else None,
            "start_ticks": m["start"] if m["start"] != "0" else None}


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while a folder is made and marked, so that none is left unmarked."""
    if not hasattr(signal, "pthread_sigmask"):  # not on Windows
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def mark_owner(folder: Path) -> None:
    """Write :data:`OWNER_FILE` into ``folder`` (atomically: a half-written record is never read)."""
    tmp = folder / f"{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(owner_record()) + "\n", encoding="utf-8")
    os.replace(tmp, folder / OWNER_FILE)


def owner_is_dead(record: dict[str, Any]) -> bool:
    """True only when the process that wrote ``record`` is known to have ended.

    Unknown cases (another host, another container's pids, no ``/proc`` and no permission to
    signal) count as alive.
    """
    if record.get("tool") != "changedet" or record.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot and record.get("boot_id") and record["boot_id"] != boot:
        return True  # the machine restarted since
    if record.get("pid_namespace") != _pid_namespace():
        return False  # its pid means another process here (a container sharing the folder)
    pid = int(record["pid"])
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] in ("Z", "X") or (record.get("start_ticks") is not None and stat[19] != record["start_ticks"])
    if Path("/proc/self/stat").exists():
        return True  # /proc works and the pid is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep_dead_runs(folder: Path, is_ours: Any) -> list[Path]:
    """Remove the folders in ``folder`` that ``is_ours(name)`` and whose owner record names a dead run.

    Without an owner record the owner is read from the folder's name (:func:`owner_token`); a
    folder with neither is left alone: it was not made by this changedet. Returns what was removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not is_ours(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            try:
                record = json.loads((Path(entry.path) / OWNER_FILE).read_text(encoding="utf-8"))
            except OSError:  # killed before it was marked: its name says who made it
                record = _owner_from_name(entry.name)
            dead = isinstance(record, dict) and owner_is_dead(record)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if dead:
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                log.info("removed %s, left by a changedet run that ended without cleaning up", entry.path)
                removed.append(Path(entry.path))
    return removed


def sweep_dead_scratch() -> list[Path]:
    """Remove the ``changedet-inputs-*`` copies that dead runs left in this process's TMPDIR."""
    return sweep_dead_runs(Path(tempfile.gettempdir()), lambda name: name.startswith(SCRATCH_PREFIX))


def sweep_dead_staging(folder: Path) -> list[Path]:
    """Remove the staging folders ``.NAME.changedet-*`` that dead runs left in ``folder``."""
    return sweep_dead_runs(folder, lambda name: name.startswith(".") and STAGING_MARK in name[1:])


# ---- what went wrong when the output side stopped taking files

#: errno -> (what, what to do)
WRITE_FAULTS = {
    errno.ENOSPC: ("the disk is full", "free some space or choose an --out on another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or choose an --out on another disk"),
    errno.EROFS: ("the disk is read-only", "choose an --out on a writable disk"),
    errno.EACCES: ("not permitted to write there", "choose an --out folder you can write to"),
    errno.EPERM: ("not permitted to write there", "choose an --out folder you can write to"),
}


def write_fault(folder: Path) -> int | None:
    """Why ``folder`` cannot take a new file (an errno of :data:`WRITE_FAULTS`), None when it can.

    GDAL, libtiff and OpenCV report a full disk as a failed write without the cause; asking the
    file system is what tells a full or read-only disk from a bug.
    """
    if hasattr(os, "statvfs"):
        try:
            st = os.statvfs(folder)
            if st.f_flag & os.ST_RDONLY:
                return errno.EROFS
            free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
            if st.f_blocks > 0 and free == 0:
                return errno.ENOSPC
        except OSError:
            pass
    probe = folder / f"{STAGING_MARK}probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return exc.errno if exc.errno in WRITE_FAULTS else None
    return None


def write_error(where: Path, code: int) -> OutputWriteError:
    """The one-line error for a write fault ``code`` (an errno) at the output ``where``."""
    what, fix = WRITE_FAULTS[code]
    return OutputWriteError(f"{where}: cannot write the outputs: {what} ({os.strerror(code)}); {fix}")


def as_write_error(exc: BaseException, folder: Path, where: Path) -> OutputWriteError | None:
    """``exc``, raised while writing into ``folder``, as a write fault at ``where``; None when it is not one.

    An ``OSError`` whose errno is a fault counts when it names no file or a file under ``folder``
    or ``where`` (a permission error from reading an input is not the output's fault); any other
    failure counts when ``folder`` itself cannot take a file (:func:`write_fault`).
    """
    if not isinstance(exc, Exception) or isinstance(exc, ChangedetError):
        return None
    if isinstance(exc, OSError) and exc.errno in WRITE_FAULTS:
        names = [Path(os.fsdecode(n)).absolute() for n in (exc.filename, exc.filename2) if n is not None]
        if not names or any(n.is_relative_to(folder.absolute()) or n.is_relative_to(where.absolute())
                            for n in names):
            return write_error(where, exc.errno)
    code = write_fault(folder)
    return write_error(where, code) if code is not None else None


_libtiff_quiet = False


def quiet_libtiff() -> None:
    """Stop libtiff printing raw lines (``_tiffWriteProc: No space left on device.``) on stderr.

    GDAL reports the same failures as exceptions; libtiff's global error handler (used for the
    writes of GDAL's file layer) prints straight to the C stderr, past Python and logging. Best
    effort: nothing happens when the library cannot be found.
    """
    global _libtiff_quiet
    if _libtiff_quiet:
        return
    _libtiff_quiet = True
    import ctypes

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return
    paths = {ln.split()[-1] for ln in maps if "/libtiff" in ln and ".so" in ln}
    for lib_path in sorted(paths):
        try:
            lib = ctypes.CDLL(lib_path)
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler(None)
        except (OSError, AttributeError):
            continue


class OutputStage:
    """A private folder beside the output folder; moved into place only when complete.

    Use as a context manager: on an exception the staging folder is removed and nothing is
    left behind; a failure caused by the output side (full, read-only, not permitted) becomes
    :class:`~changedet.errors.OutputWriteError`. The folder records its owner
    (:data:`OWNER_FILE`), so that a later run can remove it if this process dies without
    cleaning up (``kill -9``, power cut); such leftovers of dead runs beside ``out_dir`` are
    removed when a stage is made.

    Parameters
    ----------
    out_dir : the output folder.
    contract : every file name this kind of output may hold; on :meth:`commit` those of them
        in ``out_dir`` that the run did not produce are removed (a user's other files stay).
    """

    def __init__(self, out_dir: str | Path, contract: tuple[str, ...] | list[str] = ()) -> None:
        if str(out_dir) == "":
            raise OutputError("--out is empty; give the output folder")
        self.out_dir = Path(out_dir).absolute()
        self.contract = tuple(contract)
        anchor = self.out_dir.parent
        while not anchor.exists():
            anchor = anchor.parent
        if not anchor.is_dir():
            raise OutputError(f"{anchor}: is a file, not a folder; choose another --out")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputError(f"{self.out_dir}: exists and is not a folder; choose another --out")
        target = self.out_dir if self.out_dir.exists() else anchor
        if not os.access(target, os.W_OK | os.X_OK):
            raise write_error(target, write_fault(target) or errno.EACCES)
        self._anchor = anchor
        self.path: Path | None = None
        self._pending: list[parallel.Later[Any]] = []
        sweep_dead_staging(anchor)

    def __enter__(self) -> OutputStage:
        quiet_libtiff()
        try:
            with _signals_held():
                self.path = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}{STAGING_MARK}{owner_token()}-",
                                                  dir=self._anchor))
                mark_owner(self.path)
            umask = os.umask(0)
            os.umask(umask)
            self.path.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output folder should not be
        except OSError as exc:
            self._discard()
            if exc.errno in WRITE_FAULTS:
                raise write_error(self.out_dir, exc.errno) from None
            raise OutputError(f"{self._anchor}: cannot create files there ({exc.strerror}); choose another --out") from None
        except BaseException:
            self._discard()
            raise
        return self

    def file(self, name: str) -> Path:
        assert self.path is not None
        return self.path / name

    def later(self, fn: Callable[..., Any], *args: Any) -> parallel.Later[Any]:
        """``fn(*args)`` on a thread of its own (writing files of the stage while the run goes on);
        call the result to wait for it. The stage is never removed while such work still runs."""
        task = parallel.Later(fn, *args, name="changedet-write")
        self._pending.append(task)
        return task

    def commit(self, names: list[str]) -> None:
        """Move the finished files ``names`` into the output folder, in order.

        Into an existing folder the last name moves last, after the contract files this run
        did not produce were removed: put the run's record there, so that it never describes
        files of another run.
        """
        assert self.path is not None
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        if not self.out_dir.exists():
            for extra in self.path.iterdir():
                if extra.name not in names:
                    extra.unlink()
            os.rename(self.path, self.out_dir)
            self.path = None
            return
        for name in names[:-1]:
            os.replace(self.path / name, self.out_dir / name)
        for stale in set(self.contract) - set(names):
            if (self.out_dir / stale).is_file():
                (self.out_dir / stale).unlink()
        if names:
            os.replace(self.path / names[-1], self.out_dir / names[-1])

    def _discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        for task in self._pending:  # nothing writes into the folder while it is removed
            task.wait()
        err = None
        if exc is not None and self.path is not None:
            err = as_write_error(exc, self.path, self.out_dir)  # asked before the staged files are freed
        elif exc is not None:
            err = as_write_error(exc, self._anchor, self.out_dir)
        self._discard()
        if err is not None:
            raise err from exc


def _profile(height: int, width: int, dtype: str, nodata: float | None, crs: Any, transform: Affine) -> dict[str, Any]:
    prof: dict[str, Any] = {
        "driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": dtype,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
    }
    if nodata is not None:
        prof["nodata"] = nodata
    if crs is not None:
        prof["crs"] = crs
        prof["transform"] = transform
    return prof


class BandWriter:
    """A single-band tiled GeoTIFF written window by window (a scratch file).

    Not compressed: a scratch file is read back, updated window by window and copied into a
    COG, each time through the codec; the float score's deflate alone took about 20 ms a 512²
    window, on the thread that collects the windows.
    """

    def __init__(self, path: Path, shape: tuple[int, int], dtype: str, nodata: float | None,
                 crs: Any, transform: Affine) -> None:
        prof = _profile(shape[0], shape[1], dtype, nodata, crs, transform)
        prof.pop("compress")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._ds = rasterio.open(path, "w", **prof)
        self.path = path

    def write(self, box: Box, array: np.ndarray) -> None:
        r, c, h, w = box
        self._ds.write(array, 1, window=Window(c, r, w, h))

    def close(self) -> None:
        self._ds.close()


def write_band(path: Path, array: np.ndarray, nodata: float | None, crs: Any, transform: Affine,
               window_px: int = 2048) -> None:
    """Write a whole (h, w) array as a single-band tiled GeoTIFF scratch file (by windows: the
    array may be a memory map, whose pages are let go as they are written)."""
    from .scratch import release

    writer = BandWriter(path, array.shape, str(array.dtype), nodata, crs, transform)
    try:
        for box in iter_windows(array.shape, window_px):
            r, c, h, w = box
            writer.write(box, np.ascontiguousarray(array[r:r + h, c:c + w]))
            release(array)
    finally:
        writer.close()


def describe_band(path: Path, description: str, tags: dict[str, str], units: str | None = None,
                  colormap: dict[int, tuple[int, int, int, int]] | None = None) -> None:
    """Set the band description, metadata items, unit and colour table of a single-band GeoTIFF in place.

    GDAL keeps them in the file (the ``GDAL_METADATA`` TIFF tag); the COG copy carries them over.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "r+") as ds:
            ds.set_band_description(1, description)
            ds.update_tags(1, **tags)
            if units is not None:
                ds.set_band_unit(1, units)
            if colormap is not None:
                ds.write_colormap(1, colormap)


#: GDAL's raster attribute table field types and usages (gdal.h GDALRATFieldType, GDALRATFieldUsage)
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_GENERIC, _GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 0, 2, 5, 6, 7, 8, 9


def _rat_xml(legend: categories.Legend) -> ET.Element:
    """A thematic GDAL raster attribute table (the PAM/VRT XML form): value, name, colour, meaning."""
    rat = ET.Element("GDALRasterAttributeTable", tableType="thematic")
    fields = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
              ("Red", _GFT_INTEGER, _GFU_RED), ("Green", _GFT_INTEGER, _GFU_GREEN),
              ("Blue", _GFT_INTEGER, _GFU_BLUE), ("Alpha", _GFT_INTEGER, _GFU_ALPHA),
              ("Meaning", _GFT_STRING, _GFU_GENERIC)]
    for i, (name, ftype, usage) in enumerate(fields):
        fd = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(fd, "Name").text = name
        ET.SubElement(fd, "Type").text = str(ftype)
        ET.SubElement(fd, "Usage").text = str(usage)
    for i, c in enumerate(legend.categories):
        row = ET.SubElement(rat, "Row", index=str(i))
        for value in (c.code, c.name, *c.rgb, 255, c.meaning):
            ET.SubElement(row, "F").text = str(value)
    return rat


def categorical_pam(legend: categories.Legend) -> str:
    """The ``.aux.xml`` text of a categorical raster: colour table, category names, attribute table.

    GeoTIFF has no place for category names or an attribute table, and its palette always has
    256 entries, which QGIS lists as 256 legend classes; GDAL's sidecar (PAM) holds a palette of
    just the codes in use, and overrides the file's grey colour interpretation with ``Palette``.
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "ColorInterp").text = "Palette"
    table = ET.SubElement(band, "ColorTable")
    cmap = legend.colormap()
    for code in range(max(c.code for c in legend.categories) + 1):
        r, g, b, a = cmap.get(code, (0, 0, 0, 0))
        ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(a))
    names = ET.SubElement(band, "CategoryNames")
    for name in legend.names():
        ET.SubElement(names, "Category").text = name
    band.append(_rat_xml(legend))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_categorical_cog(dst: Path, array: np.ndarray, legend: categories.Legend, crs: Any,
                          transform: Affine) -> Path:
    """Write a (h, w) uint8 class array as a COG with a band description, metadata and overviews
    that keep thin changes, and its colour table, category names and raster attribute table in
    ``dst.aux.xml`` beside it (:func:`categorical_pam`; read by GDAL, QGIS and ArcGIS).

    The overviews are made by :func:`categories.change_first_modes` and handed to GDAL through a
    VRT's ``Overview`` elements (the COG driver uses a source's overviews when it has some).
    Scratch files are removed. Returns the path of the ``.aux.xml``.
    """
    stem = dst.with_suffix("")
    scratch = Path(f"{stem}.scratch.tif")
    vrt = Path(f"{stem}.scratch.vrt")
    made = [scratch, vrt]
    try:
        write_band(scratch, array, legend.nodata, crs, transform)
        describe_band(scratch, legend.description,
                      {**legend.band_tags(), "OVERVIEW_RESAMPLING": categories.CATEGORICAL_OVERVIEWS})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            rasterio.shutil.copy(str(scratch), str(vrt), driver="VRT")
        tree = ET.parse(vrt)
        band = tree.getroot().find("VRTRasterBand")
        assert band is not None
        factors = categories.overview_factors(*array.shape)
        levels = categories.change_first_modes(array, factors, legend.nodata)  # one pass for every level
        for f in factors:
            ovr = Path(f"{stem}.ovr{f}.scratch.tif")
            made.append(ovr)
            write_band(ovr, levels.pop(f), legend.nodata, None, Affine.identity())
            el = ET.SubElement(band, "Overview")
            ET.SubElement(el, "SourceFilename", relativeToVRT="1").text = ovr.name
            ET.SubElement(el, "SourceBand").text = "1"
        tree.write(vrt, encoding="utf-8")
        to_cog(vrt, dst, "mode")
    finally:
        for path in made:
            path.unlink(missing_ok=True)
    pam = Path(f"{dst}.aux.xml")
    pam.write_text(categorical_pam(legend), encoding="utf-8")
    return pam


def to_cog(src: Path, dst: Path, resampling: str = "nearest", predictor: str = "STANDARD") -> None:
    """Copy a scratch GeoTIFF to a Cloud-Optimized GeoTIFF (GDAL's COG driver).

    A source with overviews (a VRT's ``Overview`` elements) gives its own; ``resampling`` makes them otherwise.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        rasterio.shutil.copy(str(src), str(dst), driver="COG", COMPRESS="DEFLATE", PREDICTOR=predictor,
                             BLOCKSIZE="512", OVERVIEW_RESAMPLING=resampling.upper(), NUM_THREADS="ALL_CPUS")


def file_record(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex}}`` of the files ``names`` in ``folder``.

    ``summary.json`` keeps this of every other file of the run, so that a resumed batch can
    tell a complete output folder from one whose files were removed, truncated or replaced.
    """
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)} for name in names}


def files_match(folder: Path, record: Any) -> bool:
    """True when every file of a :func:`file_record` is in ``folder`` with that size and SHA-256."""
    if not isinstance(record, dict) or not record:
        return False
    for name, want in record.items():
        path = folder / name
        if Path(name).name != name or not isinstance(want, dict) or not path.is_file():
            return False
        if path.stat().st_size != want.get("bytes") or sha256_file(path) != want.get("sha256"):
            return False
    return True


def write_json(path: Path, obj: Any, compact: bool = False) -> None:
    """Write JSON with stable key order; ``compact``: no indentation nor spaces (large GeoJSON)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False) if compact else \
        json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
