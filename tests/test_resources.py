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


def test_a_40000_px_header_is_refused_by_the_memory_or_disk_check(tmp_path, monkeypatch):
    big = sparse_header(tmp_path / "big.tif")
    assert big.stat().st_size < 2_000_000
    monkeypatch.setattr(resources, "free_disk_bytes", lambda folder: 2**40)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2 * 2**30)  # a small VM
    with pytest.raises(InputError, match=r"big\.tif: the area to process is 40000x40000 pixels .* GiB of memory"):
        detect_pair(big, big, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 16 * 2**30)  # a laptop ...
    monkeypatch.setattr(resources, "free_disk_bytes", lambda folder: 20 * 2**30)  # ... with 20 GiB free
    with pytest.raises(InputError, match=r"out: .*40000x40000 pixels .* GiB of temporary disk beside this output "
                                         r"folder, 20\.0 GiB is free there.*--out on a larger disk"):
        detect_pair(big, big, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_a_40000_px_header_exits_2_with_one_line(tmp_path):
    """Refused up front where memory or disk is short, else by what it holds (no data), never run."""
    big = sparse_header(tmp_path / "big.tif")
    out = tmp_path / "out"
    proc = cli("detect", big, big, "--out", out, tmpdir=tmp_path / "tmp", timeout=300)
    assert_one_line_error(proc, str(big))
    assert any(why in proc.stderr for why in ("40000x40000 pixels", "nothing observable"))
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_the_estimate_is_over_the_measured_peaks_and_grows_with_the_width():
    # peaks of the stages without the learned one, two workers (issue 15, windowed decision stages)
    for side, peak_mb in ((2745, 791), (5490, 996), (10980, 1116)):
        assert resources.estimate_peak_bytes(side * side, False) > peak_mb * 2**20
        assert resources.estimate_peak_bytes(side * side, True, workers=2) > 1566 * 2**20  # learned, 2 workers
    strip = 1372 * 40000  # as wide as a 40000² scene: 1136 MB without the learned stage, 1387 MB with it
    assert resources.estimate_peak_bytes(strip, False, width=40000) > 1136 * 2**20
    assert resources.estimate_peak_bytes(strip, True, workers=2, width=40000) > 1387 * 2**20
    wide, tall = (resources.estimate_peak_bytes(40000 * 2745, False, width=w) for w in (40000, 2745))
    assert wide > tall  # strips run across the width
    # the area sets the disk: the memory maps of every product
    assert resources.estimate_scratch_bytes(40000 ** 2) == 16 * resources.estimate_scratch_bytes(10000 ** 2)


def test_each_extra_worker_adds_a_learned_window_to_the_estimate():
    n = 2745 ** 2
    one, two = (resources.estimate_peak_bytes(n, True, workers=w) for w in (1, 2))
    assert two - one == resources.MODEL_WORKER_BYTES
    assert resources.estimate_peak_bytes(n, False, workers=4) == resources.estimate_peak_bytes(n, False)


def test_the_disk_check_uses_the_free_space_beside_out(tmp_path):
    need = resources.estimate_scratch_bytes(8000 * 8000)
    out = tmp_path / "runs" / "site"
    limits = LimitsConfig(disk_fraction=0.5)
    resources.check_grid("a.tif", 8000, 8000, limits, False, available=2**40, out_dir=out, free_disk=2 * need + 2)
    with pytest.raises(InputError, match=r"runs/site: the area to process is 8000x8000 pixels .*temporary disk .*"
                                         r"limits\.disk_fraction=0"):
        resources.check_grid("a.tif", 8000, 8000, limits, False, available=2**40, out_dir=out, free_disk=2 * need - 2)
    resources.check_grid("a.tif", 8000, 8000, LimitsConfig(disk_fraction=0), False, available=2**40, out_dir=out,
                         free_disk=1)  # off
    assert resources.free_disk_bytes(tmp_path / "not" / "yet") == resources.free_disk_bytes(tmp_path) > 0
