"""Polygons of detected regions, in the grid's CRS and in EPSG:4326 (RFC 7946)."""

from __future__ import annotations

from typing import Any

import numpy as np
from affine import Affine
from rasterio.features import shapes
from rasterio.warp import transform as transform_xy
from rasterio.warp import transform_geom

WGS84 = "EPSG:4326"


def _ring_area(ring: list[list[float]]) -> float:
    x = np.array([p[0] for p in ring])
    y = np.array([p[1] for p in ring])
    return float(0.5 * np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _orient(geom: dict[str, Any], y_up: bool) -> dict[str, Any]:
    """Exterior ring counter-clockwise, holes clockwise (RFC 7946 section 3.1.6)."""
    rings = []
    for i, ring in enumerate(geom["coordinates"]):
        ring = [list(p) for p in ring]
        ccw = _ring_area(ring) > 0
        if not y_up:
            ccw = not ccw
        if ccw != (i == 0):
            ring = ring[::-1]
        rings.append(ring)
    return {"type": "Polygon", "coordinates": rings}


def region_polygon(obj: np.ndarray, transform: Affine) -> dict[str, Any]:
    """Outline of one region as a GeoJSON Polygon in the coordinates of ``transform``.

    Parameters
    ----------
    obj : (h, w) bool crop holding one 8-connected region.
    transform : affine transform of the crop (pixel -> CRS coordinates).

    Notes
    -----
    Pixel edges are traced by GDAL's polygonize; of several parts (pixels that
    touch only at a corner) the largest is kept, with its holes.
    """
    best: dict[str, Any] | None = None
    best_area = -1.0
    for geom, _ in shapes(obj.astype(np.uint8), mask=obj, connectivity=4, transform=transform):
        area = abs(_ring_area(geom["coordinates"][0]))
        if area > best_area:
            best, best_area = geom, area
    if best is None:
        raise ValueError("region_polygon: empty region")
    return best


def to_wgs84(geom: dict[str, Any], crs: Any, decimals: int = 8) -> dict[str, Any]:
    """Reproject a polygon to EPSG:4326 (lon, lat), rounded for stable output."""
    out = transform_geom(crs, WGS84, geom)
    rings = [[[round(float(x), decimals), round(float(y), decimals)] for x, y in ring]
             for ring in out["coordinates"]]
    return _orient({"type": "Polygon", "coordinates": rings}, y_up=True)


def pixel_polygon(geom: dict[str, Any]) -> dict[str, Any]:
    """A polygon left in pixel coordinates (inputs without georeferencing)."""
    rings = [[[round(float(x), 3), round(float(y), 3)] for x, y in ring] for ring in geom["coordinates"]]
    return _orient({"type": "Polygon", "coordinates": rings}, y_up=False)


def point_to_wgs84(x: float, y: float, crs: Any, decimals: int = 8) -> list[float]:
    """One CRS point as [lon, lat]."""
    xs, ys = transform_xy(crs, WGS84, [x], [y])
    return [round(float(xs[0]), decimals), round(float(ys[0]), decimals)]


def feature_collection(features: list[dict[str, Any]], georeferenced: bool) -> dict[str, Any]:
    """The FeatureCollection of the contract (``"crs": null`` for pixel coordinates)."""
    fc: dict[str, Any] = {"type": "FeatureCollection"}
    if not georeferenced:
        fc["crs"] = None
    fc["features"] = features
    return fc
