"""Edge-aware refinement of the learned probability: a guided filter steered by the classical score.

The learned probability comes from a stride-4 grid, so bilinear upsampling blurs it up to two
cells past an object's edge: a rim of false change around every new roof, and a band of it on
each side of a 2 m trench. The guided filter (He, Sun and Tang, "Guided Image Filtering", 2013)
fits, in every ``(2r+1)²`` window, the probability as a linear function of a full-resolution guide
-- here the classical change score, which has sharp edges -- and averages the fits. Where the
guide is flat the probability is only smoothed; where the guide has an edge the probability
follows it. ``eps`` sets how large a variation of the guide counts as an edge.

Pure and window-independent, the image border mirrored, so a window read with a halo of
:func:`halo` pixels gives the same numbers as the whole image: every box sum is a sum of integers
(the quantised levels of both inputs, then the fitted coefficients in fixed point), exact in
float64 whatever order they are added in, so OpenCV's running-sum box filter can make them.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def halo(radius: int) -> int:
    """Pixels of context a window needs on each side: two nested box means of ``radius``."""
    return 2 * radius + 1


def box_sum(x: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the ``(2r+1)²`` window around each pixel, the border mirrored (numpy's ``reflect``).

    ``x`` holds integers (any dtype); the sums are float64, exact while they stay below 2**53.
    """
    k = 2 * radius + 1
    return cv2.boxFilter(np.asarray(x, np.float64), -1, (k, k), normalize=False, borderType=cv2.BORDER_REFLECT_101)


def _fixed_point(radius: int, levels: int) -> float:
    """The power of two the fitted coefficients are scaled by, the largest whose box sums stay exact.

    ``|a| = |cov| / (var + eps) <= 0.5 / sqrt(var)``, and a guide that is not flat over ``n`` pixels
    has ``var >= (n - 1) / (n levels)²``; ``|b| <= 1 + |a|``.
    """
    n = (2 * radius + 1) ** 2
    most = n * (2.0 + 0.5 * n * levels / math.sqrt(n - 1))
    return 2.0 ** math.floor(math.log2(2.0 ** 52 / most))


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float, levels: int) -> np.ndarray:
    """``p`` filtered with ``guide``: float64, clipped to 0..1.

    Parameters
    ----------
    guide, p : (h, w) integer levels ``0..levels``, the values ``level / levels``.
    radius : of the box windows; 0 returns ``p`` as values.
    eps : regularisation (> 0); a variance of the guide below it is no edge.
    levels : the level of the value 1.

    Notes
    -----
    Per window of ``n`` pixels with sums ``S`` of the levels, ``var = (n S_gg - S_g²) / (n levels)²``
    and ``cov = (n S_gp - S_g S_p) / (n levels)²`` (exact integers up to that division);
    ``a = cov / (var + eps)``, ``b = mean(p) - a mean(g)``, rounded to the fixed point of
    :func:`_fixed_point` (about 1e-10 at radius 4); the result is ``mean(a) g + mean(b)``
    (He, Sun and Tang 2013, algorithm 1).
    """
    q = np.asarray(p, np.float64)
    if radius <= 0 or min(q.shape) <= radius:
        return np.clip(q / levels, 0.0, 1.0)
    g = np.asarray(guide, np.float64)
    n = (2 * radius + 1) ** 2
    scale = float(n * levels)
    sg, sp = box_sum(g, radius), box_sum(q, radius)
    var = (n * box_sum(g * g, radius) - sg * sg) / (scale * scale)
    cov = (n * box_sum(g * q, radius) - sg * sp) / (scale * scale)
    a = cov / (np.maximum(var, 0.0) + eps)
    b = sp / scale - a * (sg / scale)
    fixed = _fixed_point(radius, levels)
    mean_a = box_sum(np.rint(a * fixed), radius) / (n * fixed)
    mean_b = box_sum(np.rint(b * fixed), radius) / (n * fixed)
    return np.clip(mean_a * (g / levels) + mean_b, 0.0, 1.0)
