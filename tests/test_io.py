import threading

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from changedet.errors import InputError, NoOverlapError, OutputError
from changedet.io import OutputStage, gsd_from_grid, iter_windows, open_pair, write_band

from .conftest import SAMPLE_TILES


def write(path, data, transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000), crs="EPSG:32637", **kw):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, **kw) as ds:
        ds.write(data)
    return path


@settings(max_examples=20, deadline=None)
@given(arr=arrays(np.uint16, st.tuples(st.integers(8, 40), st.integers(8, 40))))
def test_write_then_read_is_lossless(tmp_path_factory, arr):
    path = tmp_path_factory.mktemp("rt") / "a.tif"
    write_band(path, arr, None, rasterio.crs.CRS.from_epsg(32637), Affine(1, 0, 0, 0, -1, 0))
    with rasterio.open(path) as ds:
        assert np.array_equal(ds.read(1), arr)


def test_missing_and_non_raster_inputs(tmp_path):
    good = write(tmp_path / "good.tif", np.ones((3, 32, 32), np.uint8))
    with pytest.raises(InputError, match="no such file"):
        open_pair(tmp_path / "nope.tif", good)
    text = tmp_path / "text.tif"
    text.write_text("not an image")
    with pytest.raises(InputError, match=r"text\.tif: not a raster"):
        open_pair(good, text)


def test_pairs_that_do_not_overlap(tmp_path):
    a = write(tmp_path / "a.tif", np.ones((1, 32, 32), np.uint8))
    far = Affine(0.5, 0, 600000, 0, -0.5, 4000000)
    b = write(tmp_path / "b.tif", np.ones((1, 32, 32), np.uint8), transform=far)
    with pytest.raises(NoOverlapError, match="does not overlap"):
        open_pair(a, b)


def test_after_on_another_grid_is_warped_onto_before(tmp_path):
    rows, cols = np.mgrid[0:64, 0:64]
    img = (rows * 3 + cols).astype(np.uint16)
    a = write(tmp_path / "a.tif", img)
    # same ground, 1 m pixels, shifted origin: covers the first 32x32 of before's 0.5 m pixels at 2x
    coarse = img[::2, ::2]
    b = write(tmp_path / "b.tif", coarse, transform=Affine(1.0, 0, 500000, 0, -1.0, 4000000))
    with open_pair(a, b) as pair:
        assert pair.shape == (64, 64)
        assert any("warped" in w for w in pair.warnings)
        data, valid = pair.read_after((10, 10, 20, 20))
        assert valid.all()
        assert np.abs(data[0] - img[10:30, 10:30]).mean() < 3


def test_reads_past_the_edge_are_invalid(tmp_path):
    img = (7 + np.arange(40 * 40).reshape(1, 40, 40) % 5 + np.zeros((2, 1, 1))).astype(np.uint16)
    a = write(tmp_path / "a.tif", img)
    with open_pair(a, a) as pair:
        data, valid = pair.read_before((-5, -5, 20, 20))
        assert not valid[:5].any() and valid[5:, 5:].all()
        assert (data[:, 5:, 5:] == img[:, :15, :15]).all()


def test_pixel_coordinates_without_georeferencing(tmp_path):
    import cv2

    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.png"), img[:40])
    with open_pair(tmp_path / "a.png", tmp_path / "b.png") as pair:
        assert not pair.georeferenced and pair.crs is None
        assert pair.shape == (40, 64) and pair.gsd_m == 1.0
        assert any("pixel coordinates" in w for w in pair.warnings)
    with open_pair(tmp_path / "a.png", tmp_path / "b.png", gsd_m=0.5) as pair:
        assert pair.gsd_m == 0.5


def test_gsd_of_a_geographic_grid_is_in_metres():
    crs = rasterio.crs.CRS.from_epsg(4326)
    gsd = gsd_from_grid(crs, Affine(1e-4, 0, 2.3, 0, -1e-4, 48.9), 100)
    assert 7.0 < gsd < 11.2


def test_windows_tile_the_grid_exactly():
    boxes = list(iter_windows((1000, 700), 256))
    cover = np.zeros((1000, 700), int)
    for r, c, h, w in boxes:
        cover[r:r + h, c:c + w] += 1
    assert (cover == 1).all()


