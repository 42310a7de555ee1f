"""Object measures in metres on geographic grids (longitude/latitude pixels), geodesically.

On a grid in degrees a pixel is not square in metres (at 31.7 degrees north, 0.0001 x 0.0001
degrees is 8.5 m east-west by 11.1 m north-south) and its size changes with latitude, so one mean
pixel size biases lengths by the direction of the object. Here an object is measured at its own
latitude: the pixel's east-west and north-south sizes come from geodesics on the CRS's ellipsoid
(:class:`pyproj.Geod`), the region is resampled to square pixels of the smaller size before its
length, width and orientation are taken (:func:`changedet.objects.measure_shape`), and its area is
the geodesic area of its pixel outline (:meth:`pyproj.Geod.geometry_area_perimeter`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import cv2
import numpy as np
from affine import Affine

from .config import ObjectsConfig
from .objects import Shape, measure_shape


def is_geographic(crs: Any) -> bool:
    """True for a CRS in degrees (EPSG:4326 and the like)."""
    return crs is not None and bool(getattr(crs, "is_geographic", False))


def _geod(crs: Any) -> Any:
    from pyproj import CRS

    return CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs).get_geod()


def pixel_size_m(crs: Any, transform: Affine, col: float, row: float) -> tuple[float, float]:
    """East-west and north-south size in metres of the pixel at (``col``, ``row``) of a north-up geographic grid.

    Each is the geodesic length of the pixel's middle line in that direction.
    """
    geod = _geod(crs)
    lon, lat = transform * (col + 0.5, row + 0.5)
    dx, dy = abs(transform.a), abs(transform.e)
    sx = geod.inv(lon - dx / 2, lat, lon + dx / 2, lat)[2]
    sy = geod.inv(lon, lat - dy / 2, lon, lat + dy / 2)[2]
    return float(sx), float(sy)


def geodesic_area_m2(obj: np.ndarray, transform: Affine, crs: Any) -> float:
    """Area in square metres of a region's pixels on a geographic grid (geodesic, on the CRS's ellipsoid)."""
    from .vector import pixel_outline

    area, _ = _geod(crs).geometry_area_perimeter(pixel_outline(obj, transform))
    return float(abs(area))


def measure_shape_geographic(obj: np.ndarray, origin: tuple[int, int], transform: Affine, crs: Any,
                             params: ObjectsConfig | None = None) -> Shape:
    """:func:`changedet.objects.measure_shape` of a region on a north-up geographic grid, in metres.

    Parameters
    ----------
    obj : (h, w) bool region inside its crop.
    origin : (row, col) of the crop on the grid.
    transform : the grid's affine transform (degrees).
    crs : the grid's geographic CRS.
    params : thresholds (as for :func:`~changedet.objects.measure_shape`).

    Notes
    -----
    The crop is resampled (nearest neighbour) to square pixels of ``min(sx, sy)`` metres, the pixel
    sizes at the region's centre (:func:`pixel_size_m`), and measured there: a pixel's edges fall on
    the resampled pixels' edges, so the extent corrections of ``measure_shape`` hold unchanged.
    Across an object a few hundred metres long the pixel size changes by under 1e-4, well within
    the measure's own error. Area is geodesic (:func:`geodesic_area_m2`); the centroid stays in
    pixels of the grid.
    """
    rows, cols = np.nonzero(obj)
    crop_tr = transform * Affine.translation(origin[1], origin[0])
    sx, sy = pixel_size_m(crs, crop_tr, float(cols.mean()), float(rows.mean()))
    side = min(sx, sy)
    h, w = obj.shape
    size = (max(1, int(round(w * sx / side))), max(1, int(round(h * sy / side))))
    square = cv2.resize(obj.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if not square.any():
        square = obj
    shape = measure_shape(square, (0, 0), side, params)
    return replace(shape, area_m2=geodesic_area_m2(obj, crop_tr, crs),
                   centroid_px=(float(cols.mean() + origin[1]), float(rows.mean() + origin[0])))
