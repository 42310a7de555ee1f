"""A big header is refused up front (exit 2, one line), never run into an out-of-memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from affine import Affine

from changedet import resources
from changedet.config import LimitsConfig
from changedet.errors import InputError
from changedet.pipeline import detect_pair

from .subproc import assert_nothing_left, assert_one_line_error, cli

SIDE = 40_000


def sparse_header(path: Path, side: int = SIDE) -> Path:
    """A tiled 4-band uint16 GeoTIFF declaring ``side`` x ``side`` pixels, no block written (sparse)."""
    profile = dict(driver="GTiff", width=side, height=side, count=4, dtype="uint16", tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", sparse_ok=True, nodata=0, crs="EPSG:32637",
                   transform=Affine(0.5, 0, 412000, 0, -0.5, 3512000))
    with rasterio.open(path, "w", **profile):
        pass
    return path


def test_a_40000_px_header_is_refused_by_the_memory_check(tmp_path, monkeypatch):
    big = sparse_header(tmp_path / "big.tif")
    assert big.stat().st_size < 2_000_000
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 16 * 2**30)  # a laptop
    with pytest.raises(InputError, match=r"big\.tif: the area to process is 40000x40000 pixels .* GiB of memory"):
        detect_pair(big, big, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_a_40000_px_header_exits_2_with_one_line(tmp_path):
    need = resources.estimate_peak_bytes(SIDE * SIDE, model_enabled=True)
    avail = resources.available_memory_bytes()
    if avail is None or LimitsConfig().memory_fraction * avail >= need:
        pytest.skip("this machine has the memory a 40000² run is estimated to need")
    big = sparse_header(tmp_path / "big.tif")
    out = tmp_path / "out"
    proc = cli("detect", big, big, "--out", out, tmpdir=tmp_path / "tmp", timeout=120)
    assert_one_line_error(proc, str(big), "40000x40000 pixels", "GiB of memory", "limits.memory_fraction")
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_the_estimate_grows_with_the_grid_and_is_over_the_measured_peak():
    small, large = (resources.estimate_peak_bytes(n, False) for n in (2745 ** 2, 10980 ** 2))
    assert 331 * 2**20 < small < large  # the peak measured at 2745² (issue 15)
    assert large > 1919 * 2**20  # and at 10980², before memory maps


def test_each_extra_worker_adds_a_learned_window_to_the_estimate():
    n = 2745 ** 2
    one, two = (resources.estimate_peak_bytes(n, True, workers=w) for w in (1, 2))
    assert two - one == resources.MODEL_WORKER_BYTES
    assert resources.estimate_peak_bytes(n, False, workers=4) == resources.estimate_peak_bytes(n, False)
