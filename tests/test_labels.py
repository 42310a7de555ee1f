"""Windowed connected-component labelling equals OpenCV's labelling of the whole mask."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet import objects
from changedet.labels import label_windowed
from changedet.scratch import Scratch


def _whole(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, labels, stats, _ = cv2.connectedComponentsWithStats((mask != 0).astype(np.uint8), connectivity=8,
                                                           ltype=cv2.CV_32S)
    return labels, stats


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80), density=st.floats(0.02, 0.8), window=st.integers(2, 50),
       seed=st.integers(0, 2**32 - 1))
def test_windowed_labels_equal_whole_labels(h, w, density, window, seed):
    mask = (np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8)
    want, want_stats = _whole(mask)
    got, got_stats = label_windowed(mask, window)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_stats[1:], want_stats[1:])


@settings(max_examples=20, deadline=None)
@given(window=st.sampled_from([64, 96, 130]), seed=st.integers(0, 2**32 - 1))
def test_windowed_labels_of_blobs_crossing_many_seams(window, seed):
    """Large regions (snakes, rings, blobs) that cross several seams, on a non-square mask."""
    rng = np.random.default_rng(seed)
    mask = cv2.dilate((rng.random((300, 411)) < 0.004).astype(np.uint8), np.ones((15, 15), np.uint8))
    mask[rng.integers(0, 300), :] = 1
    mask[:, rng.integers(0, 411)] = 1 - mask[:, rng.integers(0, 411)]
    want, want_stats = _whole(mask)
    got, got_stats = label_windowed(mask, window)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_stats[1:], want_stats[1:])


def test_empty_and_full_masks():
    for mask in (np.zeros((37, 53), np.uint8), np.ones((37, 53), np.uint8)):
        want, _ = _whole(mask)
        got, stats = label_windowed(mask, 8)
        np.testing.assert_array_equal(got, want)
        assert len(stats) == int(want.max()) + 1


def test_components_by_window_into_a_memory_map_equal_whole(tmp_path):
    rng = np.random.default_rng(3)
    mask = (rng.random((200, 150)) < 0.3).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.05] = 255  # nodata is not a region
    want_labels, want = objects.components(mask)
    got_labels, got = objects.components(mask, 64, Scratch(tmp_path, 0))
    assert isinstance(got_labels, np.memmap)
    np.testing.assert_array_equal(got_labels, want_labels)
    assert got == want


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120), density=st.floats(0.0, 0.8), window=st.integers(2, 40),
       connectivity=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1))
def test_windows_labelled_on_threads_equal_one_thread(h, w, density, window, connectivity, seed):
    """The windows labelled on a pool (parallel.window_threads), in any order, give the same labels."""
    from changedet import parallel

    mask = (np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8)
    want, want_stats = label_windowed(mask, window, connectivity=connectivity)
    with parallel.window_threads(3):
        got, got_stats = label_windowed(mask, window, connectivity=connectivity)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_stats, want_stats)
    if connectivity == 8:
        np.testing.assert_array_equal(got, _whole(mask)[0])


def test_labels_on_threads_into_a_memory_map(tmp_path):
    from changedet import parallel

    rng = np.random.default_rng(11)
    mask = cv2.dilate((rng.random((260, 330)) < 0.01).astype(np.uint8), np.ones((9, 9), np.uint8))
    want, want_stats = _whole(mask)
    with parallel.window_threads(2):
        got, stats = label_windowed(mask, 32, Scratch(tmp_path, 0), value=1)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(stats[1:], want_stats[1:])
