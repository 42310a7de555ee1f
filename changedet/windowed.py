"""Whole-scene mask operations done window by window, equal to the whole-array ones.

The decision stages work on masks and label images as large as the scene. Done on whole arrays,
each step holds a few bytes per pixel more (an int32 label image, a float32 distance, a bool
copy). These helpers take their sources as arrays that may be memory maps
(:mod:`changedet.scratch`), or as lazy views (:class:`Where`), and touch one window (with the halo
a step needs) at a time, releasing the maps' pages as they go, so a step's working set does not
grow with the scene.

Each helper gives what its whole-array counterpart gives (tests/test_windowed.py):

- :func:`label` numbers regions as ``cv2.connectedComponentsWithStats`` does (:mod:`changedet.labels`);
- :func:`near` is ``cv2.distanceTransform(1 - src, DIST_L2, 3) <= dist``: OpenCV's 3 x 3 chamfer
  distance is an integer shortest path, so within a halo longer than any path that short it is
  the same number;
- :func:`label_sums` is ``np.bincount(labels.ravel(), weights)`` for every label but the
  background, adding each region's pixels in the same (row-major) order.

The windows of a pass run on the threads :func:`changedet.parallel.window_threads` sets
(:func:`map_boxes`), results in window order; a window's result may be written into a whole-scene
array by its worker, as no two windows share a pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import cv2
import numpy as np

from . import labels as _labels
from .arrays import Box
from .arrays import iter_windows as windows  # noqa: F401 - the stages' name for it
from . import parallel, scratch

T = TypeVar("T")
#: weight of a straight step of OpenCV's 3 x 3 L2 chamfer distance (the shortest step)
CHAMFER_STEP = 0.955


class Where:
    """A lazy (h, w) bool view: ``fn(src[window])`` for each window asked for (no whole copy)."""

    def __init__(self, src: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.src = src
        self.fn = fn
        self.shape = src.shape[-2:]

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.fn(np.asarray(self.src[key]))
        scratch.release(self.src)
        return out


def equals(src: np.ndarray, value: int) -> Where:
    """``src == value`` as a lazy view."""
    return Where(src, lambda a: a == value)


def strips(shape: tuple[int, int], size: int) -> Iterator[tuple[int, int]]:
    """Full-width row strips (row0, row1) of about ``size`` x ``size`` pixels."""
    h, w = shape
    rows = max(1, (size * size) // max(1, w))
    for r in range(0, h, rows):
        yield r, min(h, r + rows)


def map_boxes(fn: Callable[[Box], T], shape: tuple[int, int], window_px: int) -> Iterator[tuple[Box, T]]:
    """``(box, fn(box))`` for every window of ``shape``, in window order, computed on the window
    threads (:func:`changedet.parallel.map_windows`)."""
    boxes = list(windows(shape, window_px))
    return zip(boxes, parallel.map_windows(fn, boxes))


def read(src: Any, box: Box, halo: int = 0) -> tuple[np.ndarray, Box]:
    """A window of ``src`` grown by ``halo`` and clipped to the grid, and the clipped box."""
    r, c, h, w = box
    H, W = src.shape[-2:]
    r0, c0, r1, c1 = max(0, r - halo), max(0, c - halo), min(H, r + h + halo), min(W, c + w + halo)
    out = np.asarray(src[r0:r1, c0:c1])
    scratch.release(src) if isinstance(src, np.ndarray) else None
    return out, (r0, c0, r1 - r0, c1 - c0)


def crop(arr: np.ndarray, box: Box, inner: Box) -> np.ndarray:
    """The part of ``arr`` (laid out on ``box``) that ``inner`` covers."""
    return arr[inner[0] - box[0]:inner[0] - box[0] + inner[2], inner[1] - box[1]:inner[1] - box[1] + inner[3]]


def near(src: Any, dist: float, window_px: int) -> Iterator[tuple[Box, np.ndarray]]:
    """Per window: pixels whose 3 x 3 L2 chamfer distance to a nonzero pixel of ``src`` is at most ``dist``.

    Equal to ``cv2.distanceTransform((src == 0).astype(np.uint8), cv2.DIST_L2, 3) <= dist`` on the
    whole grid. (bool windows)
    """
    return map_boxes(lambda box: near_box(src, dist, box), src.shape[-2:], window_px)


def near_box(src: Any, dist: float, box: Box) -> np.ndarray:
    """:func:`near` of one window ``box`` (bool), read with the halo the distance needs."""
    part, big = read(src, box, int(np.ceil(dist / CHAMFER_STEP)) + 2)
    zero = (part == 0).astype(np.uint8)
    if zero.all():
        return np.zeros(box[2:], bool)
    d = cv2.distanceTransform(zero, cv2.DIST_L2, 3)
    return crop(d, big, box) <= dist


def label(src: Any, window_px: int, scr: scratch.Scratch, value: int | None = None,
          connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the regions of ``src`` (nonzero, or equal to ``value``) and their stats, as OpenCV
    gives them (:func:`changedet.labels.label_windowed`)."""
    return _labels.label_windowed(src, window_px, scr, value, connectivity)


def apply(labels: np.ndarray, lut: np.ndarray, window_px: int) -> Iterator[tuple[Box, np.ndarray]]:
    """``lut[labels]`` window by window."""

    def one(box: Box) -> np.ndarray:
        r, c, h, w = box
        part = lut[np.asarray(labels[r:r + h, c:c + w])]
        scratch.release(labels)
        return part

    return map_boxes(one, labels.shape, window_px)


def label_pixels(labels: np.ndarray, window_px: int, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """The labelled pixels' labels (int32) and the values of ``others`` there, in row-major order."""
    parts: list[list[np.ndarray]] = [[] for _ in range(1 + len(others))]
    for r0, r1 in strips(labels.shape, window_px):
        lab = np.asarray(labels[r0:r1])
        sel = lab != 0
        parts[0].append(lab[sel])
        for k, o in enumerate(others):
            parts[k + 1].append(np.asarray(o[r0:r1])[sel])
        scratch.release(labels, *others)
    return tuple(np.concatenate(p) if p else np.zeros(0) for p in parts)


def label_sums(lab: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Per label 0..n-1, the sum of ``weights`` of :func:`label_pixels` (label 0: 0)."""
    return np.bincount(lab, weights=weights, minlength=n)


def fill(out: np.ndarray, parts: Iterator[tuple[Box, np.ndarray]]) -> np.ndarray:
    """Write windows into ``out`` (releasing a memory map's pages as it goes); returns ``out``."""
    for (r, c, h, w), part in parts:
        out[r:r + h, c:c + w] = part
        scratch.release(out)
    return out


def morphology(mask: Any, op: int, kernel: np.ndarray, passes: int, window_px: int,
               scr: scratch.Scratch) -> np.ndarray:
    """``cv2.morphologyEx(mask, op, kernel)`` (uint8) by windows with a halo of ``passes`` kernel
    radii (an opening or a closing is two passes): OpenCV's border leaves the scene's edge as the
    whole-array call does, and a window's own edge never reaches its core."""
    out = scr.zeros(mask.shape[-2:], np.uint8)
    halo = passes * (max(kernel.shape) // 2)

    def one(box: Box) -> None:
        part, big = read(mask, box, halo)
        r, c, h, w = box
        out[r:r + h, c:c + w] = crop(cv2.morphologyEx(part.astype(np.uint8), op, kernel), big, box)

    for _ in map_boxes(one, mask.shape[-2:], window_px):
        scratch.release(out)
    return out
