"""detections.geojson: valid polygons inside the tile footprint in EPSG:4326 (issue 5, criterion 4)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box, shape

from changedet import vector

from .conftest import SAMPLE_TILES, SITES


@pytest.mark.parametrize("site", SITES)
def test_every_polygon_is_valid_and_inside_the_footprint(sample_runs, site):
    fc = json.loads((sample_runs[site] / "detections.geojson").read_text())
    with rasterio.open(SAMPLE_TILES / site / "before.tif") as ref:
        footprint = box(*transform_bounds(ref.crs, "EPSG:4326", *ref.bounds)).buffer(1e-7)
    assert fc["features"]
    for feat in fc["features"]:
        geom = shape(feat["geometry"])
        assert geom.geom_type in ("Polygon", "MultiPolygon") and geom.is_valid and geom.area > 0, feat["id"]
        assert footprint.contains(geom), feat["id"]
        props = feat["properties"]
        assert footprint.contains(shape({"type": "Point", "coordinates": [props["centroid_x"], props["centroid_y"]]}))


def test_awkward_regions_give_valid_polygons():
    # a ring with a hole, a region touching itself at a corner, a one-pixel spur
    obj = np.zeros((20, 20), bool)
    obj[2:12, 2:12] = True
    obj[5:8, 5:8] = False  # hole
    obj[12, 12] = obj[13, 13] = True  # corner-touching tail (8-connected only)
    obj[2, 12:16] = True  # spur
    geom = vector.region_polygon(obj, Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000))
    wgs = vector.to_wgs84(geom, "EPSG:32637")
    poly = shape(wgs)
    assert poly.is_valid and len(poly.interiors) == 1
    # exterior counter-clockwise, hole clockwise (RFC 7946)
    assert poly.exterior.is_ccw and not poly.interiors[0].is_ccw
    pix = shape(vector.pixel_polygon(vector.region_polygon(obj, Affine.identity())))
    assert pix.is_valid and pix.area == pytest.approx(obj.sum() - 2, abs=0.5)  # largest part, tail dropped


# --------------------------------------------------------------------------- issue 16: outlines, properties, files

UTM = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)


def _polys(geom):
    return list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]


def _n_vertices(geom):
    return sum(len(p.exterior.coords) + sum(len(r.coords) for r in p.interiors) for p in _polys(geom))


def test_every_part_of_a_region_is_kept():
    obj = np.zeros((30, 30), bool)
    obj[2:8, 2:8] = True  # two parts far apart (a trench cut in two, not bridged)
    obj[20:25, 15:28] = True
    geom = vector.simplified_outline(obj, Affine.identity())
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert geom.area == pytest.approx(obj.sum(), rel=0.02)


def test_a_diagonal_line_has_no_staircase():
    obj = np.zeros((60, 60), bool)
    for i in range(50):
        obj[i + 5, i + 3:i + 6] = True  # a 45 degree band three pixels wide
    exact = vector.pixel_outline(obj, UTM)
    geom = vector.simplified_outline(obj, UTM)
    assert _n_vertices(exact) > 150  # two steps a row
    assert _n_vertices(geom) <= 12
    assert bool(shapely.contains_xy(geom, *vector.pixel_centres(obj, UTM)).all())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.2, 0.7))
def test_simplified_outline_is_valid_and_covers_every_pixel_centre(seed, density):
    rng = np.random.default_rng(seed)
    obj = rng.random((14, 17)) < density
    obj[7, 8] = True
    tr = Affine(0.00009, 0, 38.0, 0, -0.000116, 31.75)  # non-square pixels (EPSG:4326)
    geom = vector.simplified_outline(obj, tr)
    assert geom.is_valid
    assert bool(shapely.contains_xy(geom, *vector.pixel_centres(obj, tr)).all())
    wgs = shape(vector.geometry_json(geom, "EPSG:4326"))
    assert wgs.is_valid


def test_geometry_json_is_rfc7946_with_seven_decimals():
    obj = np.zeros((20, 20), bool)
    obj[2:15, 2:15] = True
    obj[6:9, 6:9] = False  # a hole
    obj[17:19, 3:6] = True  # a second part
    geom = vector.geometry_json(vector.simplified_outline(obj, UTM), "EPSG:32637")
    assert geom["type"] == "MultiPolygon"
    for poly in shape(geom).geoms:
        assert poly.exterior.is_ccw and all(not r.is_ccw for r in poly.interiors)
    numbers = re.findall(r"-?\d+\.?\d*", json.dumps(geom["coordinates"]))
    assert numbers and max(len(n.split(".")[1]) if "." in n else 0 for n in numbers) <= 7
    lon, lat = geom["coordinates"][0][0][0]
    assert 30 < lon < 45 and 30 < lat < 40


def test_pixel_coordinates_keep_their_orientation():
    obj = np.zeros((10, 10), bool)
    obj[2:6, 2:8] = True
    geom = vector.geometry_json(vector.simplified_outline(obj, Affine.identity()), None)
    ring = shape(geom).exterior
    assert not ring.is_ccw  # counter-clockwise on screen, y down
    assert all(v == round(v, 3) for xy in geom["coordinates"][0] for v in xy)


def _class_pixels(out):
    with rasterio.open(out / "change_class.tif") as ds:
        cls, tr = ds.read(1), ds.transform
    return cls, tr


@pytest.mark.parametrize("site", SITES)
def test_the_polygons_cover_every_pixel_of_their_detections(sample_runs, site):
    """Each change_class pixel lies in a polygon of a detection of its class whose box holds it."""
    from rasterio.warp import transform as transform_xy

    out = sample_runs[site]
    cls, tr = _class_pixels(out)
    with rasterio.open(out / "change_class.tif") as ds:
        crs = ds.crs
    fc = json.loads((out / "detections.geojson").read_text())
    codes = {"other": 1, "trench": 2, "hut": 3, "vessel": 4}
    covered = np.zeros(cls.shape, bool)
    for feat in fc["features"]:
        p = feat["properties"]
        c0, r0, c1, r1 = p["bbox_col0"], p["bbox_row0"], p["bbox_col1"], p["bbox_row1"]
        rows, cols = np.nonzero(cls[r0:r1 + 1, c0:c1 + 1] == codes[p["class"]])
        rows, cols = rows + r0, cols + c0
        xs, ys = tr * (cols + 0.5, rows + 0.5)
        lon, lat = transform_xy(crs, "EPSG:4326", np.asarray(xs), np.asarray(ys))
        inside = shapely.contains_xy(shape(feat["geometry"]), np.asarray(lon), np.asarray(lat))
        covered[rows[inside], cols[inside]] = True
    changed = (cls > 0) & (cls < 255)
    assert changed.any()
    assert not (changed & ~covered).any(), f"{(changed & ~covered).sum()} of {changed.sum()} pixels outside"


@pytest.mark.parametrize("site", SITES)
def test_geojson_is_compact_scalar_and_seven_decimals(sample_runs, site):
    text = (sample_runs[site] / "detections.geojson").read_text()
    assert "\n" not in text.rstrip("\n") and ", " not in text and ": " not in text
    fc = json.loads(text)
    for feat in fc["features"]:
        assert all(isinstance(v, (int, float, str)) for v in feat["properties"].values())
        assert all(len(k) <= 10 for k in feat["properties"] if k != "orientation_deg")
        for poly in _polys(shape(feat["geometry"])):
            assert poly.exterior.is_ccw and all(not r.is_ccw for r in poly.interiors)
    decimals = [len(n.split(".")[1]) for n in re.findall(r"\d+\.\d+", text.split('"features"')[1])]
    assert decimals and max(decimals) <= 7


#: what the Shapefile driver makes of a field name over 10 characters (the only one)
SHAPEFILE_NAMES = {"orientation_deg": "orientatio"}


def _read_back(path):
    import pyogrio.raw

    meta, _, geometry, fields = pyogrio.raw.read(str(path))
    return list(meta["fields"]), [list(col) for col in fields], geometry


def _assert_same_properties(fc, names, columns, rename=None):
    rename = rename or {}
    keys = list(fc["features"][0]["properties"])
    assert names == [rename.get(k, k) for k in keys]
    row = {int(v): i for i, v in enumerate(columns[0])}  # FlatGeobuf orders features by its spatial index
    assert sorted(row) == sorted(f["properties"]["id"] for f in fc["features"])
    for feat in fc["features"]:
        i = row[feat["properties"]["id"]]
        for k, col in zip(keys, columns):
            want, got = feat["properties"][k], col[i]
            if isinstance(want, float):
                assert got == pytest.approx(want, rel=1e-9, abs=1e-9), k
            else:
                assert got == want, k


@pytest.mark.skipif(shutil.which("ogr2ogr") is None, reason="ogr2ogr (gdal-bin) not installed")
@pytest.mark.parametrize("driver, name, rename", [("ESRI Shapefile", "d.shp", SHAPEFILE_NAMES),
                                                  ("GPKG", "d.gpkg", None)])
def test_ogr2ogr_keeps_every_property(sample_runs, tmp_path, driver, name, rename):
    src = sample_runs["trenches"] / "detections.geojson"
    proc = subprocess.run(["ogr2ogr", "-f", driver, str(tmp_path / name), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr
    fc = json.loads(src.read_text())
    names, columns, geometry = _read_back(tmp_path / name)
    _assert_same_properties(fc, names, columns, rename)
    assert len(geometry) == len(fc["features"])


@pytest.mark.parametrize("fmt", sorted(vector.VECTOR_FORMATS))
def test_write_features_round_trips(sample_runs, tmp_path, fmt):
    fc = json.loads((sample_runs["trenches"] / "detections.geojson").read_text())
    path = tmp_path / ("d" + vector.VECTOR_FORMATS[fmt][1])
    vector.write_features(path, fc["features"], fmt, georeferenced=True)
    names, columns, geometry = _read_back(path)
    _assert_same_properties(fc, names, columns)
    by_id = {int(i): shapely.from_wkb(wkb) for i, wkb in zip(columns[0], geometry)}
    for feat in fc["features"]:
        got = by_id[feat["properties"]["id"]]
        assert got.geom_type == "MultiPolygon"
        assert got.symmetric_difference(shape(feat["geometry"])).area < 1e-14


def test_write_features_of_an_empty_run_writes_the_fields(tmp_path):
    vector.write_features(tmp_path / "e.gpkg", [], "gpkg", georeferenced=True)
    names, columns, geometry = _read_back(tmp_path / "e.gpkg")
    assert names == list(vector.EMPTY_FIELDS) and len(geometry) == 0
