"""Window-by-window mask operations equal their whole-array counterparts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet import scratch, windowed


def _blobs(shape: tuple[int, int], density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 2.0)
    return (noise > np.quantile(noise, 1 - density)).astype(np.uint8)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), density=st.floats(0.0, 0.6), dist=st.floats(0.5, 20.0),
       window=st.sampled_from([8, 16, 33]), seed=st.integers(0, 10_000))
def test_near_equals_the_whole_distance_transform(h, w, density, dist, window, seed):
    src = _blobs((h, w), density, seed) if density > 0 else np.zeros((h, w), np.uint8)
    whole = cv2.distanceTransform(1 - src, cv2.DIST_L2, 3) <= dist
    out = windowed.fill(np.zeros((h, w), bool), windowed.near(src, dist, window))
    np.testing.assert_array_equal(out, whole)


def test_near_reaches_across_windows_from_a_single_pixel():
    src = np.zeros((64, 64), np.uint8)
    src[31, 31] = 1
    whole = cv2.distanceTransform(1 - src, cv2.DIST_L2, 3) <= 12.5
    out = windowed.fill(np.zeros(src.shape, bool), windowed.near(src, 12.5, 8))
    np.testing.assert_array_equal(out, whole)
    assert out[31, 43] and not out[31, 45]


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), density=st.floats(0.01, 0.7), window=st.sampled_from([4, 10, 32]),
       seed=st.integers(0, 10_000))
def test_label_sums_equal_bincount_bit_for_bit(h, w, density, window, seed):
    mask = _blobs((h, w), density, seed)
    n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    weights = np.random.default_rng(seed).random((h, w)) * 1e3
    lab_px, w_px = windowed.label_pixels(labels, window, weights)
    got = windowed.label_sums(lab_px, w_px, n)
    want = np.bincount(labels.ravel(), weights=weights.ravel(), minlength=n)
    assert got.tobytes()[8:] == want.tobytes()[8:]  # every region's sum, to the bit (label 0 left out)


def test_label_and_apply_through_a_memory_map(tmp_path):
    mask = _blobs((120, 97), 0.3, 1)
    scr = scratch.Scratch(tmp_path, 0)
    labels, stats = windowed.label(windowed.equals(mask, 1), 32, scr)
    assert scratch.is_mapped(labels)
    n, want, want_stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    np.testing.assert_array_equal(np.asarray(labels), want)
    np.testing.assert_array_equal(stats[1:], want_stats[1:])
    keep = np.arange(n) % 2 == 1
    out = windowed.fill(np.zeros(mask.shape, bool), windowed.apply(labels, keep, 32))
    np.testing.assert_array_equal(out, keep[want])


@pytest.mark.parametrize("size", [1, 5, 50])
def test_strips_cover_the_rows_once(size):
    rows = [r for r0, r1 in windowed.strips((37, 11), size) for r in range(r0, r1)]
    assert rows == list(range(37))
