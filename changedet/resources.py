"""Will a pair fit? The run's peak memory and temporary disk estimated from the grid's size,
checked before any work.

A header can declare any size: a 116 kB GeoTIFF that says 100000 x 100000 pixels ran for minutes
before asking for a 9 GiB array. The output grid's size is known as soon as the pair is open, so
:func:`check_grid` refuses such a pair at once, with the numbers and the fix. Memory hardly grows
with the grid (its whole-scene products are memory maps in the staging folder), so on a large
grid the disk beside ``--out`` is what runs out first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .config import LimitsConfig
from .errors import InputError

#: Peak resident memory of ``detect``: the stages run by windows over memory maps (issue 15), so it
#: does not grow with the grid's area, and whole-width strips are bounded in bytes
#: (:func:`changedet.io.strip_rows`), so hardly with its width. Measured peaks
#: (``benchmarks/stage_memory.py``, two workers) of the stages other than the learned one: 0.79 GB
#: at 2745², 1.00 at 5490², 1.12 at 10980², 1.14 at 1372 x 40000; BASE_BYTES + BYTES_PER_COLUMN *
#: width lies above each.
BASE_BYTES = 1200 * 2**20
BYTES_PER_COLUMN = 4 * 2**10
#: the learned stage's working set (onnxruntime, one window of ``model.window_px`` with its halo):
#: 1.11 to 1.57 GB with two workers at 2745², 5490², 10980² and 1372 x 40000 alike
MODEL_PEAK_BYTES = 1536 * 2**20
#: each worker past the first holds one more learned window
MODEL_WORKER_BYTES = 512 * 2**20
#: temporary disk of a run, bytes per pixel of the grid: the memory maps (summary.json
#: ``run.scratch_peak_mb``: 17.0 B/px at 2745² with every array mapped) and the float32 score
#: raster written before its COG (at most 4 B/px), with a margin
SCRATCH_BYTES_PER_PX = 24


def estimate_peak_bytes(n_px: int, model_enabled: bool, workers: int = 1, width: int | None = None) -> int:
    """Estimated peak resident memory, bytes, of a run over an output grid of ``n_px`` pixels,
    ``width`` columns (default: a square grid), with ``workers`` threads."""
    cols = int(width) if width is not None else int(round(int(n_px) ** 0.5))
    later = BASE_BYTES + BYTES_PER_COLUMN * cols
    if not model_enabled:
        return later
    return max(later, MODEL_PEAK_BYTES + max(0, workers - 1) * MODEL_WORKER_BYTES)


def estimate_scratch_bytes(n_px: int) -> int:
    """Estimated temporary disk, bytes, of a run over an output grid of ``n_px`` pixels (in the
    staging folder beside ``--out``)."""
    return SCRATCH_BYTES_PER_PX * int(n_px)


def free_disk_bytes(folder: str | Path) -> int | None:
    """Free space for this user on the file system of ``folder`` (or of its nearest existing
    parent); None when it cannot be told."""
    here = Path(folder).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return int(shutil.disk_usage(here).free)
    except OSError:
        return None


def available_memory_bytes() -> int | None:
    """Memory the run can have without swapping: Linux's MemAvailable, else free physical pages, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None  # not known on this system (Windows): only limits.max_megapixels applies


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_grid(path: str | Path, height: int, width: int, limits: LimitsConfig, model_enabled: bool,
               available: int | None = None, workers: int = 1, out_dir: str | Path | None = None,
               free_disk: int | None = None) -> None:
    """Raise :class:`InputError` when a grid of ``height`` x ``width`` is over a limit.

    Parameters
    ----------
    path : the reference image (``before``), named in the message.
    height, width : the output grid (the pair's overlap on ``before``'s grid), pixels.
    limits : ``max_megapixels``, ``memory_fraction`` and ``disk_fraction``.
    model_enabled : whether the learned stage runs (it has its own working set).
    available : bytes of memory available (default: :func:`available_memory_bytes`).
    workers : threads of the run (``processing.workers`` resolved).
    out_dir : the output folder (``--out``): the run's temporary files go beside it, and a disk too
        small is named by it; None skips the disk check (as ``limits.disk_fraction`` 0 does).
    free_disk : free bytes there (default: :func:`free_disk_bytes`).
    """
    n_px = height * width
    mpx = n_px / 1e6
    size = f"{width}x{height} pixels ({mpx:,.0f} Mpx)" if mpx >= 10 else f"{width}x{height} pixels ({mpx:.2f} Mpx)"
    most = limits.max_megapixels
    if most is not None and mpx > most:
        side = int((most * 1e6) ** 0.5)
        raise InputError(f"{path}: the area to process is {size}, over limits.max_megapixels={most:g}; "
                         f"crop both images (e.g. gdal_translate -srcwin 0 0 {side} {side} in.tif crop.tif) "
                         "or raise limits.max_megapixels")
    if limits.memory_fraction > 0:
        avail = available_memory_bytes() if available is None else available
        need = estimate_peak_bytes(n_px, model_enabled, workers, width)
        allowed = limits.memory_fraction * avail if avail is not None else None
        if allowed is not None and need > allowed:
            fits = [side for side in range(256, 200_000, 256)
                    if estimate_peak_bytes(side * side, model_enabled, workers) <= allowed]
            side = fits[-1] if fits else 256
            raise InputError(f"{path}: the area to process is {size} and needs about {_gib(need)} of memory, "
                             f"{_gib(avail)} is available ({limits.memory_fraction:g} of it may be used); "
                             f"crop both images (e.g. gdal_translate -srcwin 0 0 {side} {side} in.tif crop.tif) "
                             "or raise limits.memory_fraction")
    if out_dir is None or limits.disk_fraction <= 0:
        return
    free = free_disk_bytes(Path(out_dir).absolute().parent) if free_disk is None else free_disk
    disk = estimate_scratch_bytes(n_px)
    if free is not None and disk > limits.disk_fraction * free:
        side = max(16, int((limits.disk_fraction * free / SCRATCH_BYTES_PER_PX) ** 0.5))
        raise InputError(f"{out_dir}: the area to process is {size} and needs about {_gib(disk)} of temporary disk "
                         f"beside this output folder, {_gib(free)} is free there ({limits.disk_fraction:g} of it may "
                         f"be used); choose an --out on a larger disk, crop both images (e.g. gdal_translate -srcwin "
                         f"0 0 {side} {side} in.tif crop.tif) or set limits.disk_fraction=0")