def test_output_stage_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "deep" / "out"
    with pytest.raises(RuntimeError):
        with OutputStage(out) as stage:
            stage.file("x.txt").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with OutputStage(out) as stage:
        stage.file("x.txt").write_text("done")
        stage.commit(["x.txt"])
    assert (out / "x.txt").read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["deep"]


def test_output_stage_waits_for_its_later_work_before_removing_itself(tmp_path):
    seen: list[bool] = []
    with pytest.raises(RuntimeError):
        with OutputStage(tmp_path / "out") as stage:
            task = stage.later(stage.file("late.txt").write_text, "written meanwhile")
            wait = task.wait
            task.wait = lambda: (seen.append(stage.path.is_dir()), wait())  # type: ignore[method-assign]
            raise RuntimeError("boom")
    assert seen == [True]  # waited for while the stage was still there
    assert list(tmp_path.iterdir()) == []


def test_both_inputs_decimated_at_once_equal_one_after_the_other():
    site = SAMPLE_TILES / "port"
    made = []
    for threads in (1, 2):
        with open_pair(site / "before.tif", site / "after.tif", decimate_px=(64, 200), threads=threads) as pair:
            made.append([pair.read_decimated(which, px) for which in ("before", "after") for px in (64, 200)])
    for (d1, v1, f1), (d2, v2, f2) in zip(*made):
        assert d1.tobytes() == d2.tobytes() and v1.tobytes() == v2.tobytes() and f1 == f2
    assert max(made[1][0][0].shape[1:]) <= 64 < max(made[1][1][0].shape[1:]) <= 200


def test_an_image_with_nothing_to_see_is_refused_after_the_other_images_read_ends(tmp_path, monkeypatch):
    # regression: before's check raised while after's read still ran on its thread, and the images
    # were closed under it (a segfault, seen as a crashed test worker in CI)
    from changedet import io

    bad = write(tmp_path / "bad.tif", np.full((4, 64, 64), 812, np.uint16))
    good = write(tmp_path / "good.tif", np.random.default_rng(0).integers(0, 4000, (4, 64, 64), dtype=np.uint16))
    before_read, after_read = threading.Event(), threading.Event()
    decimate, check = io.PairSource.decimate, io.check_observable
    checked_while_reading: list[bool] = []

    def ordered_decimate(self, which, sizes):
        if which == "after":  # starts once before's read is done, and takes a while (read 20 times)
            before_read.wait(timeout=30)
            for _ in range(19):
                decimate(self, which, sizes)
        out = decimate(self, which, sizes)
        (before_read if which == "before" else after_read).set()
        return out

    def recording_check(*args, **kwargs):
        checked_while_reading.append(not after_read.is_set())
        return check(*args, **kwargs)

    monkeypatch.setattr(io.PairSource, "decimate", ordered_decimate)
    monkeypatch.setattr(io, "check_observable", recording_check)
    with pytest.raises(InputError, match="bad.tif.*nothing observable"):
        open_pair(bad, good, threads=2)
    assert checked_while_reading == [False]


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 3000), seed=st.integers(0, 10_000), case=st.sampled_from(
    ["nodata", "constant", "one_pixel_differs"]))
def test_the_exact_check_reads_by_strips_and_finds_one_pixel(h, w, seed, case):
    # the check of an image whose decimated read looks empty: strips of bounded rows (memory flat in
    # the image's size), and exact: one valid pixel that differs anywhere is something to see
    from changedet import io

    rng = np.random.default_rng(seed)
    data = np.full((4, h, w), 812, np.float32)
    valid = np.zeros((h, w), bool) if case == "nodata" else rng.random((h, w)) < 0.3
    valid.flat[rng.integers(0, h * w)] = case != "nodata"
    if case == "one_pixel_differs":  # a valid pixel unlike the others (at least one more is valid)
        assume(h * w >= 2)
        valid.flat[(int(np.flatnonzero(valid)[0]) + 1 + int(rng.integers(0, h * w - 1))) % (h * w)] = True
        r, c = np.argwhere(valid)[rng.integers(0, valid.sum())]
        data[2, r, c] = 813
    heights = []

    def read(box):
        r0, c0, bh, bw = box
        heights.append(bh)
        assert (c0, bw) == (0, w) and 0 <= r0 and r0 + bh <= h
        return data[:, r0:r0 + bh].copy(), valid[r0:r0 + bh].copy()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "_DECIMATE_STRIP_BYTES", 4 * 4 * w * 7)  # 7 rows a strip at this width
        if case == "one_pixel_differs":
            io.check_observable(read, (h, w), 4, "x.tif")
            others = valid.copy()
            others[r, c] = False
            shown = max(r, np.argwhere(others)[0][0]) // 7  # the first strip by which two values were read
            assert sum(heights) == min(h, (shown + 1) * 7)  # no strip read past it
        else:
            why = "every pixel is nodata" if case == "nodata" else r"every pixel is \(812, 812, 812, 812\)"
            with pytest.raises(InputError, match=r"x\.tif: nothing observable in it: " + why):
                io.check_observable(read, (h, w), 4, "x.tif")
            assert sum(heights) == h
    assert max(heights) <= 7


