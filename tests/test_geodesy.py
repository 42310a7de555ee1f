"""Object measures on EPSG:4326 grids equal their UTM measures (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from shapely.geometry import Polygon

from changedet import geodesy, objects
from changedet.io import gsd_from_grid

WGS84 = CRS.from_epsg(4326)
#: 0.00009 x 0.000116 degrees at 31.7 N: 8.5 m east-west by 12.9 m north-south
GRID = Affine(0.00009, 0, 38.0, 0, -0.000116, 31.75)
TO_UTM = Transformer.from_crs(4326, 32637, always_xy=True)
TO_LL = Transformer.from_crs(32637, 4326, always_xy=True)


def _utm_length(p, q):
    (x0, x1), (y0, y1) = TO_UTM.transform([p[0], q[0]], [p[1], q[1]])
    return float(np.hypot(x1 - x0, y1 - y0))


def test_pixel_size_of_a_degree_grid():
    sx, sy = geodesy.pixel_size_m(WGS84, GRID, 150, 150)
    assert sx == pytest.approx(8.53, abs=0.02) and sy == pytest.approx(12.86, abs=0.02)


@pytest.mark.parametrize("axis", ["north-south", "east-west"])
def test_a_band_along_a_grid_axis_has_its_utm_length(axis):
    obj = np.zeros((300, 300), bool)
    if axis == "north-south":
        obj[100:150, 148:152] = True  # 50 rows, 4 columns
        ends = [GRID * (150, 100), GRID * (150, 150)]
    else:
        obj[148:151, 100:170] = True  # 70 columns, 3 rows
        ends = [GRID * (100, 149.5), GRID * (170, 149.5)]
    want = _utm_length(*ends)
    got = geodesy.measure_shape_geographic(obj, (0, 0), GRID, WGS84)
    assert got.length_m == pytest.approx(want, rel=0.01)
    # one mean pixel size for both axes was off by a fifth (the bias issue 16 reported)
    old = objects.measure_shape(obj, (0, 0), gsd_from_grid(WGS84, GRID, 300))
    assert abs(old.length_m / want - 1) > 0.1


@pytest.mark.parametrize("angle_deg", [40, 140])
def test_a_rectangle_drawn_in_utm_keeps_its_length_and_area(angle_deg):
    cx, cy = TO_UTM.transform(*(GRID * (150, 150)))
    t = np.radians(angle_deg)
    u, v = np.array([np.sin(t), np.cos(t)]), np.array([np.cos(t), -np.sin(t)])
    corners = [np.array([cx, cy]) + a * u * 300 + b * v * 20 for a, b in [(-1, -1), (1, -1), (1, 1), (-1, 1)]]
    poly = shapely.transform(Polygon(corners), lambda xy: np.column_stack(TO_LL.transform(xy[:, 0], xy[:, 1])))
    obj = rasterio.features.rasterize([poly], out_shape=(300, 300), transform=GRID).astype(bool)
    got = geodesy.measure_shape_geographic(obj, (0, 0), GRID, WGS84)
    assert got.length_m == pytest.approx(600, rel=0.01)
    assert got.orientation_deg == pytest.approx(angle_deg, abs=2)
    # the pixels' own area, geodesic, against the same pixels' area in UTM
    rows, cols = np.nonzero(obj)
    utm_px = [Polygon([TO_UTM.transform(*(GRID * (c + dc, r + dr))) for dc, dr in [(0, 0), (1, 0), (1, 1), (0, 1)]])
              for r, c in zip(rows[:1], cols[:1])]
    assert got.area_m2 == pytest.approx(obj.sum() * utm_px[0].area, rel=0.005)
