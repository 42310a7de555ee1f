"""The whole-scene allocator: in memory within the budget, memory-mapped past it, same contents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from changedet import scratch
from changedet.scratch import Scratch


@pytest.mark.parametrize("fill,dtype", [(255, np.uint8), (0, np.uint8), (-7, np.int32)])
def test_past_the_budget_an_array_is_a_memory_map_with_the_same_contents(tmp_path, fill, dtype):
    small = Scratch(tmp_path, 50 * 60 * 4).full((50, 60), fill, dtype)
    big = Scratch(tmp_path, 1_000).full((50, 60), fill, dtype)
    assert not scratch.is_mapped(small) and scratch.is_mapped(big)
    assert big.dtype == small.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(big, small)
    assert Path(big.filename).parent == tmp_path, "the map lives in the given folder"
    assert not list(tmp_path.iterdir()), "unlinked at once: its disk goes with the array"


def test_released_pages_keep_their_data(tmp_path):
    arr = Scratch(tmp_path, 0).zeros((300, 400), np.uint8)
    arr[10:20, 30:40] = 7
    scratch.release(arr)
    assert int(arr.sum()) == 7 * 100
    scratch.release(np.zeros(3))  # no-op on an ordinary array


def test_copy_past_the_budget(tmp_path):
    src = np.arange(12_000, dtype=np.uint8).reshape(100, 120)
    out = Scratch(tmp_path, 0).copy(src)
    assert scratch.is_mapped(out)
    np.testing.assert_array_equal(out, src)
    out[0, 0] = 99
    assert src[0, 0] == 0


def test_without_a_folder_everything_stays_in_memory():
    arr = scratch.IN_MEMORY.full((100, 100), 3, np.uint8)
    assert not scratch.is_mapped(arr) and (arr == 3).all()
