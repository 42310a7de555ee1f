"""Hostile raster inputs (issue 13): non-finite floats, damaged files, mixed bit depths, complex data, huge headers.

Every raster is made here from a 160 px synth scene. Runs go through the CLI in a child process
(:mod:`tests.subproc`) with its own TMPDIR, so that what a run leaves behind can be seen.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from changedet import resources
from changedet.config import LimitsConfig, build_config
from changedet.errors import InputError
from changedet.io import open_pair

from .subproc import assert_nothing_left, assert_one_line_error, cli

FAST = ("--set", "model.enabled=false")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 160 px camp scene written by synth (uint8, 3 bands, georeferenced)."""
    from changedet import synth

    folder = tmp_path_factory.mktemp("hostile") / "camp"
    synth.write_scene(synth.make_scene("camp", seed=101, size=160), folder)
    return folder


def convert(src: Path, dst: Path, scale: float, dtype: str, nodata: float | None = None,
            block_px: int | None = None) -> np.ndarray:
    """``src`` times ``scale`` as ``dtype``; returns the written (bands, h, w) array."""
    with rasterio.open(src) as ds:
        profile = ds.profile
        data = ds.read().astype(np.float64) * scale
    profile.update(dtype=dtype, nodata=nodata)
    if block_px:
        profile.update(tiled=True, blockxsize=block_px, blockysize=block_px, compress="deflate")
    out = data.astype(dtype)
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(out)
    return out


def write(path: Path, data: np.ndarray, like: Path, nodata: float | None = None) -> None:
    with rasterio.open(like) as ds:
        profile = ds.profile
    profile.update(dtype=str(data.dtype), nodata=nodata, count=data.shape[0])
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


def detect(before: Path, after: Path, out: Path, tmp_path: Path, *extra: str):
    return cli("detect", before, after, "--out", out, *FAST, *extra, tmpdir=tmp_path / "tmp")


def mask_of(out: Path) -> np.ndarray:
    with rasterio.open(out / "change_mask.tif") as ds:
        return ds.read(1)


