"""Polygons of detected regions, in the grid's CRS and in EPSG:4326 (RFC 7946), and their files."""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------- detections (issue 16)

#: decimals of longitude/latitude in detections.geojson: 1 cm at the equator, finer than any pixel
DECIMALS_WGS84 = 7
#: decimals of pixel coordinates (inputs without georeferencing)
DECIMALS_PX = 3
#: Douglas-Peucker tolerances tried in turn on the half-pixel contour, in pixels; the first whose
#: outline still covers every pixel centre of the region wins (0: the contour as traced)
SIMPLIFY_TOLERANCES_PX = (0.35, 0.2, 0.0)


def pixel_outline(obj: np.ndarray, transform: Affine) -> Any:
    """Every part of a region as one shapely (Multi)Polygon of pixel edges, in ``transform``'s coordinates.

    Parameters
    ----------
    obj : (h, w) bool crop; any number of parts, 4- or 8-connected.
    transform : affine transform of the crop (pixel -> CRS coordinates).
    """
    from shapely.geometry import shape
    from shapely.ops import unary_union

    parts = [shape(g) for g, _ in shapes(obj.astype(np.uint8), mask=obj, connectivity=4, transform=transform)]
    if not parts:
        raise ValueError("pixel_outline: empty region")
    return unary_union(parts)


def pixel_centres(obj: np.ndarray, transform: Affine) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (x, y) of the centres of a region's pixels under ``transform``."""
    rows, cols = np.nonzero(obj)
    xs, ys = transform * (cols + 0.5, rows + 0.5)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def contour_outline(obj: np.ndarray, transform: Affine) -> Any:
    """A region's outline traced half-way between its pixel centres and its neighbours' (marching squares).

    Parameters
    ----------
    obj : (h, w) bool crop; any number of parts and holes.
    transform : affine transform of the crop (pixel -> CRS coordinates).

    Returns
    -------
    shapely Polygon or MultiPolygon: one polygon per 8-connected part (pixels that touch at a
    corner are joined, ``fully_connected="high"``), holes 4-connected.

    Notes
    -----
    :func:`skimage.measure.find_contours` at level 0.5 runs along pixel edges where they are
    straight and cuts each stair step of a diagonal edge at 45 degrees, so a diagonal line of pixels
    is a straight band, not a staircase; every pixel centre stays inside (at least 0.35 px from the
    line), and the area is that of the pixels within a few parts per thousand (a convex corner
    loses an eighth of a pixel, a concave one gains as much). The rings do not cross, so their
    even-odd combination (symmetric difference) nests holes and islands correctly.
    """
    import shapely
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    rings = find_contours(np.pad(obj.astype(np.float32), 1), 0.5, fully_connected="high")
    geom = Polygon()
    for ring in sorted(rings, key=len, reverse=True):
        if len(ring) < 4:
            continue
        xs, ys = transform * (ring[:, 1] - 0.5, ring[:, 0] - 0.5)  # padded centres -> crop corners
        poly = Polygon(np.column_stack([xs, ys]))
        geom = geom.symmetric_difference(poly if poly.is_valid else shapely.make_valid(poly))
    return geom


def simplified_outline(obj: np.ndarray, transform: Affine) -> Any:
    """A region's outline without the pixel staircase, still covering every one of its pixel centres.

    Parameters
    ----------
    obj : (h, w) bool crop of one detection (all its parts).
    transform : affine transform of the crop.

    Returns
    -------
    shapely Polygon or MultiPolygon in ``transform``'s coordinates.

    Notes
    -----
    The half-pixel contour (:func:`contour_outline`) is simplified by Douglas-Peucker with
    topology kept (:meth:`shapely.Geometry.simplify`, ``preserve_topology``) at the first tolerance
    of :data:`SIMPLIFY_TOLERANCES_PX` that leaves every pixel centre inside: a centre lies half a
    pixel inside a straight edge, so half a pixel would cut through centres, and 0.35 px removes
    the small zig-zags of edges at other angles than 0 and 45 degrees. Each candidate is checked
    against the centres, so coverage holds by construction; if none passes (never seen) the exact
    outline of pixel edges (:func:`pixel_outline`) is returned.
    """
    import shapely

    xs, ys = pixel_centres(obj, transform)
    px = math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))
    traced = contour_outline(obj, transform)
    for tol_px in SIMPLIFY_TOLERANCES_PX:
        cand = traced.simplify(tol_px * px, preserve_topology=True) if tol_px else traced
        if cand.is_valid and not cand.is_empty and bool(shapely.contains_xy(cand, xs, ys).all()):
            return cand
    return pixel_outline(obj, transform)


