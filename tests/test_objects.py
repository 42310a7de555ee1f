import math

import cv2
import numpy as np
import pytest

from changedet import objects as O
from changedet.config import ObjectsConfig


def rect_mask(h, w, angle_deg, shape=(200, 200)):
    m = np.zeros(shape, np.uint8)
    box = cv2.boxPoints(((100, 100), (w, h), angle_deg)).astype(np.int32)
    cv2.fillPoly(m, [box], 1)
    return m.astype(bool)


def test_rectangle_geometry_in_metres():
    obj = rect_mask(20, 60, 0)  # 60 px wide (east-west), 20 px tall
    s = O.measure_shape(obj, (0, 0), gsd_m=0.5)
    assert s.length_m == pytest.approx(30.5, rel=0.05)
    assert s.width_m == pytest.approx(10.5, rel=0.08)
    assert s.orientation_deg == pytest.approx(90, abs=2)  # long axis east-west
    assert s.rectangularity > 0.9
    assert s.area_m2 == pytest.approx(obj.sum() * 0.25)


def test_winding_line_length_follows_the_skeleton():
    m = np.zeros((200, 200), np.uint8)
    pts = np.array([[10, 20], [60, 120], [110, 20], [160, 120], [190, 60]], np.int32)
    cv2.polylines(m, [pts], False, 1, thickness=3)
    path = sum(math.dist(a, b) for a, b in zip(pts[:-1], pts[1:]))
    s = O.measure_shape(m.astype(bool), (0, 0), gsd_m=1.0)
    assert s.length_m == pytest.approx(path, rel=0.1)
    assert 2.0 < s.width_m < 5.0  # cv2 draws thickness 3 as 3-4 px across


def ctx(water=0.0, before=0.0, after=5.0, score=0.8):
    return O.Context(water_frac=water, distinct_before=before, distinct_after=after, brightness_change=1.0,
                     mean_score=score)


def shape(length, width, rect=0.9):
    return O.Shape(area_m2=length * width * rect, length_m=length, width_m=width, orientation_deg=0,
                   elongation=length / width, rectangularity=rect, centroid_px=(0, 0))


@pytest.mark.parametrize("shp,context,expected", [
    (shape(60, 2, 0.8), ctx(), "trench"),
    (shape(10, 6), ctx(), "hut"),
    (shape(80, 14, 0.7), ctx(water=0.9), "vessel"),
    (shape(300, 150, 0.4), ctx(), "other"),
])
def test_rules_type_objects(shp, context, expected):
    cls, conf = O.classify(shp, context, ObjectsConfig())
    assert cls == expected
    assert 0 <= conf <= 1


def test_events_from_distinctness():
    assert O.event_of(ctx(before=0.5, after=6)) == "appeared"
    assert O.event_of(ctx(before=6, after=0.5)) == "departed"
    assert O.event_of(ctx(before=5, after=6)) == "changed"


def test_components_are_ordered_by_position():
    m = np.zeros((50, 50), np.uint8)
    m[30:35, 5:10] = 1
    m[2:6, 40:45] = 1
    labels, comps = O.components(m)
    assert [(c.row_min, c.col_min) for c in comps] == [(2, 40), (30, 5)]
    assert (labels == comps[0].label).sum() == 20


def test_small_water_is_not_water():
    w = np.zeros((100, 100), np.uint8)
    w[:60, :] = 1
    w[80:83, 80:83] = 1
    out = O.keep_large_water(w, ObjectsConfig(water_min_area_m2=100), gsd_m=1.0)
    assert out[:60].all() and not out[80:83, 80:83].any()