def test_output_under_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        OutputStage(f / "out")


def test_inputs_slow_to_read_by_window_are_read_from_a_local_copy_removed_on_close(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (4, 64, 80), dtype=np.uint8)
    data[3] = 255
    data[3, :, :8] = 0  # an alpha band: the left edge has no data
    for name in ("b.png", "a.png"):
        with rasterio.open(tmp_path / name, "w", driver="PNG", width=80, height=64, count=4, dtype="uint8") as ds:
            ds.write(data)
    with open_pair(tmp_path / "b.png", tmp_path / "a.png") as pair:
        assert pair.before.driver == "GTiff" and pair.after.driver == "GTiff"
        assert len(list(scratch.glob("changedet-inputs-*"))) == 1
        assert pair.before_bands == [1, 2, 3]  # the alpha band is still alpha
        b, vb = pair.read_before((10, 0, 30, 40))
        assert np.array_equal(b, data[:3, 10:40, 0:40].astype(np.float32))
        assert not vb[:, :8].any() and vb[:, 8:].all()
    assert not list(scratch.glob("changedet-inputs-*"))


@pytest.mark.parametrize("strip_bytes", [None, 3 * 170 * 4 * 10])
def test_decimated_reads_in_one_pass_equal_separate_reads(tmp_path, monkeypatch, strip_bytes):
    """PairSource.decimate reads the rows once for several sizes; each equals its own strip-by-strip read
    (also when the scene is so wide that a strip holds fewer rows than a block: 10 here)."""
    from changedet import io

    monkeypatch.setattr(io, "_DECIMATE_STRIP_PX", 24)  # many strips, crossing the 32-row blocks
    if strip_bytes is not None:
        monkeypatch.setattr(io, "_DECIMATE_STRIP_BYTES", strip_bytes)
        assert io.strip_rows(170, 3) == 10
    rng = np.random.default_rng(3)
    img = rng.integers(1, 4000, (3, 150, 170)).astype(np.uint16)
    img[:, 40:47, :] = 0  # a nodata band of rows
    a = write(tmp_path / "a.tif", img, nodata=0, tiled=True, blockxsize=32, blockysize=32)
    with open_pair(a, a, decimate_px=(40, 70, 100)) as pair:
        ahead = {px: pair.read_decimated("before", px) for px in (40, 70, 100)}
        for px, (data, valid, factor) in ahead.items():
            fresh = pair.read_decimated("before", px)  # handed out once: this one is read again
            assert fresh[0] is not data
            assert np.array_equal(fresh[0], data) and np.array_equal(fresh[1], valid) and fresh[2] == factor


@given(st.integers(1, 200_000), st.integers(1, 16))
def test_strips_are_bounded_in_bytes_whatever_the_width(width, bands):
    from changedet import io

    rows = io.strip_rows(width, bands)
    assert 1 <= rows <= io._DECIMATE_STRIP_PX
    assert rows == 1 or rows * width * bands * 4 <= io._DECIMATE_STRIP_BYTES


def test_block_cache_is_raised_then_set_back(tmp_path):
    from rasterio.env import get_gdal_config

    from changedet.io import block_cache

    img = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)
    a = write(tmp_path / "a.tif", img, tiled=True, blockxsize=32, blockysize=32)
    with rasterio.Env(GDAL_CACHEMAX=1000), open_pair(a, a) as pair:
        with block_cache(pair, 40, cap_bytes=5000):
            assert int(get_gdal_config("GDAL_CACHEMAX", normalize=False)) == 5000  # capped
        assert int(get_gdal_config("GDAL_CACHEMAX", normalize=False)) == 1000