def _round_coords(geom: Any, decimals: int) -> Any:
    """GeoJSON-like nested lists with every coordinate rounded (Python's round: shortest repr)."""
    if isinstance(geom, (list, tuple)):
        if geom and isinstance(geom[0], (int, float)):
            return [round(float(v), decimals) for v in geom]
        return [_round_coords(g, decimals) for g in geom]
    return geom


def geometry_json(geom: Any, crs: Any | None, decimals: int | None = None) -> dict[str, Any]:
    """A shapely (Multi)Polygon as an RFC 7946 geometry: EPSG:4326, right-hand rule, rounded.

    Parameters
    ----------
    geom : polygon(s) in the coordinates of ``crs``.
    crs : the grid's CRS; None for pixel coordinates (kept as they are, y down, exterior rings
        clockwise on screen as before).
    decimals : rounding; default :data:`DECIMALS_WGS84` (or :data:`DECIMALS_PX` without a CRS).

    Notes
    -----
    Coordinates are snapped to the output precision with :func:`shapely.set_precision`, which
    keeps the result valid (rounding each coordinate alone can make a thin part cross itself).
    """
    import shapely
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient

    if crs is not None:
        from pyproj import Transformer

        tr = Transformer.from_crs(crs, WGS84, always_xy=True)
        geom = shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        decimals = DECIMALS_WGS84 if decimals is None else decimals
        sign = 1.0  # y (latitude) up: exterior counter-clockwise
    else:
        decimals = DECIMALS_PX if decimals is None else decimals
        sign = -1.0  # y (row) down: counter-clockwise as seen on screen
    def polygons(g: Any) -> list[Any]:
        parts = list(g.geoms) if hasattr(g, "geoms") else [g]
        return [orient(p, sign=sign) for p in parts if p.geom_type == "Polygon" and not p.is_empty]

    # a part thinner than the precision would vanish: then the unsnapped polygons are rounded
    polys = polygons(shapely.set_precision(geom, 10.0 ** -decimals)) or polygons(geom)
    if len(polys) == 1:
        out = mapping(polys[0])
    else:
        out = {"type": "MultiPolygon", "coordinates": [mapping(p)["coordinates"] for p in polys]}
    return {"type": out["type"], "coordinates": _round_coords(out["coordinates"], decimals)}


#: ``--vector-format`` choices: GDAL driver and file suffix
VECTOR_FORMATS = {"gpkg": ("GPKG", ".gpkg"), "fgb": ("FlatGeobuf", ".fgb")}


def write_features(path: Any, features: list[dict[str, Any]], fmt: str, georeferenced: bool) -> None:
    """Write GeoJSON-like features (scalar properties) to GeoPackage or FlatGeobuf with pyogrio.

    Parameters
    ----------
    path : output file (its suffix should be that of ``fmt``).
    features : the features of ``detections.geojson``; every feature has the same property keys.
    fmt : ``gpkg`` or ``fgb`` (:data:`VECTOR_FORMATS`).
    georeferenced : EPSG:4326 when true, no CRS (pixel coordinates) otherwise.

    Notes
    -----
    Every layer is MultiPolygon (``promote_to_multi``) so one layer holds detections of one part
    and of several. Integers stay int64, numbers float64, strings text; an empty run writes an
    empty layer with the same fields.
    """
    import pyogrio.raw
    import shapely
    from shapely.geometry import shape

    driver, _ = VECTOR_FORMATS[fmt]
    keys = list(features[0]["properties"]) if features else list(EMPTY_FIELDS)
    columns = []
    for k in keys:
        values = [f["properties"][k] for f in features]
        kind = EMPTY_FIELDS.get(k, object)
        if values:
            kind = int if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else \
                float if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) else object
        dtype = {int: np.int64, float: np.float64}.get(kind, object)
        columns.append(np.array(values, dtype=dtype) if values else np.array([], dtype=dtype))
    wkb = np.array([shapely.to_wkb(shape(f["geometry"])) for f in features], dtype=object)
    pyogrio.raw.write(str(path), wkb, columns, keys, driver=driver, layer="detections",
                      geometry_type="MultiPolygon", promote_to_multi=True,
                      crs=WGS84 if georeferenced else None)


#: the feature properties and their kinds (the fields of an empty layer)
EMPTY_FIELDS: dict[str, type] = {
    "id": int, "class": object, "event": object, "confidence": float, "area_m2": float, "length_m": float,
    "width_m": float, "orientation_deg": float, "centroid_x": float, "centroid_y": float,
    "bbox_col0": int, "bbox_row0": int, "bbox_col1": int, "bbox_row1": int,
}
