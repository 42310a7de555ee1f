"""Will a pair fit? The run's peak memory estimated from the grid's size, checked before any work.

A header can declare any size: a 116 kB GeoTIFF that says 100000 x 100000 pixels ran for minutes
before asking for a 9 GiB array. The output grid's size is known as soon as the pair is open, so
:func:`check_grid` refuses such a pair at once, with the numbers and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import LimitsConfig
from .errors import InputError

#: Peak resident memory of ``detect`` is base + bytes per pixel of the output grid (the whole-grid
#: uint8 and int32 products; windows and chips are bounded by ``processing.window_px``). Measured
#: with ``/usr/bin/time -v`` on synth camp scenes of 1024² to 4096² px: model off 224 MB + 39.8 B/px
#: (within 19 MB); with the learned stage, onnxruntime's working set sets the peak (1.28, 1.33, 1.35,
#: 1.52 GB at 1, 4, 9, 17 Mpx) until the later stages' outgrow it; at 10980² (121 Mpx) the run
#: peaked at 6.24 GB with one learned window (5.5 GB estimated before: too low), 6.59 GB with two
#: workers. The constants lie above every measured peak.
BASE_BYTES = 240 * 2**20
BYTES_PER_PX = 44
MODEL_PEAK_BYTES = 1300 * 2**20
MODEL_BYTES_PER_PX = 44
#: each worker past the first holds one more learned window (``model.window_px`` 1024 with its
#: halo; measured +0.8 to 1.0 GB at 2745² with two workers)
MODEL_WORKER_BYTES = 1024 * 2**20


def estimate_peak_bytes(n_px: int, model_enabled: bool, workers: int = 1) -> int:
    """Estimated peak resident memory, bytes, of a run over an output grid of ``n_px`` pixels with
    ``workers`` threads."""
    later = BASE_BYTES + BYTES_PER_PX * int(n_px)
    if not model_enabled:
        return later
    return max(later, MODEL_PEAK_BYTES + MODEL_BYTES_PER_PX * int(n_px)) + \
        max(0, workers - 1) * MODEL_WORKER_BYTES


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
    return f"{n / 2**30:.1f} GiB"


def check_grid(path: str | Path, height: int, width: int, limits: LimitsConfig, model_enabled: bool,
               available: int | None = None, workers: int = 1) -> None:
    """Raise :class:`InputError` when a grid of ``height`` x ``width`` is over a limit.

    Parameters
    ----------
    path : the reference image (``before``), named in the message.
    height, width : the output grid (the pair's overlap on ``before``'s grid), pixels.
    limits : ``max_megapixels`` and ``memory_fraction``.
    model_enabled : whether the learned stage runs (it has its own working set).
    available : bytes of memory available (default: :func:`available_memory_bytes`).
    workers : threads of the run (``processing.workers`` resolved).
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
    if limits.memory_fraction <= 0:
        return
    avail = available_memory_bytes() if available is None else available
    if avail is None:
        return
    need = estimate_peak_bytes(n_px, model_enabled, workers)
    allowed = limits.memory_fraction * avail
    if need > allowed:
        fits = [side for side in range(256, 200_000, 256) if estimate_peak_bytes(side * side, model_enabled, workers) <= allowed]
        side = fits[-1] if fits else 256
        raise InputError(f"{path}: the area to process is {size} and needs about {_gib(need)} of memory, "
                         f"{_gib(avail)} is available ({limits.memory_fraction:g} of it may be used); "
                         f"crop both images (e.g. gdal_translate -srcwin 0 0 {side} {side} in.tif crop.tif) "
                         "or raise limits.memory_fraction")
