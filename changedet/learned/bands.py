"""The learned probability of a scene's windows, by bands of window rows, the encoder's stride-4 part
made once per pixel.

A window's read box (:func:`~changedet.learned.features.padded_box`) is 1.9 times its area at the
default 1024 px; the encoder's first part (stem and blocks 0..2, up to the stride-4 tap ``f4``) is
over half its time but reaches only 9 px. So that part runs on tiles of the scene with a halo of
:data:`~changedet.learned.features.S4_HALO_PX`, once per pixel: a band holds ``f4`` of both dates
(24 channels at stride 4, 12 bytes a pixel for the pair) over the read boxes of one row of windows,
and the rows the next band shares with it are carried over, not made again. The encoder's second
part and the head then run per window on its read box's crop of the band, as
:func:`~changedet.learned.score.window_probability` runs them on the read box: ``f4`` is the same
wherever the window's result can see it (the box's edge reaches 9 px into it, its result 170 px
less deep than the halo), so the numbers are the same.

Reading is the caller's (``inputs``), and so is the pool of workers (``map_fn``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import TypeVar

import numpy as np

from .features import (HEAD_STRIDE, S4_HALO_PX, STRIDE, TAP_CHANNELS, encode_from_s4, encode_s4, padded_box,
                       release_arena, taps_of)
from .head import Head
from .score import head_cells, taps_probability

T = TypeVar("T")
R = TypeVar("R")
Box = tuple[int, int, int, int]
#: a box (row, col, h, w) of the scene -> both dates' encoder inputs (3, h, w) float32 and their
#: validity (h, w) bool; outside the scene the inputs are 0 and invalid
Inputs = Callable[[Box], tuple[np.ndarray, np.ndarray, np.ndarray]]
#: ``map(fn, items)`` yielding results in the order of the items (e.g. a pool of workers)
MapFn = Callable[[Callable[[T], R], list[T]], Iterable[R]]
#: width of the tiles the encoder's first part runs on (at most; a multiple of 16)
TILE_PX = 1024
#: and their height (at most): about 50 MB of activations a tile (the arena holds one per worker),
#: at the cost of 12 % more work of that part for the tile's halo
TILE_ROWS = 256
#: windows are taken in vertical strips of this many columns (by their origin), each strip top to
#: bottom, so that a band's memory does not grow with the scene's width (12 B a pixel: about
#: 0.11 GB for 1024 px windows); a strip's edges are made twice (4 % more of that part at 10980²)
BAND_PX = 6144


@dataclass
class S4Band:
    """Both dates' stride-4 taps ``f4`` and the validity over a band of the scene's rows, by column tiles.

    Rows ``row0 .. row0 + rows`` and columns ``col0 + k * tile_px`` .. of tile ``k``; ``done``
    names the tiles made for these rows. The arrays are allocated once at the tallest band.
    """

    col0: int
    tile_px: int
    n_tiles: int
    max_rows: int
    row0: int = 0
    rows: int = 0
    done: set[int] = field(default_factory=set)
    f4: np.ndarray = field(init=False, repr=False)  # (2, 24, max_rows/4, n_tiles * tile_px/4) float32
    valid: np.ndarray = field(init=False, repr=False)  # (max_rows, n_tiles * tile_px) bool

    def __post_init__(self) -> None:
        w = self.n_tiles * self.tile_px
        self.f4 = np.zeros((2, TAP_CHANNELS[0], self.max_rows // HEAD_STRIDE, w // HEAD_STRIDE), np.float32)
        self.valid = np.zeros((self.max_rows, w), bool)

    def move_to(self, row0: int, rows: int) -> set[int]:
        """Make the band rows ``row0 .. row0 + rows``, keeping what it shares with the current rows:
        returns the tiles whose shared rows are kept (their rows from the old end on are to be made)."""
        end, new_end = self.row0 + self.rows, row0 + rows
        keep = self.done if self.rows and self.row0 <= row0 < end < new_end else set()
        if keep:
            s, n = row0 - self.row0, end - row0
            self.valid[:n] = self.valid[s:s + n].copy()
            q, m = s // HEAD_STRIDE, n // HEAD_STRIDE
            self.f4[:, :, :m] = self.f4[:, :, q:q + m].copy()
        self.row0, self.rows, self.done = row0, rows, set()
        return set(keep)

    def tile_cols(self, k: int) -> tuple[int, int]:
        """Scene columns of tile ``k`` (start, end)."""
        c0 = self.col0 + k * self.tile_px
        return c0, c0 + self.tile_px

    def tiles_of(self, box: Box) -> range:
        """The tiles holding columns of ``box`` (row, col, h, w)."""
        return range((box[1] - self.col0) // self.tile_px, -(-(box[1] + box[3] - self.col0) // self.tile_px))

    def put(self, k: int, r0: int, f4b: np.ndarray, f4a: np.ndarray, valid: np.ndarray) -> None:
        """Store tile ``k``'s rows from scene row ``r0``."""
        i, j = r0 - self.row0, k * self.tile_px
        h = valid.shape[0]
        self.valid[i:i + h, j:j + self.tile_px] = valid
        q, k4 = i // HEAD_STRIDE, j // HEAD_STRIDE
        self.f4[0, :, q:q + h // HEAD_STRIDE, k4:k4 + self.tile_px // HEAD_STRIDE] = f4b
        self.f4[1, :, q:q + h // HEAD_STRIDE, k4:k4 + self.tile_px // HEAD_STRIDE] = f4a

    def crop(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Both dates' ``f4`` (24, h/4, w/4) of a read box in the band (views)."""
        r, c, h, w = box
        i, j = (r - self.row0) // HEAD_STRIDE, (c - self.col0) // HEAD_STRIDE
        return self.f4[0, :, i:i + h // HEAD_STRIDE, j:j + w // HEAD_STRIDE], \
            self.f4[1, :, i:i + h // HEAD_STRIDE, j:j + w // HEAD_STRIDE]

    def valid_of(self, box: Box) -> np.ndarray:
        r, c, h, w = box
        return self.valid[r - self.row0:r - self.row0 + h, c - self.col0:c - self.col0 + w]


def tile_s4(inputs: Inputs, box: Box, threads: int | None = None,
            arena: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``f4`` of both dates and the validity of ``box`` (row, col, h, w on the stride-16 grid), from
    the encoder's first part on the box grown by :data:`S4_HALO_PX`."""
    r, c, h, w = box
    m = S4_HALO_PX
    xb, xa, v = inputs((r - m, c - m, h + 2 * m, w + 2 * m))
    q = m // HEAD_STRIDE
    f4b = encode_s4(xb, threads, arena)[:, q:q + h // HEAD_STRIDE, q:q + w // HEAD_STRIDE]
    del xb
    f4a = encode_s4(xa, threads, arena)[:, q:q + h // HEAD_STRIDE, q:q + w // HEAD_STRIDE]
    return f4b, f4a, v[m:m + h, m:m + w]


def window_probabilities(boxes: list[Box], inputs: Inputs, head: Head, map_fn: MapFn,
                         post: Callable[[np.ndarray, np.ndarray], T], threads: int | None = None,
                         tile_px: int = TILE_PX, tile_rows: int = TILE_ROWS, band_px: int = BAND_PX,
                         arena: bool = True) -> Iterator[tuple[Box, T]]:
    """``(box, post(p, valid))`` for each window of ``boxes`` (row, col, h, w on the stride-16 grid
    of the model's windows): ``p`` the (h, w) float32 probability (0 where invalid), as
    :func:`~changedet.learned.score.window_probability` gives it on the window's read box.

    The windows come strip by strip (:data:`BAND_PX` columns), each strip row by row, left to
    right: a fixed order whatever ``map_fn``. Per row of a strip, the band's tiles and the windows
    go to ``map_fn`` as one list, each window after the tiles it needs (it waits for them), so the
    workers are not held back by a whole row of tiles; a window is two jobs, the encoder's second
    part on each date (:func:`_band_jobs`). Memory: a band of ``f4`` (12 bytes a pixel
    of a strip's read boxes' rows, about 0.11 GB for 1024 px windows) and a tile's or a window's
    encoder per worker; with ``arena`` (:func:`~changedet.learned.features.encode_s4`) that
    memory is kept until the last window, then given back.
    """
    if tile_px % STRIDE or tile_rows % STRIDE:
        raise ValueError(f"tile_px {tile_px} and tile_rows {tile_rows} must be multiples of {STRIDE}")
    if not boxes:
        return
    try:
        strips = sorted(set(b[1] // band_px for b in boxes))
        for k in strips:
            strip = sorted((b for b in boxes if b[1] // band_px == k), key=lambda b: (b[0], b[1]))
            yield from _by_bands(strip, inputs, head, map_fn, post, threads, tile_px, tile_rows, arena)
    finally:
        if arena:
            release_arena(threads)


def _by_bands(boxes: list[Box], inputs: Inputs, head: Head, map_fn: MapFn,
              post: Callable[[np.ndarray, np.ndarray], T], threads: int | None, tile_px: int, tile_rows: int,
              arena: bool) -> Iterator[tuple[Box, T]]:
    pboxes = [padded_box(b) for b in boxes]
    col0 = min(pc for _, pc, _, _ in pboxes)
    n_tiles, width = _split(max(pc + pw for _, pc, _, pw in pboxes) - col0, tile_px)
    band = S4Band(col0, width, n_tiles, max(ph for _, _, ph, _ in pboxes))
    for _, group in groupby(boxes, key=lambda b: b[0]):
        row = list(group)
        pr, _, ph, _ = padded_box(row[0])
        old_end = band.row0 + band.rows
        kept = band.move_to(pr, ph)
        jobs = _band_jobs(band, row, kept, old_end, tile_rows)
        ready = {job: threading.Event() for job in jobs if job[0] in ("tile", "before")}
        befores: dict[Box, tuple[np.ndarray, ...]] = {}

        def run(job: tuple[str, Box, tuple[Box, ...]]) -> T | None:
            kind, box, needs = job
            if kind == "tile":
                try:
                    band.put(band.tiles_of(box)[0], box[0], *tile_s4(inputs, box, threads, arena))
                finally:  # a failed tile is raised at its turn, before any window that waits for it
                    ready[job].set()
                return None
            for dep in needs:
                ready[("tile", dep, ())].wait()
            if kind == "before":
                try:
                    befores[box] = encode_from_s4(band.crop(padded_box(box))[0], threads, arena)
                finally:  # as a tile: its failure is raised before its window's
                    ready[job].set()
                return None
            fa = encode_from_s4(band.crop(padded_box(box))[1], threads, arena)
            ready[("before", box, needs)].wait()
            if box not in befores:
                raise RuntimeError(f"the before date's encoder failed on window {box}")
            return _window(band, box, befores.pop(box), fa, head, post)

        for job, out in zip(jobs, map_fn(run, jobs)):
            if job[0] == "window":
                yield job[1], out  # type: ignore[misc]


def _window(band: S4Band, box: Box, fb: tuple[np.ndarray, ...], fa: tuple[np.ndarray, ...], head: Head,
            post: Callable[[np.ndarray, np.ndarray], T]) -> T:
    """The head on a window from both dates' taps of its read box (:func:`encode_from_s4`)."""
    pbox = padded_box(box)
    r, c, h, w = box
    inner = (r - pbox[0], c - pbox[1], h, w)
    cells = head_cells(inner, (pbox[2] // HEAD_STRIDE, pbox[3] // HEAD_STRIDE))
    taps = taps_of(fb, fa, cells)
    p = taps_probability(taps, head, inner)
    v = band.valid_of(box)
    p[~v] = 0.0
    return post(p, v)


def _split(n: int, most: int) -> tuple[int, int]:
    """``n`` px in the fewest parts of at most ``most`` (rounded up to the stride-16 grid): (parts, side)."""
    parts = max(1, -(-n // most))
    side = -(-n // parts)
    return parts, -(-side // STRIDE) * STRIDE


Job = tuple[str, Box, tuple[Box, ...]]


def _band_jobs(band: S4Band, boxes: list[Box], kept: set[int], old_end: int, tile_rows: int) -> list[Job]:
    """The band's work in order: ``("tile", box, ())`` for the tiles it still has to make (every row
    of a new tile, the rows from ``old_end`` on of a kept one; at most ``tile_rows`` rows each), and
    for each window, after the tiles it needs, ``("before", box, tiles)`` (the encoder's second part
    on the before date) then ``("window", box, tiles)`` (on the after date, then the head): two jobs
    that two workers run at once, so that the last window of a row holds one worker for half as long
    while the other waits for the next row."""
    end = band.row0 + band.rows
    tiles: dict[int, list[Box]] = {}
    windows = []
    for box in boxes:
        need = band.tiles_of(padded_box(box))
        for k in need:
            if k not in tiles:
                start = old_end if k in kept else band.row0
                c0, _ = band.tile_cols(k)
                if end > start:
                    parts, side = _split(end - start, tile_rows)
                    tiles[k] = [(r, c0, min(side, end - r), band.tile_px) for r in range(start, end, side)]
                else:
                    tiles[k] = []
        windows.append((box, tuple(t for k in need for t in tiles[k]), max(need)))
    band.done = set(tiles)
    jobs: list[Job] = []
    made = -1
    for box, deps, last in windows:
        for k in range(made + 1, last + 1):
            jobs += [("tile", t, ()) for t in tiles.get(k, [])]
        made = max(made, last)
        jobs += [("before", box, deps), ("window", box, deps)]
    return jobs
