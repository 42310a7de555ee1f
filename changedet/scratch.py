"""Whole-scene arrays that go to disk when the scene is large.

The per-window stages write their results into whole-scene uint8 (and int32) arrays. On a large
scene those arrays alone outgrow the machine, so :class:`Scratch` hands out an ordinary array while
an array's size is within ``processing.memory_budget_mb`` and a memory map (:class:`numpy.memmap`)
in the run's staging folder past it. The staging folder is removed on success and on failure
(:class:`~changedet.io.OutputStage`), so the maps never reach the output folder.

A memory map's pages still count as resident while they are touched; :func:`release` drops them
(the data stay in the file), so a pass that fills a map window by window keeps a bounded working set.
"""

from __future__ import annotations

import itertools
import mmap
import weakref
from pathlib import Path

import numpy as np
import numpy.typing as npt


class Scratch:
    """An allocator of whole-scene arrays: in memory up to ``budget_bytes`` each, memory-mapped past it.

    Parameters
    ----------
    folder : where the maps are made (the run's staging folder); ``None`` keeps every array in memory.
    budget_bytes : largest array kept in memory; ``None`` keeps every array in memory.
    """

    def __init__(self, folder: str | Path | None, budget_bytes: int | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.budget_bytes = budget_bytes
        self._count = itertools.count()
        self.mapped_bytes = 0  # disk held by the maps alive now
        self.peak_mapped_bytes = 0  # ... and at most during the run (the temporary disk a run needs)

    def _mapped(self, arr: np.ndarray, nbytes: int) -> None:
        """Count a new map's bytes while it lives."""
        self.mapped_bytes += nbytes
        self.peak_mapped_bytes = max(self.peak_mapped_bytes, self.mapped_bytes)
        weakref.finalize(arr, self._unmapped, nbytes)

    def _unmapped(self, nbytes: int) -> None:
        self.mapped_bytes -= nbytes

    def full(self, shape: tuple[int, ...], fill: int | float, dtype: npt.DTypeLike) -> np.ndarray:
        """An array of ``shape`` filled with ``fill`` (same contents whichever way it is held)."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if self.folder is None or self.budget_bytes is None or nbytes <= self.budget_bytes:
            return np.full(shape, fill, dtype=dt)
        path = self.folder / f"array{next(self._count)}.scratch.bin"
        arr = np.memmap(path, dtype=dt, mode="w+", shape=shape)  # a new file reads as zeros
        self._mapped(arr, nbytes)
        try:  # the map keeps the file: its disk and page cache go when the array does, unwritten
            path.unlink()
        except OSError:  # (not on every system: the staging folder's removal takes it then)
            pass
        if fill != 0:
            rows = max(1, (64 * 2**20) // max(1, nbytes // max(1, shape[0])))
            for r in range(0, shape[0], rows):
                arr[r:r + rows] = fill
            release(arr)
        return arr

    def copy(self, arr: np.ndarray) -> np.ndarray:
        """A copy of ``arr``, held as :meth:`full` would hold it."""
        if self.folder is None or self.budget_bytes is None or arr.nbytes <= self.budget_bytes:
            return np.array(arr, copy=True)
        out = self.zeros(arr.shape, arr.dtype)
        rows = max(1, (64 * 2**20) // max(1, arr.nbytes // max(1, arr.shape[0])))
        for r in range(0, arr.shape[0], rows):
            out[r:r + rows] = arr[r:r + rows]
        release(out)
        return out

    def zeros(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """An array of ``shape`` filled with zeros."""
        return self.full(shape, 0, dtype)


#: keeps every array in memory (stages called outside a run, tests)
IN_MEMORY = Scratch(None, None)


def is_mapped(arr: np.ndarray) -> bool:
    """Whether ``arr`` (or the array it views) is a memory map."""
    return isinstance(arr, np.memmap) or isinstance(getattr(arr, "base", None), mmap.mmap)


def release(*arrays: np.ndarray) -> None:
    """Let the system drop memory maps' resident pages; no-op for others.

    The maps are shared file mappings (:meth:`Scratch.full`): ``MADV_DONTNEED`` unmaps their pages
    from the process, and what was written stays in the file's page cache (the next read maps it
    again), which the system writes back when it likes. No ``msync``: on a 0.5 GB map it took
    about 45 ms a call (an fsync of the file), against 5 ms without, and the stages call this once a
    window. Where ``madvise`` is missing, the pages are written back and stay mapped.
    """
    for arr in arrays:
        mm = getattr(arr, "_mmap", None)
        if not isinstance(arr, np.memmap) or mm is None:
            continue
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)
        else:
            mm.flush()


def trim_heap() -> None:
    """Give the heap's freed memory back to the system (glibc's ``malloc_trim``; no-op elsewhere).

    After a stage of many windows on several threads, glibc keeps much of what they freed in its
    per-thread arenas, which counts as resident for the rest of the run.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return


#: blocks at least this large are mapped on their own and given back to the system when freed
LARGE_BLOCK_BYTES = 4 * 2**20
#: freed memory at the top of a heap is kept up to this much (for the next windows' small arrays)
HEAP_KEEP_BYTES = 256 * 2**20
_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -3, -1  # glibc's mallopt parameters


def return_large_blocks() -> None:
    """Have glibc map every block of :data:`LARGE_BLOCK_BYTES` or more on its own (``mallopt``;
    no-op elsewhere).

    By default glibc raises that threshold up to 32 MB as large blocks are freed, after which the
    windows' arrays come from its heaps, which fragment and keep what was freed: with two workers
    over learned windows, 0.15 GB more at the peak and 0.28 GB more kept after. The heaps' free top
    is kept up to :data:`HEAP_KEEP_BYTES`. Process-wide, and kept after the run.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)
        # and the heaps' free top kept up to this much: trimming it at glibc's default 128 kB (what a
        # fixed threshold also sets) made every window's small arrays fault in anew, 1.5x slower
        libc.mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP_BYTES)
    except (OSError, AttributeError):
        return
