"""detections.geojson: valid polygons inside the tile footprint in EPSG:4326 (issue 5, criterion 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
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
        assert geom.geom_type == "Polygon" and geom.is_valid and geom.area > 0, feat["id"]
        assert footprint.contains(geom), feat["id"]
        assert footprint.contains(shape({"type": "Point", "coordinates": feat["properties"]["centroid"]}))


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
