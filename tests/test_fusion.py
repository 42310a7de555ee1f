"""Fusion of the learned probability with the classical score: edge refinement and backed regions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet import threshold
from changedet.io import iter_windows
from changedet.learned import guided
from changedet.pipeline import backed_regions, refined_probability


def _quantised(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    q = rng.integers(0, threshold.LEVELS + 1, (h, w)).astype(np.uint8)
    q[rng.random((h, w)) < 0.05] = threshold.NODATA
    return q


@settings(max_examples=25, deadline=None)
@given(h=st.integers(3, 90), w=st.integers(3, 90), window=st.integers(8, 40), radius=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_windowed_refinement_equals_whole(h, w, window, radius, seed):
    rng = np.random.default_rng(seed)
    q, pq = _quantised(rng, h, w), _quantised(rng, h, w)
    whole = refined_probability(q, pq, (0, 0, h, w), radius, 1e-3)
    tiled = np.zeros((h, w), np.float32)
    for r, c, hh, ww in iter_windows((h, w), window):
        tiled[r:r + hh, c:c + ww] = refined_probability(q, pq, (r, c, hh, ww), radius, 1e-3)
    assert np.array_equal(whole, tiled)


def test_a_flat_guide_only_smooths_and_an_edge_is_followed():
    levels = threshold.LEVELS
    p = np.zeros((40, 40), np.int64)
    p[:, 16:] = levels
    blurred = np.rint(guided.box_sum(p, 3) / 49).astype(np.int64)  # what a stride-4 grid gives: a ramp across the edge
    flat = guided.guided_filter(np.zeros_like(p), blurred, 3, 1e-3, levels)
    np.testing.assert_allclose(flat, guided.box_sum(guided.box_sum(blurred, 3), 3) / (49 * 49 * levels), atol=1e-9)
    edge = np.zeros_like(p)
    edge[:, 20:] = levels  # the real edge, 4 px right of the probability's
    out = guided.guided_filter(edge, blurred, 3, 1e-3, levels)
    ramp = blurred / levels
    # the steepest step of the result is at the guide's edge, and left of it the probability drops
    assert (np.diff(out, axis=1).argmax(axis=1) == 19).all()
    assert np.diff(out, axis=1)[:, 19].min() > np.diff(ramp, axis=1).max()  # steeper than any input step
    assert (out[:, 17] < ramp[:, 17]).all()
    assert ((out >= 0) & (out <= 1)).all()


@settings(max_examples=40, deadline=None)
@given(h=st.integers(2, 60), w=st.integers(2, 60), radius=st.integers(0, 16), seed=st.integers(0, 10_000))
def test_box_sums_are_exact_and_the_filter_stays_in_range(h, w, radius, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, threshold.LEVELS + 1, (h, w))
    k = 2 * radius + 1
    pad = np.pad(x, radius, mode="reflect")
    direct = np.array([[pad[i:i + k, j:j + k].sum() for j in range(w)] for i in range(h)], np.float64)
    assert np.array_equal(guided.box_sum(x, radius), direct)
    # the fitted coefficients are largest where the guide is flat but for one level (worst case of
    # the fixed point): cut with its halo anywhere, the filter gives the same numbers as the whole
    g = np.full((h, w), int(rng.integers(0, threshold.LEVELS)))
    g[rng.integers(0, h), rng.integers(0, w)] += 1
    out = guided.guided_filter(g, x, radius, 1e-12, threshold.LEVELS)
    m = guided.halo(radius)
    r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
    r0, c0 = max(0, r - m), max(0, c - m)
    part = guided.guided_filter(g[r0:r + m + 1, c0:c + m + 1], x[r0:r + m + 1, c0:c + m + 1], radius, 1e-12,
                                threshold.LEVELS)
    assert part[r - r0, c - c0] == out[r, c]
    assert out.shape == (h, w) and ((out >= 0) & (out <= 1)).all()


def test_radius_zero_means_no_refinement():
    q = np.zeros((8, 8), np.uint8)
    assert refined_probability(q, q, (0, 0, 8, 8), 0, 1e-3) is None


def test_regions_the_model_does_not_back_are_dropped():
    mask = np.zeros((30, 30), np.uint8)
    mask[2:8, 2:8] = 1     # backed: probability 0.9
    mask[20:26, 20:26] = 1  # not backed: probability 0.1
    mask[0, 29] = threshold.NODATA
    pq = np.zeros((30, 30), np.uint8)
    pq[2:8, 2:8] = round(0.9 * threshold.LEVELS)
    pq[20:26, 20:26] = round(0.1 * threshold.LEVELS)
    out = backed_regions(mask, pq, 0.5)
    assert out[2:8, 2:8].all() and not out[20:26, 20:26].any()
    assert out[0, 29] == threshold.NODATA and mask[20, 20] == 1  # nodata kept, input untouched
    assert np.array_equal(backed_regions(mask, pq, 0.0), mask)


def test_an_unbacked_region_keeps_the_part_the_model_calls_changed():
    mask = np.zeros((20, 40), np.uint8)
    mask[5:15, 2:38] = 1  # one merged region, mostly low probability
    pq = np.zeros((20, 40), np.uint8)
    pq[5:15, 30:38] = threshold.LEVELS  # the model backs its right end only
    out = backed_regions(mask, pq, 0.5)
    assert out[5:15, 30:38].all() and not out[5:15, 2:30].any()