def similar(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(agreement over pixels valid in both, IoU of changed pixels) of two change masks."""
    both = (ref != 255) & (got != 255)
    agree = float((ref[both] == got[both]).mean())
    a, b = (ref == 1) & both, (got == 1) & both
    iou = float((a & b).sum() / max((a | b).sum(), 1))
    return agree, iou


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory) -> Path:
    """The uint8 pair's run, as the yardstick of the other encodings."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = detect(scene / "before.tif", scene / "after.tif", tmp / "out", tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp / "out"


# --------------------------------------------------------------------------- 1. NaN and ±Inf


@pytest.mark.parametrize("case", ["nan-declared", "nan-one-band", "nan-undeclared", "inf"])
def test_non_finite_values_are_nodata(scene, reference, tmp_path, case):
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    convert(scene / "before.tif", before, 1 / 255, "float32")
    a = convert(scene / "after.tif", after, 1 / 255, "float32")
    bands = [1] if case == "nan-one-band" else slice(None)
    a[bands, :40, :] = np.inf if case == "inf" else np.nan
    write(after, a, after, nodata=float("nan") if case == "nan-declared" else None)
    proc = detect(before, after, tmp_path / "out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    mask, ref = mask_of(tmp_path / "out"), mask_of(reference)
    assert (mask[:36] == 255).all()  # not observable, as declared nodata would be (after is shifted ~2 px)
    agree, _ = similar(ref, mask)
    assert agree > 0.99
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert all(np.isfinite(summary["radiometry"]["gains"]))


def test_non_finite_values_with_the_learned_stage(scene, tmp_path):
    """NaN reaches no stage: the learned one included (a NaN in one band only, none declared)."""
    after = tmp_path / "after.tif"
    a = convert(scene / "after.tif", after, 1.0, "float32")
    a[2, 100:, 20:90] = np.nan
    write(after, a, after)
    proc = cli("detect", scene / "before.tif", after, "--out", tmp_path / "out", tmpdir=tmp_path / "tmp")
    assert proc.returncode == 0, proc.stderr
    mask = mask_of(tmp_path / "out")
    assert (mask[100:, 20:90] == 255).all()
    assert (mask != 255).mean() > 0.5


def test_reads_of_non_finite_values_are_invalid(scene, tmp_path):
    """Window and decimated reads give finite data and mark NaN/Inf invalid, declared or not."""
    after = tmp_path / "after.tif"
    a = convert(scene / "after.tif", after, 1 / 255, "float64")
    a[0, 10:20, 30:50] = np.nan
    a[1, 60:64, 0:8] = -np.inf
    write(after, a, after)
    with open_pair(scene / "before.tif", after) as pair:
        data, valid = pair.read_after((0, 0, 160, 160))
        small, small_valid, factor = pair.read_decimated("after", 80)
    assert np.isfinite(data).all() and np.isfinite(small).all()
    assert not valid[10:20, 30:50].any() and not valid[60:64, 0:8].any()
    assert valid.sum() == 160 * 160 - 200 - 32
    assert factor == 2 and not small_valid[5:10, 15:25].any()


@pytest.mark.parametrize("scale,dtype", [(1 / 255, "float32"), (10000 / 255, "float64")])
def test_float_products_detect_as_the_uint8_original(scene, reference, tmp_path, scale, dtype):
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    convert(scene / "before.tif", before, scale, dtype)
    convert(scene / "after.tif", after, scale, dtype)
    proc = detect(before, after, tmp_path / "out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    agree, iou = similar(mask_of(reference), mask_of(tmp_path / "out"))
    assert agree > 0.995 and iou > 0.9


def test_every_pixel_non_finite_is_nothing_observable(scene, tmp_path):
    after = tmp_path / "after.tif"
    a = convert(scene / "after.tif", after, 1.0, "float32")
    write(after, np.full_like(a, np.nan), after)
    out = tmp_path / "out"
    proc = detect(scene / "before.tif", after, out, tmp_path)
    assert_one_line_error(proc, str(after), "nothing observable")
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


# --------------------------------------------------------------------------- 2. damaged files


def damaged(scene: Path, folder: Path, how: str) -> Path:
    """A tiled (64 px) copy of after, cut to half its bytes or with one tile's data overwritten."""
    path = folder / f"after-{how}.tif"
    convert(scene / "after.tif", path, 1.0, "uint8", block_px=64)
    if how == "truncated":
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    else:
        with rasterio.open(path) as ds:  # the middle tile (rows 64-127) of band 1
            offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
            size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


@pytest.mark.parametrize("how,rows", [("truncated", "rows 128–159"), ("garbage-tile", "rows 64–127")])
def test_damaged_file_names_the_file_and_the_rows(scene, tmp_path, how, rows):
    after = damaged(scene, tmp_path, how)
    with rasterio.open(after) as ds:
        assert ds.width == 160  # it opens: the damage shows only when read
    out = tmp_path / "out"
    proc = detect(scene / "before.tif", after, out, tmp_path)
    assert_one_line_error(proc, str(after), "is damaged", "re-download or re-export")
    # the rows named are those of the read that failed (a window or a strip): they hold the damage
    lo, hi = (int(x) for x in rows.split()[1].split("–"))
    got = re.search(r"reading rows (\d+)–(\d+) failed", proc.stderr)
    assert got and int(got[1]) <= lo and int(got[2]) >= hi and int(got[2]) - int(got[1]) < 512, proc.stderr
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)
    # as before too, where the reads of the reference grid fail
    proc = detect(after, scene / "before.tif", out, tmp_path)
    assert_one_line_error(proc, str(after), "is damaged")
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_damage_found_mid_run_leaves_nothing(scene, tmp_path, monkeypatch):
    """A read that fails once outputs are being staged: the InputError names the file, the staging goes."""
    from changedet import io, pipeline

    real, calls = io._read_box, []

    def failing_later(ds, bands, box, grid, path):
        calls.append(box)
        if len(calls) > 3:  # past open_pair, inside the run
            with io.reading(path, ds, Window(box[1], box[0], box[3], box[2])):
                raise rasterio.errors.RasterioIOError("TIFFReadEncodedTile() failed.")
        return real(ds, bands, box, grid, path)

    monkeypatch.setattr(io, "_read_box", failing_later)
    out = tmp_path / "out"
    cfg = build_config(sets=["model.enabled=false"])
    with pytest.raises(InputError, match=r"(before|after)\.tif: is damaged: reading rows? -?\d+"):
        pipeline.detect_pair(scene / "before.tif", scene / "after.tif", out, cfg)
    assert len(calls) > 3 and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 3. bit depths, complex


@pytest.mark.parametrize("scale", [257, 4])  # full 16-bit range; 10-bit data in uint16
def test_uint8_before_with_uint16_after_detects_as_uint8(scene, reference, tmp_path, scale):
    after = tmp_path / "after.tif"
    convert(scene / "after.tif", after, scale, "uint16")
    proc = detect(scene / "before.tif", after, tmp_path / "out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    agree, iou = similar(mask_of(reference), mask_of(tmp_path / "out"))
    assert agree > 0.995 and iou > 0.9
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    ref = json.loads((reference / "summary.json").read_text())
    assert summary["registration"]["applied"] and summary["registration"]["confidence"] > 0.5
    assert summary["registration"]["shift_px"] == pytest.approx(ref["registration"]["shift_px"], abs=0.1)


@pytest.mark.parametrize("dtype", ["complex_int16", "complex64"])
def test_complex_input_is_refused_with_how_to_convert(scene, tmp_path, dtype):
    with rasterio.open(scene / "after.tif") as ds:
        profile = ds.profile
        data = ds.read()
    after = tmp_path / "slc.tif"
    profile.update(dtype=dtype, count=1, photometric="MINISBLACK")
    with rasterio.open(after, "w", **profile) as ds:  # GDAL stores complex64 values as CInt16 too
        ds.write((data[0].astype(np.float32) + 1j * data[1].astype(np.float32)).astype(np.complex64)[None])
    out = tmp_path / "out"
    proc = detect(scene / "before.tif", after, out, tmp_path)
    assert_one_line_error(proc, str(after), "complex data", "not supported", "amplitude", "gdal_translate")
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


# --------------------------------------------------------------------------- 4. size and memory


def huge_header(path: Path, side: int = 100_000) -> Path:
    """A tiled, compressed GeoTIFF that declares ``side`` x ``side`` pixels and holds no data."""
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True, blockxsize=1024,
                   blockysize=1024, compress="deflate", sparse_ok=True, crs="EPSG:32637",
                   transform=Affine(0.5, 0, 412000, 0, -0.5, 3512000))
    with rasterio.open(path, "w", **profile):
        pass
    return path


def test_huge_header_is_refused_before_any_work(tmp_path):
    huge = huge_header(tmp_path / "huge.tif")
    assert huge.stat().st_size < 1_000_000
    out = tmp_path / "out"
    n_px = 100_000 ** 2
    if (resources.estimate_scratch_bytes(n_px) <= (resources.free_disk_bytes(tmp_path) or 0)
            and resources.estimate_peak_bytes(n_px, True, 2, 100_000) <= 0.8 * (resources.available_memory_bytes() or 0)):
        pytest.skip("this machine has the memory and disk a 100000² run is estimated to need")
    proc = cli("detect", huge, huge, "--out", out, tmpdir=tmp_path / "tmp", timeout=120)
    line = assert_one_line_error(proc, "100000x100000 pixels", "GiB of", "gdal_translate -srcwin")
    assert "learned" not in line
    # short of memory: named by the image; short of disk beside --out: named by the output folder
    assert (line.startswith(f"changedet: error: {huge}:") and "of memory" in line and "limits.memory_fraction" in line) \
        or (line.startswith(f"changedet: error: {out}:") and "temporary disk" in line and "--out" in line)
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_size_check_comes_before_any_read(tmp_path, monkeypatch):
    """open_pair asks check_size before reading pixels (no decimated read of 10^10 pixels)."""
    from changedet import io, pipeline

    huge = huge_header(tmp_path / "huge.tif")

    def no_read(*args, **kwargs):
        raise AssertionError("pixels read before the size check")

    monkeypatch.setattr(io, "check_observable", no_read)
    monkeypatch.setattr(io, "undeclared_fill", no_read)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 64 * 2**30)
    monkeypatch.setattr(resources, "free_disk_bytes", lambda folder: 100 * 2**30)
    with pytest.raises(InputError, match=r"out: the area to process is 100000x100000 pixels .* of temporary disk"):
        pipeline.detect_pair(huge, huge, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.tif"]


def test_max_megapixels_limit(scene, tmp_path):
    out = tmp_path / "out"
    proc = detect(scene / "before.tif", scene / "after.tif", out, tmp_path, "--set", "limits.max_megapixels=0.01")
    assert_one_line_error(proc, str(scene / "before.tif"), "160x160 pixels", "limits.max_megapixels=0.01",
                          "gdal_translate -srcwin 0 0 100 100")
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_memory_check_uses_the_estimate_and_the_fraction():
    limits = LimitsConfig()
    n_px = 4000 * 4000
    need = resources.estimate_peak_bytes(n_px, model_enabled=False)
    resources.check_grid("a.tif", 4000, 4000, limits, False, available=int(need / 0.8) + 1)  # fits
    with pytest.raises(InputError, match=r"a\.tif: .*4000x4000 pixels .*needs about .* GiB.*available"):
        resources.check_grid("a.tif", 4000, 4000, limits, False, available=int(need / 0.8) - 2**20)
    with pytest.raises(InputError):  # the learned stage needs more
        resources.check_grid("a.tif", 4000, 4000, limits, True, available=int(need / 0.8) + 1)
    resources.check_grid("a.tif", 4000, 4000, LimitsConfig(memory_fraction=0), True, available=1)  # off
    assert resources.available_memory_bytes() is None or resources.available_memory_bytes() > 0


# --------------------------------------------------------------------------- batch


def test_batch_records_a_bad_input_with_its_line_and_goes_on(scene, tmp_path):
    bad = damaged(scene, tmp_path, "truncated")
    manifest = tmp_path / "sites.yaml"
    manifest.write_text("config: {model: {enabled: false}}\nsites:\n"
                        f"  - {{name: broken, before: {scene / 'before.tif'}, after: {bad}}}\n"
                        f"  - {{name: good, before: {scene / 'before.tif'}, after: {scene / 'after.tif'}}}\n")
    runs = tmp_path / "runs"
    proc = cli("batch", manifest, "--out", runs, tmpdir=tmp_path / "tmp")
    assert proc.returncode == 1, proc.stderr
    result = json.loads((runs / "batch_summary.json").read_text())
    sites = {s["name"]: s for s in result["sites"]}
    assert sites["good"]["status"] == "ok" and (runs / "good" / "summary.json").is_file()
    assert sites["broken"]["status"] == "failed"
    error = sites["broken"]["error"]
    assert "\n" not in error and str(bad) in error and "is damaged" in error
    assert not (runs / "broken").exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)
