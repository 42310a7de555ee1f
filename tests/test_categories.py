"""Categorical rasters: legend tables, overviews that keep thin changes, and what GIS clients read."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from changedet.categories import CLASS_LEGEND, MASK_LEGEND, change_first_mode, overview_factors
from changedet.io import write_categorical_cog
from changedet.objects import CLASS_CODES
from changedet.quicklook import COLOURS

TRANSFORM = Affine(2.0, 0, 500_000, 0, -2.0, 4_000_000)
CRS = "EPSG:32633"


# ---- the tables


def test_class_colours_are_the_quicklook_legend_colours():
    by_name = {c.name: c for c in CLASS_LEGEND.categories}
    for name, code in CLASS_CODES.items():
        b, g, r = COLOURS[name]
        assert by_name[name].code == code and by_name[name].rgb == (r, g, b)
    assert CLASS_LEGEND.names() == ["none", "other", "trench", "hut", "vessel"]
    assert MASK_LEGEND.names() == ["no change", "change"]


def test_band_tags_name_every_code_and_nodata():
    tags = CLASS_LEGEND.band_tags()
    assert tags["CLASS_2"].startswith("trench:") and "#e69f00" in tags["CLASS_2"]
    assert tags["NODATA"].startswith("255:")
    assert set(tags) >= {f"CLASS_{c}" for c in range(5)} | {"UNITS"}


# ---- overviews


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
@pytest.mark.parametrize("col", [100, 101, 103])
def test_a_one_pixel_line_survives_every_factor(factor, col):
    a = np.zeros((64, 64), np.uint8)
    a[:, col % 64] = CLASS_CODES["trench"]
    out = change_first_mode(a, factor)
    assert out.shape == (64 // factor, 64 // factor)
    assert (out[:, (col % 64) // factor] == CLASS_CODES["trench"]).all()
    assert (np.delete(out, (col % 64) // factor, axis=1) == 0).all()


def test_plain_mode_would_drop_the_line():
    """Why GDAL's MODE is not used: a 1-pixel line is a minority of every 4x4 block."""
    a = np.zeros((512, 1100), np.uint8)
    a[:, 101] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        mem = rasterio.io.MemoryFile()
        with mem.open(driver="GTiff", height=512, width=1100, count=1, dtype="uint8") as ds:
            ds.write(a, 1)
            gdal_mode = ds.read(1, out_shape=(128, 275), resampling=rasterio.enums.Resampling.mode)
    assert not (gdal_mode == 2).any()
    assert (change_first_mode(a, 4)[:, 101 // 4] == 2).all()


def test_mode_rules_nodata_background_ties_and_ragged_edges():
    a = np.array([[255, 255, 0, 255, 1, 2, 7],
                  [255, 255, 255, 255, 2, 1, 7]], np.uint8)
    out = change_first_mode(a, 2)
    # all nodata -> nodata; background among nodata -> background; 1 vs 2 tie -> 1; ragged last column
    assert out.tolist() == [[255, 0, 1, 7]]
    c = np.array([[3, 3, 4, 0]], np.uint8)
    assert change_first_mode(c, 4).tolist() == [[3]]  # the most frequent change code wins


def test_mode_refuses_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        change_first_mode(np.zeros((4, 4), np.int32), 2)
    with pytest.raises(ValueError, match="factor"):
        change_first_mode(np.zeros((4, 4), np.uint8), 0)


@pytest.mark.parametrize("shape", [(512, 512), (513, 200), (1024, 1024), (1025, 600), (2100, 1900)])
def test_overview_factors_are_those_of_gdals_cog_driver(tmp_path, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=shape[0], width=shape[1], count=1,
                           dtype="uint8") as ds:
            ds.write(np.zeros(shape, np.uint8), 1)
        rasterio.shutil.copy(str(tmp_path / "s.tif"), str(tmp_path / "c.tif"), driver="COG", BLOCKSIZE="512")
        with rasterio.open(tmp_path / "c.tif") as ds:
            assert overview_factors(*shape) == ds.overviews(1)


# ---- the writer


def _classes(height: int = 1100, width: int = 2100) -> np.ndarray:
    a = np.zeros((height, width), np.uint8)
    a[:, 101] = CLASS_CODES["trench"]  # 1 px wide, odd column
    a[300, :] = CLASS_CODES["trench"]  # 1 px high, even row
    a[600:640, 600:640] = CLASS_CODES["hut"]
    a[:40, :40] = 255
    return a


@pytest.fixture(scope="module")
def class_cog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cog") / "change_class.tif"
    write_categorical_cog(path, _classes(), CLASS_LEGEND, CRS, TRANSFORM)
    return path


def test_writer_leaves_the_cog_and_its_sidecar_only(class_cog):
    assert sorted(p.name for p in class_cog.parent.iterdir()) == ["change_class.tif", "change_class.tif.aux.xml"]


def test_written_raster_is_a_valid_cog_with_the_data(class_cog):
    from rio_cogeo.cogeo import cog_validate

    ok, errors, _ = cog_validate(str(class_cog), quiet=True)
    assert ok, errors
    with rasterio.open(class_cog) as ds:
        assert (ds.read(1) == _classes()).all()
        assert ds.nodata == 255 and ds.crs == CRS and ds.transform == TRANSFORM


def test_colour_table_names_and_tags_read_back_with_rasterio(class_cog):
    with rasterio.open(class_cog) as ds:
        cmap = ds.colormap(1)
        assert {c.code: (*c.rgb, 255) for c in CLASS_LEGEND.categories} == cmap
        assert ds.colorinterp[0] == rasterio.enums.ColorInterp.palette
        assert ds.descriptions == ("change class",)
        tags = ds.tags(1)
    assert tags["CLASS_2"].startswith("trench:") and tags["NODATA"].startswith("255:")
    assert tags["OVERVIEW_RESAMPLING"].startswith("CHANGE_FIRST_MODE")


def test_thin_trench_lines_survive_in_every_overview_level(class_cog):
    with rasterio.open(class_cog) as ds:
        factors = ds.overviews(1)
    assert factors == [2, 4, 8]
    for level, f in enumerate(factors):
        with rasterio.open(class_cog, overview_level=level) as ov:
            o = ov.read(1)
        assert o.shape == (-(-1100 // f), -(-2100 // f))
        assert (o[40 // f + 1:, 101 // f] == CLASS_CODES["trench"]).all(), f
        assert (o[300 // f, 40 // f + 1:] == CLASS_CODES["trench"]).all(), f
        assert (o[600 // f:640 // f, 600 // f:640 // f] == CLASS_CODES["hut"]).all(), f
        assert o[0, 0] == 255


def test_writer_is_byte_identical_across_runs(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        write_categorical_cog(tmp_path / run / "change_mask.tif", (_classes() > 0).astype(np.uint8) * 1,
                              MASK_LEGEND, CRS, TRANSFORM)
    for name in ("change_mask.tif", "change_mask.tif.aux.xml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_small_rasters_get_no_overviews(tmp_path):
    path = tmp_path / "change_class.tif"
    write_categorical_cog(path, _classes(400, 300), CLASS_LEGEND, None, Affine.identity())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            assert ds.overviews(1) == [] and ds.colormap(1)[2] == (230, 159, 0, 255)


# ---- what GIS clients show

GDALINFO = shutil.which("gdalinfo")


@pytest.mark.skipif(GDALINFO is None, reason="gdalinfo not installed (Debian gdal-bin)")
def test_gdalinfo_shows_colour_table_categories_and_attribute_table(class_cog):
    out = subprocess.run([GDALINFO, str(class_cog)], capture_output=True, text=True, check=True).stdout
    assert "ColorInterp=Palette" in out
    assert "Color Table (RGB with 5 entries)" in out
    assert "    2: 230,159,0,255" in out
    assert "Categories:" in out and "      2: trench" in out and "      4: vessel" in out
    assert "Description = change class" in out
    assert '<GDALRasterAttributeTable tableType="thematic">' in out and "<F>trench</F>" in out


QGIS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from qgis.core import QgsApplication, QgsRasterLayer
    app = QgsApplication([], False)
    app.initQgis()
    layer = QgsRasterLayer(sys.argv[1], "change_class")
    r = layer.renderer()
    classes = [[int(c.value), c.label, c.color.name()] for c in r.classes()] if r.type() == "paletted" else []
    print(json.dumps({"valid": layer.isValid(), "renderer": r.type(), "classes": classes}), flush=True)
    os._exit(0)  # QGIS 3.22 may crash in its own teardown, after the answer
""")


def _qgis_python() -> str | None:
    py = "/usr/bin/python3"
    if not Path(py).exists():
        return None
    ok = subprocess.run([py, "-c", "import qgis.core"], capture_output=True, env={"QT_QPA_PLATFORM": "offscreen"},
                        check=False, timeout=120)
    return py if ok.returncode == 0 else None


def test_qgis_draws_the_classes_with_names_and_legend_colours(class_cog, tmp_path):
    py = _qgis_python()
    if py is None:
        pytest.skip("PyQGIS not available (Debian python3-qgis)")
    script = tmp_path / "qgis_classes.py"
    script.write_text(QGIS_SCRIPT)
    env = {"QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.run([py, str(script), str(class_cog)], capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["valid"] and got["renderer"] == "paletted"
    want = [[c.code, c.name, "#{:02x}{:02x}{:02x}".format(*c.rgb)] for c in CLASS_LEGEND.categories]
    assert got["classes"] == want


@pytest.mark.parametrize("factor", [2, 8])
def test_change_first_mode_by_strips_equals_one_pass(factor):
    # a scene tall enough to be gone through in several strips of whole blocks
    from changedet import categories as C

    rng = np.random.default_rng(factor)
    array = rng.choice(np.array([0, 0, 0, 0, 1, 2, 3, 255], np.uint8), size=(3001, 2999))
    codes = [c for c in np.unique(array).tolist() if c not in (255, 0)]
    whole = C._change_first_strip(array, factor, codes, 255, 0)
    rows = max(1, (4 * 2**20) // (-(-2999 // factor) * factor * factor)) * factor
    assert rows < 3001
    np.testing.assert_array_equal(C.change_first_mode(array, factor), whole)


@pytest.mark.parametrize("shape", [(1, 1), (37, 130), (300, 257), (512, 64)])
def test_change_first_modes_equal_one_level_at_a_time(shape):
    """All overview levels from one pass (counts summed 2 x 2) equal change_first_mode per factor."""
    from changedet.categories import change_first_mode, change_first_modes

    rng = np.random.default_rng(shape[0])
    array = rng.choice([0, 0, 0, 0, 0, 1, 2, 3, 4, 255], size=shape).astype(np.uint8)
    array[shape[0] // 2, :] = 2  # a thin line of one code
    factors = [2, 4, 8, 16, 32]
    levels = change_first_modes(array, factors)
    for f in factors:
        assert np.array_equal(levels[f], change_first_mode(array, f))
