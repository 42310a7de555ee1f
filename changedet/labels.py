"""Connected-component labelling window by window, equal to labelling the whole mask at once.

Each window is labelled on its own (OpenCV, 8-connected); regions that touch across a window's
edge are joined by a union-find over the pairs of labels facing each other on the seams; the
joined regions are then numbered in the order OpenCV numbers them on the whole mask. The working
set is one window plus the seams, so the label image itself can live in a memory map
(:mod:`changedet.scratch`).

Notes
-----
OpenCV's default 8-connected labelling (Spaghetti, a 2 x 2 block-based scan; Bolelli et al. 2020)
numbers regions in the order of the first 2 x 2 block, in row-major block order, holding one of
their pixels. Windows start on even rows and columns, so each window's blocks are blocks of the
whole mask and that order can be rebuilt from the windows' own labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import parallel, scratch


@dataclass(frozen=True)
class _Window:
    """What labelling one window leaves for the joining: its labels' first blocks, boxes and areas,
    and the labels on its four edges (local numbering, 1..n)."""

    n: int  # labels in the window (its local labels are 1..n)
    first: np.ndarray  # (n,) int64
    boxes: np.ndarray  # (n, 4) int64 row_min, col_min, row_max, col_max on the grid
    areas: np.ndarray  # (n,) int64
    top: np.ndarray  # (ww,) int32
    bottom: np.ndarray
    left: np.ndarray  # (hh,) int32
    right: np.ndarray


def label_windowed(binary: np.ndarray, window_px: int, scr: scratch.Scratch = scratch.IN_MEMORY,
                   value: int | None = None, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Label the 8-connected regions of ``binary`` window by window.

    Parameters
    ----------
    binary : (h, w) array, nonzero (or equal to ``value`` when given) where a pixel belongs to a
        region; may be a memory map.
    window_px : a window holds about ``window_px``² pixels (:func:`_steps`).
    scr : allocator of the (h, w) int32 label image.
    value : the pixel value of regions (default: any nonzero value).
    connectivity : 8, or 4 (then the regions and their stats are OpenCV's, but not necessarily
        their numbering).

    Returns
    -------
    labels : (h, w) int32, 0 background, 1..n as ``cv2.connectedComponentsWithStats`` numbers them.
    stats : (n + 1, 5) int32, ``[left, top, width, height, area]`` per label, as OpenCV gives them.

    Notes
    -----
    Windows are labelled on the threads :func:`changedet.parallel.window_threads` sets, each into
    its part of the label image with its own numbering; the seams are joined from the windows'
    edges (kept aside, so the label image's columns are never read), and a last pass over the
    windows holding a region gives every label its final number. The result does not depend on
    the thread count.
    """
    h, w = binary.shape
    step = _steps((h, w), window_px)
    labels = scr.zeros((h, w), np.int32)
    bw = (w + 1) // 2
    boxes = [(r, c, min(step[0], h - r), min(step[1], w - c)) for r in range(0, h, step[0])
             for c in range(0, w, step[1])]

    def one(box: tuple[int, int, int, int]) -> _Window | None:
        r, c, hh, ww = box
        part = np.array(binary[r:r + hh, c:c + ww])
        if isinstance(binary, np.ndarray):
            scratch.release(binary)
        win = (part != 0 if value is None else part == value).astype(np.uint8)
        if not win.any():  # most windows of a change mask: no need to label them
            return None
        n, lab, st, _ = cv2.connectedComponentsWithStats(win, connectivity=connectivity, ltype=cv2.CV_32S)
        if n <= 1:
            return None
        labels[r:r + hh, c:c + ww] = lab  # each worker its own window: no two write the same pixels
        x, y, bwid, bhgt, area = (st[1:, k].astype(np.int64) for k in range(5))
        return _Window(n - 1, _first_blocks(lab, n, r, c, bw, connectivity),
                       np.column_stack([y + r, x + c, y + r + bhgt - 1, x + c + bwid - 1]), area,
                       lab[0].copy(), lab[-1].copy(), lab[:, 0].copy(), lab[:, -1].copy())

    wins: list[_Window | None] = []
    for got in parallel.map_windows(one, boxes):
        wins.append(got)
        scratch.release(labels)  # a memory map keeps only the windows in flight resident
    offsets = np.cumsum([0] + [0 if x is None else x.n for x in wins])
    total = int(offsets[-1])
    if total == 0:
        return labels, np.zeros((1, 5), np.int32)
    root = _join_seams(_edges(boxes, wins, offsets[:-1], (h, w), step), total, connectivity)
    held = [x for x in wins if x is not None]
    fb = np.concatenate([np.zeros(1, np.int64)] + [x.first for x in held])
    bx = np.concatenate([np.zeros((1, 4), np.int64)] + [x.boxes for x in held])
    ar = np.concatenate([np.zeros(1, np.int64)] + [x.areas for x in held])
    n_final = int(root.max()) + 1
    order_key = np.full(n_final, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(order_key, root[1:], fb[1:])
    rank = np.empty(n_final, np.int64)
    rank[np.argsort(order_key, kind="stable")] = np.arange(1, n_final + 1)
    lut = np.zeros(total + 1, np.int32)
    lut[1:] = rank[root[1:]]
    _renumber(labels, [(box, lut[off:off + x.n + 1]) for box, x, off in zip(boxes, wins, offsets) if x is not None])
    return labels, _stats(lut[1:], bx[1:], ar[1:], n_final, (h, w))


def _stats(dest: np.ndarray, boxes: np.ndarray, areas: np.ndarray, m: int, shape: tuple[int, int]) -> np.ndarray:
    """OpenCV's stats (``m`` rows, int32) of the final labels ``dest`` of the windows' regions
    (their ``boxes``: row_min, col_min, row_max, col_max, and ``areas``)."""
    h, w = shape
    # labels 1..m - 1; the class holding 0 ranked last, past them
    stats = np.zeros((m, 5), np.int64)
    rmin = np.full(m, np.iinfo(np.int64).max, np.int64)
    cmin = rmin.copy()
    rmax = np.full(m, -1, np.int64)
    cmax = rmax.copy()
    np.minimum.at(rmin, dest, boxes[:, 0])
    np.minimum.at(cmin, dest, boxes[:, 1])
    np.maximum.at(rmax, dest, boxes[:, 2])
    np.maximum.at(cmax, dest, boxes[:, 3])
    np.add.at(stats[:, 4], dest, areas)
    stats[1:, 0], stats[1:, 1] = cmin[1:], rmin[1:]
    stats[1:, 2], stats[1:, 3] = cmax[1:] - cmin[1:] + 1, rmax[1:] - rmin[1:] + 1
    stats[0] = (0, 0, w, h, h * w - int(stats[1:, 4].sum()))  # row 0 (background) is not OpenCV's bbox
    return stats.astype(np.int32)


#: a window of the labelling is up to this many times as wide as tall
WIDE = 4


def _steps(shape: tuple[int, int], window_px: int) -> tuple[int, int]:
    """Rows and columns (both even) of the labelling's windows: about ``window_px``² pixels, up to
    :data:`WIDE` times as wide as tall.

    A window's rows of int32 labels then span whole pages of a memory-mapped label image (2 kB
    rows of a 512 px window left each page to two windows, which faulted it in twice a pass): a
    third less time than square windows on a 10980² scene.
    """
    side = max(2, int(window_px) - int(window_px) % 2)
    cols = max(2, min(shape[1] + shape[1] % 2, WIDE * side))
    return max(2, (side * side // cols) // 2 * 2), cols


def _renumber(labels: np.ndarray, todo: list[tuple[tuple[int, int, int, int], np.ndarray]]) -> None:
    """Give each window's local labels their final numbers: ``lut[local]`` (``lut[0]`` becomes 0)."""

    def one(item: tuple[tuple[int, int, int, int], np.ndarray]) -> None:
        (r, c, hh, ww), lut = item
        lut = lut.copy()
        lut[0] = 0  # the slice starts at the previous window's last label
        labels[r:r + hh, c:c + ww] = lut[labels[r:r + hh, c:c + ww]]

    for _ in parallel.map_windows(one, todo):
        scratch.release(labels)


def _edges(boxes: list[tuple[int, int, int, int]], wins: list[_Window | None], offsets: np.ndarray,
           shape: tuple[int, int], step: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pairs of pixel lines facing each other across every seam, in provisional labels
    (a window's local label plus its offset), as the whole label image would show them."""
    h, w = shape
    cols = {x: (np.zeros(h, np.int32), np.zeros(h, np.int32)) for x in range(step[1], w, step[1])}
    rows = {y: (np.zeros(w, np.int32), np.zeros(w, np.int32)) for y in range(step[0], h, step[0])}
    for (r, c, hh, ww), win, off in zip(boxes, wins, offsets):
        if win is None:
            continue
        add = np.int32(off)
        for line, at, pos, span in ((win.left, c, 1, np.s_[r:r + hh]), (win.right, c + ww, 0, np.s_[r:r + hh])):
            if at in cols:
                cols[at][pos][span] = np.where(line > 0, line + add, 0)
        for line, at, pos, span in ((win.top, r, 1, np.s_[c:c + ww]), (win.bottom, r + hh, 0, np.s_[c:c + ww])):
            if at in rows:
                rows[at][pos][span] = np.where(line > 0, line + add, 0)
    return [*cols.values(), *rows.values()]


def _first_blocks(lab: np.ndarray, n: int, r: int, c: int, bw: int, connectivity: int) -> np.ndarray:
    """For labels 1..n-1 of a window at (``r``, ``c``) (even), the whole mask's row-major index of
    the first 2 x 2 block holding one of their pixels (``bw`` blocks a row).

    8-connected, the pixels of a 2 x 2 block all touch, so a block holds one label: its largest.
    The blocks are then 4 times fewer than the pixels, and the first of each label is where it
    first occurs in the blocks' order.
    """
    if connectivity != 8:
        rows, cols = np.nonzero(lab)
        key = ((rows + r) // 2).astype(np.int64) * bw + (cols + c) // 2
        blk = np.full(n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(blk, lab[rows, cols], key)
        return blk[1:]
    hh, ww = lab.shape
    if hh % 2 or ww % 2:
        padded = np.zeros((hh + hh % 2, ww + ww % 2), lab.dtype)
        padded[:hh, :ww] = lab
        lab = padded
    block = np.maximum(np.maximum(lab[0::2, 0::2], lab[0::2, 1::2]), np.maximum(lab[1::2, 0::2], lab[1::2, 1::2]))
    flat = block.ravel()
    nz = np.flatnonzero(flat)
    which, at = np.unique(flat[nz], return_index=True)  # the first occurrence of each label
    wb = block.shape[1]
    local = nz[at]
    blk = np.full(n, np.iinfo(np.int64).max, np.int64)
    blk[which] = (r // 2 + local // wb).astype(np.int64) * bw + c // 2 + local % wb
    return blk[1:]


def _seam_pairs(first: np.ndarray, second: np.ndarray,
                connectivity: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Labels of two adjacent pixel lines that touch (8-connected: straight or diagonal; 4: straight)."""
    n = len(first)
    a_parts, b_parts = [], []
    for d in ((-1, 0, 1) if connectivity == 8 else (0,)):
        fa = first[max(0, -d):n - max(0, d)]
        sb = second[max(0, d):n - max(0, -d)]
        ok = (fa > 0) & (sb > 0)
        a_parts.append(fa[ok])
        b_parts.append(sb[ok])
    return a_parts, b_parts


def _join_seams(seams: list[tuple[np.ndarray, np.ndarray]], n: int, connectivity: int = 8) -> np.ndarray:
    """Class of each provisional label (0..n) after joining labels that touch across window seams
    (``seams``: the two pixel lines on either side of each seam)."""
    a_parts, b_parts = [], []
    for first, second in seams:
        pa, pb = _seam_pairs(first, second, connectivity)
        a_parts += pa
        b_parts += pb
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n + 1, n + 1))
    _, cls = connected_components(graph, directed=False)
    return cls.astype(np.int64)
