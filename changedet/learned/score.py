"""The learned change probability of a pair of arrays: encoder, head, back to full resolution.

Pure functions on arrays. :func:`probability` scores a read box laid out by
:func:`~changedet.learned.features.padded_box` (origin and size on the stride-16 grid, a halo of
:data:`~changedet.learned.features.HALO_PX` around the window); the caller crops the halo.
:func:`whole_probability` scores a whole image the same way, so both give the same numbers.
:func:`window_probability` is what a windowed run calls: the head only on the window's cells.

The head's first layer runs on each encoder tap at its own stride and is upsampled after
(:meth:`~changedet.learned.head.Head.predict_taps`): the 352 features per cell of
:func:`features` are made only for training.
"""

from __future__ import annotations

import cv2
import numpy as np

from .features import (HALO_PX, HEAD_STRIDE, PairTaps, Stretch, encoder_input, padded_box, pair_features,
                       pair_taps)
from .head import Head


def features(before: np.ndarray, after: np.ndarray, valid: np.ndarray, stretch: Stretch,
             threads: int | None = None) -> np.ndarray:
    """Head input (N_FEATURES, h/4, w/4) of a read box; ``after`` already normalised to ``before``."""
    return pair_features(encoder_input(before, valid, stretch), encoder_input(after, valid, stretch), threads)


def upsample(p4: np.ndarray) -> np.ndarray:
    """Stride-4 probabilities -> full resolution (bilinear, pixel centres aligned)."""
    h, w = p4.shape
    return cv2.resize(p4, (w * HEAD_STRIDE, h * HEAD_STRIDE), interpolation=cv2.INTER_LINEAR)


def probability(before: np.ndarray, after: np.ndarray, valid: np.ndarray, stretch: Stretch, head: Head,
                threads: int | None = None) -> np.ndarray:
    """(h, w) float32 probability of relevant change for a read box; 0 where invalid."""
    return window_probability(encoder_input(before, valid, stretch), encoder_input(after, valid, stretch), valid,
                              head, (0, 0) + valid.shape, threads)


def window_probability(xb: np.ndarray, xa: np.ndarray, valid: np.ndarray, head: Head,
                       inner: tuple[int, int, int, int], threads: int | None = None) -> np.ndarray:
    """The probability of a read box from both dates' encoder inputs (:func:`encoder_input`; the
    caller may let the images go before the encoder runs), cropped to ``inner`` (row, col, h, w in
    the read box, row and col multiples of the head's stride), with the head run only on the cells
    that crop needs.

    The halo is context for the encoder only: the head runs on the window's cells and one more
    on each side (what bilinear upsampling reads), about half the cells of the read box. The
    numbers are those of the whole read box (:func:`probability`) cropped.
    """
    _check_inner(inner)
    taps = pair_taps(xb, xa, threads, head_cells(inner, (xb.shape[1] // HEAD_STRIDE, xb.shape[2] // HEAD_STRIDE)))
    del xb, xa
    r, c, h, w = inner
    p = taps_probability(taps, head, inner)
    p[~valid[r:r + h, c:c + w]] = 0.0
    return p


def _check_inner(inner: tuple[int, int, int, int]) -> None:
    r, c = inner[:2]
    if r % HEAD_STRIDE or c % HEAD_STRIDE:
        raise ValueError(f"window origin {(r, c)} is not on the head's grid of {HEAD_STRIDE} px")


def taps_probability(taps: PairTaps, head: Head, inner: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) float32 probability of the crop ``inner`` of a read box from its taps
    (:func:`~changedet.learned.features.pair_taps` or :func:`~changedet.learned.features.pair_taps_s4`),
    the head on that crop's cells only, validity not applied (:func:`window_probability`)."""
    _check_inner(inner)
    r, c, h, w = inner
    o0, o1 = taps.origin
    cells = head_cells(inner, (o0 + taps.shape[0], o1 + taps.shape[1]))
    p = upsample(head.predict_taps(taps.around(cells), cells).astype(np.float32))
    dr, dc = r - cells[0] * HEAD_STRIDE, c - cells[1] * HEAD_STRIDE
    return p[dr:dr + h, dc:dc + w]


def head_cells(inner: tuple[int, int, int, int], grid: tuple[int, int]) -> tuple[int, int, int, int]:
    """The block (row0, col0, row1, col1) of a read box's head grid (``grid`` cells) that the crop
    ``inner`` (row, col, h, w in pixels) needs: its cells and one more on each side, what bilinear
    upsampling reads."""
    r, c, h, w = inner
    gh, gw = grid
    return (max(0, r // HEAD_STRIDE - 1), max(0, c // HEAD_STRIDE - 1),
            min(gh, -(-(r + h) // HEAD_STRIDE) + 1), min(gw, -(-(c + w) // HEAD_STRIDE) + 1))


def pad_to_box(arr: np.ndarray, shape: tuple[int, int], fill: float | bool = 0) -> np.ndarray:
    """Place a whole (…, h, w) array in its :func:`padded_box`, ``fill`` outside."""
    r0, c0, ph, pw = padded_box((0, 0) + shape)
    out = np.full(arr.shape[:-2] + (ph, pw), fill, dtype=arr.dtype)
    out[..., -r0:-r0 + shape[0], -c0:-c0 + shape[1]] = arr
    return out


def whole_probability(before: np.ndarray, after: np.ndarray, valid: np.ndarray, stretch: Stretch, head: Head,
                      threads: int | None = None) -> np.ndarray:
    """(h, w) probability of a whole image held in memory (small images, training, tests)."""
    shape = valid.shape
    p = probability(pad_to_box(before, shape), pad_to_box(after, shape), pad_to_box(valid, shape, False),
                    stretch, head, threads)
    return p[HALO_PX:HALO_PX + shape[0], HALO_PX:HALO_PX + shape[1]]
