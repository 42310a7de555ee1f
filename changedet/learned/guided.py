"""Edge-aware refinement of the learned probability: a guided filter steered by the classical score.

The learned probability comes from a stride-4 grid, so bilinear upsampling blurs it up to two
cells past an object's edge: a rim of false change around every new roof, and a band of it on
each side of a 2 m trench. The guided filter (He, Sun and Tang, "Guided Image Filtering", 2013)
fits, in every ``(2r+1)²`` window, the probability as a linear function of a full-resolution guide
-- here the classical change score, which has sharp edges -- and averages the fits. Where the
guide is flat the probability is only smoothed; where the guide has an edge the probability
follows it. ``eps`` sets how large a variation of the guide counts as an edge.

Pure and window-independent: box means are sums over a fixed window of float64 values in a fixed
order, and the image border is mirrored, so a window read with a halo of :func:`halo` pixels
gives the same numbers as the whole image.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def halo(radius: int) -> int:
    """Pixels of context a window needs on each side: two nested box means of ``radius``."""
    return 2 * radius + 1


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2r+1)²`` window around each pixel, the border mirrored (float64)."""
    k = 2 * radius + 1
    pad = np.pad(np.asarray(x, np.float64), radius, mode="reflect")
    rows = sliding_window_view(pad, k, axis=0).sum(axis=-1)
    return sliding_window_view(rows, k, axis=1).sum(axis=-1) / float(k * k)


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """``p`` filtered with ``guide`` (both (h, w), values about 0..1): float64, clipped to 0..1."""
    if radius <= 0 or min(p.shape) <= radius:
        return np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    g = np.asarray(guide, np.float64)
    q = np.asarray(p, np.float64)
    mg, mp = box_mean(g, radius), box_mean(q, radius)
    var = box_mean(g * g, radius) - mg * mg
    cov = box_mean(g * q, radius) - mg * mp
    a = cov / (np.maximum(var, 0.0) + eps)
    b = mp - a * mg
    return np.clip(box_mean(a, radius) * g + box_mean(b, radius), 0.0, 1.0)
