import math

import cv2
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

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


def ctx(water=0.0, before=0.0, after=5.0, score=0.8, brightness=-3.0):
    return O.Context(water_frac=water, distinct_before=before, distinct_after=after, brightness_change=brightness,
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


@pytest.mark.parametrize("shp,water", [(shape(60, 2, 0.8), 0.0), (shape(10, 6), 0.0), (shape(80, 14, 0.7), 0.9)])
def test_a_fragment_of_broad_change_is_never_a_hut_or_trench(shp, water):
    from dataclasses import replace

    alone, _ = O.classify(shp, replace(ctx(water=water), ring_change=0.1), ObjectsConfig())
    broad, _ = O.classify(shp, replace(ctx(water=water), ring_change=0.9), ObjectsConfig())
    assert alone in ("trench", "hut", "vessel")
    assert broad == ("vessel" if alone == "vessel" else "other")  # vessels keep their water rule


def test_what_stood_on_dry_ground_is_no_vessel():
    # a crane along a pier, water all round it: vessel-shaped, but its pixels were no water without it
    crane, context = shape(80, 4, 0.9), ctx(water=0.8, brightness=4.0)
    assert O.classify(crane, context, ObjectsConfig())[0] == "vessel"
    cls, conf = O.classify(crane, context, ObjectsConfig(), floating=False)
    assert cls == "other" and 0 <= conf <= 1
    # typing of what is not a vessel does not change
    for shp, c in [(shape(60, 2, 0.8), ctx()), (shape(10, 6), ctx())]:
        assert O.classify(shp, c, ObjectsConfig(), floating=False) == O.classify(shp, c, ObjectsConfig())


def test_small_fragments_of_broad_change_are_dropped_and_the_rest_renumbered():
    from dataclasses import replace

    def det(i, cls, area, ring):
        shp = replace(shape(10, 10), area_m2=area)
        return O.Detection(id=i, cls=cls, event="changed", confidence=0.5, shape=shp,
                           context=replace(ctx(), ring_change=ring), bbox_px=(0, 0, 1, 1), group=O.Group((i,), (), (0, 0, 1, 1)))

    dets = [det(1, "other", 200, 0.9), det(2, "hut", 30, 0.0), det(3, "other", 5000, 0.9), det(4, "other", 200, 0.1)]
    keep, drop = O.drop_small_broad(dets, ObjectsConfig(broad_min_area_m2=1000))
    assert [d.group.labels for d in drop] == [(1,)]
    assert [d.group.labels for d in keep] == [(2,), (3,), (4,)] and [d.id for d in keep] == [1, 2, 3]
    assert O.drop_small_broad(dets, ObjectsConfig(broad_min_area_m2=0))[1] == []


def test_long_thin_fragments_of_broad_change_are_left_out_only_inside_a_field_that_changed_throughout():
    from dataclasses import replace

    def det(i, before, after, level):
        return O.Detection(id=i, cls="other", event="changed", confidence=0.5, shape=shape(40, 2, 0.8),
                           context=replace(ctx(before=before, after=after), ring_change=0.9, ring_level=level),
                           bbox_px=(0, 0, 1, 1), group=O.Group((i,), (), (0, 0, 1, 1)))

    # a furrow of a ploughed field; a trench dug across it; a piece of a faint trench in speckled noise
    dets = [det(1, 0.4, 1.2, 0.95), det(2, 0.3, 6.0, 0.95), det(3, 0.4, 1.2, 0.5)]
    keep, drop = O.drop_small_broad(dets, ObjectsConfig())
    assert [d.group.labels for d in drop] == [(1,)] and [d.group.labels for d in keep] == [(2,), (3,)]
    assert O.drop_small_broad(dets, ObjectsConfig(broad_line_min_distinct=0))[1] == []
    assert len(O.drop_small_broad(dets, ObjectsConfig(broad_line_min_ring_level=0))[1]) == 2


def _field(rng, size=120, period_px=4.0):
    """A striped crop parcel: (3, size, size) grass with 8 % stripes across the columns."""
    cols = np.arange(size, dtype=np.float32)[None, None, :]
    grass = np.array([0.10, 0.16, 0.08], np.float32)[:, None, None]
    img = grass * (1 + 0.08 * np.sin(cols * 2 * np.pi / period_px)) * np.ones((1, size, 1), np.float32)
    return img + rng.normal(0, 0.004, img.shape).astype(np.float32)


def _object(region, before, after, params=None):
    """Measure, put in context, type and filter one region as ``describe_objects`` does (1 m pixels)."""
    params = params or ObjectsConfig()
    sigma = np.full(before.shape[0], 0.004 * math.sqrt(2), np.float32)
    mag = np.sqrt((((after - before) / sigma[:, None, None]) ** 2).mean(axis=0))
    score = np.clip(mag / 20.0, 0, 1)  # a stand-in for the fused score: 0.5 at 10 noise sigmas
    valid = np.ones(region.shape, bool)
    shp = O.measure_shape(region, (0, 0), 1.0, params)
    context = O.measure_context(region, before, after, valid, np.zeros_like(region), score, sigma, params)
    cls, conf = O.classify(shp, context, params)
    det = O.Detection(id=1, cls=cls, event=O.event_of(context), confidence=conf, shape=shp, context=context,
                      bbox_px=(0, 0, 1, 1), group=O.Group((1,), (), (0, 0, 1, 1)))
    kept, _ = O.drop_small_broad([det], params)
    return cls, bool(kept)


def test_a_piece_cut_out_of_a_ploughed_field_is_no_hut_or_trench_and_is_left_out():
    rng = np.random.default_rng(0)
    before = _field(rng)
    cols = np.arange(120, dtype=np.float32)[None, None, :]
    ploughed = np.array([0.22, 0.18, 0.14], np.float32)[:, None, None]
    after = ploughed * (1 + 0.25 * np.sin(cols * 2 * np.pi / 3.5)) * np.ones((1, 120, 1), np.float32)
    after += rng.normal(0, 0.004, after.shape).astype(np.float32)
    piece = np.zeros((120, 120), bool)
    piece[55:61, 30:70] = True  # 40 x 6 m across the furrows: the threshold cut it out of the field
    cls, kept = _object(piece, before, after)
    assert cls == "other" and not kept
    block = np.zeros((120, 120), bool)
    block[50:62, 50:62] = True  # a rectangle of it: hut-shaped
    cls, kept = _object(block, before, after)
    assert cls == "other" and not kept


def test_a_hut_on_a_field_is_a_hut_and_a_trench_across_a_ploughed_field_is_kept():
    rng = np.random.default_rng(1)
    before = _field(rng)
    after = before + rng.normal(0, 0.004, before.shape).astype(np.float32)
    hut = np.zeros((120, 120), bool)
    hut[50:58, 40:52] = True  # 12 x 8 m roof on an unchanged field
    after[:, hut] = np.array([0.55, 0.52, 0.50], np.float32)[:, None]
    assert _object(hut, before, after) == ("hut", True)

    cols = np.arange(120, dtype=np.float32)[None, None, :]
    ploughed = np.array([0.22, 0.18, 0.14], np.float32)[:, None, None]
    after = ploughed * (1 + 0.25 * np.sin(cols * 2 * np.pi / 3.5)) * np.ones((1, 120, 1), np.float32)
    after += rng.normal(0, 0.004, after.shape).astype(np.float32)
    trench = np.zeros((120, 120), bool)
    trench[58:61, 20:100] = True  # 80 x 3 m of dark moist earth cut across the ploughed field
    after[:, trench] = np.array([0.08, 0.07, 0.06], np.float32)[:, None]
    cls, kept = _object(trench, before, after)
    assert cls == "other" and kept  # broad change around it: not typed, but not left out either


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


def test_short_zigzag_with_a_fat_rectangle_is_measured_along_its_skeleton():
    # three legs of 20 px, 6 px thick: the minimum rectangle is about 40 x 16 px and 40% full
    m = np.zeros((120, 120), np.uint8)
    pts = np.array([[20, 40], [38, 58], [56, 40], [74, 58]], np.int32)
    cv2.polylines(m, [pts], False, 1, thickness=6)
    path = sum(math.dist(a, b) for a, b in zip(pts[:-1], pts[1:]))
    s = O.measure_shape(m.astype(bool), (0, 0), gsd_m=0.5)
    assert s.rectangularity < 0.7
    assert s.length_m == pytest.approx(0.5 * (path + 6), rel=0.15)
    assert s.width_m == pytest.approx(3.0, rel=0.3)
    cls, _ = O.classify(s, ctx(), ObjectsConfig())
    assert cls == "trench"


@pytest.mark.parametrize("w,h", [(20, 20), (30, 14), (12, 10)])
def test_compact_blocks_are_never_measured_as_lines(w, h):
    # a rough-edged block: the skeleton of a ragged outline has spurs but the block stays a block
    rng = np.random.default_rng(0)
    obj = rect_mask(h, w, 30)
    edge = obj ^ cv2.erode(obj.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    obj = obj & ~(edge & (rng.random(obj.shape) < 0.3))
    s = O.measure_shape(obj, (0, 0), gsd_m=0.5)
    assert s.length_m == pytest.approx(0.5 * max(w, h), abs=1.5)
    assert s.width_m == pytest.approx(0.5 * min(w, h), abs=1.5)


def test_holes_are_filled_before_measuring():
    obj = rect_mask(20, 60, 0)
    obj[95:105, 80:120] = False
    assert O.fill_holes(obj).sum() == rect_mask(20, 60, 0).sum()


def test_coverage_shrinks_a_blurred_mask_to_the_object():
    # a 40 x 10 px object whose change is blurred; the mask is the thresholded blur (wider)
    obj = np.zeros((60, 80), np.float32)
    obj[25:35, 20:60] = 1.0
    change = cv2.GaussianBlur(obj, (0, 0), 1.0)
    before = np.zeros((3, 60, 80), np.float32)
    after = np.stack([change * 10.0] * 3)
    mask = change > 0.15
    cover = O.coverage(mask, before, after, np.ones(3, np.float32))
    plain = O.measure_shape(mask, (0, 0), gsd_m=1.0)
    sharp = O.measure_shape(O.trim_edges(mask, cover, 0.5), (0, 0), gsd_m=1.0)
    assert plain.width_m > 11.5  # the threshold kept the blurred edge
    assert sharp.width_m == pytest.approx(10.0, abs=1.0)
    assert sharp.length_m == pytest.approx(40.0, abs=1.0)
    assert sharp.area_m2 == pytest.approx(400.0, rel=0.08)


def test_a_new_cast_shadow_is_told_from_the_roof_beside_it():
    ground = np.array([0.30, 0.26, 0.21], np.float32)
    before = np.broadcast_to(ground[:, None, None], (3, 40, 40)).copy()
    after = before.copy()
    roof = np.zeros((40, 40), bool)
    roof[10:25, 10:30] = True
    shade = np.zeros((40, 40), bool)
    shade[25:29, 12:32] = True
    shade[12:29, 30:32] = True
    after[:, roof] = np.array([0.62, 0.62, 0.64], np.float32)[:, None]
    after[:, shade] *= 0.6  # the ground keeps its colour, loses direct light
    region = roof | shade
    shadow = O.cast_shadow(region, before, after, ObjectsConfig())
    assert shadow[shade].mean() > 0.6 and not shadow[12:23, 12:28].any()
    core = O.object_core(region, shadow)
    assert (core & roof).sum() == roof.sum() and (core & shade).sum() < 0.4 * shade.sum()


def test_dark_earth_alone_is_not_a_shadow():
    # a trench of dark fresh earth dims every band alike, but it is the whole region: no shadow
    before = np.full((3, 30, 30), 0.3, np.float32)
    after = before.copy()
    obj = np.zeros((30, 30), bool)
    obj[10:14, 2:28] = True
    after[:, obj] *= 0.4
    assert not O.cast_shadow(obj, before, after, ObjectsConfig()).any()


def test_shadow_like_pixels_across_a_line_do_not_cut_it():
    # a trench in vegetation: a stretch of it dims every band alike. Leaving that stretch out would
    # measure only one end of the line, so it is the line, not a shadow beside it.
    before = np.full((3, 20, 80), 0.3, np.float32)
    after = before.copy()
    obj = np.zeros((20, 80), bool)
    obj[8:12, 4:76] = True
    after[:, obj] = np.array([0.5, 0.45, 0.35], np.float32)[:, None]  # fresh soil: its colour changes
    after[:, 8:12, 30:40] = before[:, 8:12, 30:40] * 0.6  # darker, wetter soil: dims alike
    assert not O.cast_shadow(obj, before, after, ObjectsConfig()).any()
    shape = O.measure_shape(O.object_core(obj, O.cast_shadow(obj, before, after, ObjectsConfig())), (0, 0), 1.0)
    assert shape.length_m == pytest.approx(72.0, abs=1.0)


def test_above_the_atmosphere_green_over_nir_is_not_water_unless_nir_is_dark():
    # Sentinel-2 L1C: roofs and streets have green above NIR (NDWI > 0) from path radiance; water
    # also absorbs the near infrared. Bands B G R NIR, reflectance-like
    img = np.zeros((4, 80, 80), np.float32)
    img[:, :, :40] = np.array([0.14, 0.13, 0.12, 0.11])[:, None, None]  # street: NDWI 0.08, NIR bright
    img[:, :, 40:] = np.array([0.10, 0.08, 0.05, 0.02])[:, None, None]  # river: NDWI 0.6, NIR dark
    img += np.random.default_rng(0).normal(0, 0.002, img.shape).astype(np.float32)
    params = ObjectsConfig()
    model = O.fit_water(img.reshape(4, -1), params)
    water = O.water_mask(img, img, np.ones((80, 80), bool), model, params)
    assert water[:, 45:].mean() > 0.95 and not water[:, :35].any()


def test_green_vegetation_is_not_water_without_nir():
    # RGB: dark smooth grass (G well above B) versus dark smooth water (B above G)
    img = np.zeros((3, 80, 80), np.float32)
    img[:, :, :40] = np.array([0.07, 0.11, 0.06])[:, None, None]  # grass
    img[:, :, 40:] = np.array([0.035, 0.06, 0.08])[:, None, None]  # water
    img[:, :5, :] = 0.6  # some bright ground for the brightness scale
    params = ObjectsConfig()
    model = O.fit_water(img.reshape(3, -1), params)
    assert model.nir_band is None and model.blue_band == 2
    water = O.water_mask(img, img, np.ones((80, 80), bool), model, params)
    assert water[20:, 50:].all() and not water[20:, :30].any()


def test_hut_rules_reject_a_large_irregular_clearing():
    params = ObjectsConfig()
    assert O.classify(shape(12, 6, 0.85), ctx(), params)[0] == "hut"
    assert O.classify(shape(34, 24, 0.85), ctx(), params)[0] == "other"  # longer than a hut
    assert O.classify(shape(22, 18, 0.62), ctx(), params)[0] == "other"  # not rectangular


def test_a_bright_new_line_is_not_a_trench():
    # same geometry: darkening (a cut in shadow, fresh earth) is a trench, brightening (a roof edge, a kerb) is not
    line = shape(40, 2, 0.5)
    assert O.classify(line, ctx(brightness=-3.0), ObjectsConfig())[0] == "trench"
    assert O.classify(line, ctx(brightness=3.0), ObjectsConfig())[0] == "other"
    strong, weak = (O.classify(line, ctx(brightness=b), ObjectsConfig())[1] for b in (-3.0, -0.5))
    assert strong > weak


def _supersampled_rect(length, width, angle_deg, cx=40.3, cy=39.6, shape=(80, 80), k=8):
    """Share of each pixel covered by a rotated rectangle (8x8 supersampling)."""
    big = np.zeros((shape[0] * k, shape[1] * k), np.uint8)
    box = cv2.boxPoints(((cx * k, cy * k), (length * k, width * k), angle_deg))
    cv2.fillPoly(big, [np.round(box).astype(np.int32)], 1)
    return big.reshape(shape[0], k, shape[1], k).mean(axis=(1, 3)).astype(np.float32)


@given(length=st.floats(8, 40), width=st.floats(4, 12), angle=st.floats(0, 180), blur=st.floats(0.6, 1.2))
@settings(max_examples=40, deadline=None)
def test_trimming_edges_brings_a_blurred_mask_back_to_the_object(length, width, angle, blur):
    cover_true = _supersampled_rect(max(length, width), min(length, width), angle)
    truth = cover_true >= 0.5
    change = cv2.GaussianBlur(cover_true, (0, 0), blur)
    before = np.zeros((3,) + change.shape, np.float32)
    after = np.stack([change * 10.0] * 3)
    mask = change > 0.2  # a low threshold keeps the blurred rim
    assume(mask.sum() > 1.15 * truth.sum())  # the property is about a mask that kept a rim
    trimmed = O.trim_edges(mask, O.coverage(mask, before, after, np.ones(3, np.float32)), 0.5)

    def iou(m):
        return (m & truth).sum() / (m | truth).sum()

    assert trimmed.sum() < mask.sum()
    assert iou(trimmed) > iou(mask)
    k = np.ones((3, 3), np.uint8)
    assert not (trimmed & ~cv2.dilate(truth.astype(np.uint8), k).astype(bool)).any()  # within a pixel of the object
    assert not (truth & ~cv2.dilate(trimmed.astype(np.uint8), k).astype(bool)).any()
    assert trimmed[~mask].sum() == 0  # only ever removes


def test_trimming_keeps_a_thin_line_in_one_piece():
    m = np.zeros((80, 80), np.uint8)
    cv2.polylines(m, [np.array([[5, 10], [40, 70], [75, 15]], np.int32)], False, 1, thickness=3)
    obj = m.astype(bool)
    trimmed = O.trim_edges(obj, np.zeros(obj.shape, np.float32), 0.5)  # nothing covered enough: only the skeleton stays
    n, _ = cv2.connectedComponents(trimmed.astype(np.uint8), connectivity=8)
    assert n - 1 == 1
    assert 0 < trimmed.sum() < obj.sum()
    assert O.trim_edges(obj, np.zeros(obj.shape, np.float32), 0.0) is obj


@given(length=st.floats(10, 60), width=st.floats(5, 14), angle=st.floats(0, 180))  # at least 5 px across
@settings(max_examples=60, deadline=None)
def test_width_of_a_rotated_rectangle_is_unbiased(length, width, angle):
    from skimage.draw import polygon

    from changedet.synth import _rect

    length, width = max(length, width), min(length, width)
    pts = _rect(60.3, 60.7, length, width, angle)
    m = np.zeros((130, 130), bool)
    rr, cc = polygon(pts[:, 1], pts[:, 0], m.shape)
    m[rr, cc] = True
    s = O.measure_shape(m, (0, 0), gsd_m=1.0)
    assert s.width_m == pytest.approx(width, abs=1.0)  # the extent of centres + 1 px is ~1 px too wide at 45 deg
    assert s.length_m == pytest.approx(length, abs=1.5)
    # pixels on its outline are in or out whole: a staircase edge loses up to half a pixel along
    # each side (10 x 5.25 px at 81.5 deg fills 52 of its 6 x 11 px rectangle: 0.79)
    assert s.rectangularity > 1.0 - (length + width) / (length * width)


def _line(m, pts, thickness=4):
    cv2.polylines(m, [np.array(pts, np.int32)], False, 1, thickness=thickness)


def _groups(m, water=None, gsd=0.5, **kw):
    labels, comps = O.components(m)
    water = np.zeros(m.shape, np.uint8) if water is None else water
    return O.group_fragments(labels, comps, water, gsd, ObjectsConfig(**kw)), labels


def test_a_line_cut_by_a_road_is_one_object():
    m = np.zeros((120, 200), np.uint8)
    _line(m, [(10, 60), (180, 60)])
    m[:, 95:105] = 0  # a road 10 px (5 m) wide crosses it
    groups, labels = _groups(m)
    assert len(groups) == 1 and len(groups[0].labels) == 2
    whole = O.group_mask(labels, groups[0], (0, 0) + m.shape)
    assert whole[58:62, 95:105].all()  # bridged through the road
    assert O.measure_shape(whole, (0, 0), 0.5).length_m == pytest.approx(0.5 * 174, rel=0.05)
    assert len(_groups(m, merge_max_gap_m=4.0)[0]) == 2  # the gap is wider than allowed


def test_fragments_that_do_not_continue_each_other_stay_apart():
    m = np.zeros((120, 200), np.uint8)
    _line(m, [(10, 30), (90, 30)])
    _line(m, [(100, 80), (180, 80)])  # offset sideways: the end does not point at it
    assert len(_groups(m)[0]) == 2
    m2 = np.zeros((120, 200), np.uint8)
    _line(m2, [(10, 60), (90, 60)])
    _line(m2, [(100, 10), (100, 110)])  # a line ending at the side of another: a T, not a continuation
    assert len(_groups(m2)[0]) == 2


def test_lines_are_never_bridged_over_water():
    m = np.zeros((120, 200), np.uint8)
    _line(m, [(10, 60), (90, 60)])
    _line(m, [(100, 60), (180, 60)])
    water = np.zeros_like(m)
    water[:, 91:100] = 1
    assert len(_groups(m)[0]) == 1
    assert len(_groups(m, water)[0]) == 2


def test_compact_regions_are_not_merged():
    m = np.zeros((120, 200), np.uint8)
    m[40:60, 40:60] = 1  # two huts 4 m apart
    m[40:60, 68:88] = 1
    assert len(_groups(m)[0]) == 2


def test_touching_objects_are_cut_apart_at_the_neck():
    m = np.zeros((80, 140), np.uint8)
    cv2.circle(m, (40, 40), 18, 1, -1)
    cv2.circle(m, (90, 40), 22, 1, -1)
    m[36:44, 40:90] = 1  # joined by a neck 8 px wide
    out = O.split_touching(m, 0.5, ObjectsConfig())
    n, _ = cv2.connectedComponents((out == 1).astype(np.uint8), connectivity=8)
    assert n - 1 == 2
    assert (out <= m).all() and m.sum() - out.sum() < 40  # only a thin cut is removed
    assert (O.split_touching(m, 0.5, ObjectsConfig(split_max_neck_ratio=0.0)) == m).all()


@pytest.mark.parametrize("shape", ["rectangle", "line", "zigzag", "l-shape"])
def test_single_objects_are_never_split(shape):
    m = np.zeros((120, 160), np.uint8)
    if shape == "rectangle":
        cv2.fillPoly(m, [cv2.boxPoints(((80, 60), (90, 30), 27)).astype(np.int32)], 1)
    elif shape == "line":
        _line(m, [(10, 20), (150, 100)], thickness=6)
    elif shape == "zigzag":
        _line(m, [(10, 20), (50, 100), (90, 20), (130, 100)], thickness=6)
    else:
        m[20:100, 20:50] = 1
        m[70:100, 20:140] = 1
    out = O.split_touching(m, 0.5, ObjectsConfig())
    assert (out == m).all()


def test_coverage_of_a_faint_object_is_not_biased_by_noise():
    # a bar 3 noise sigmas strong over 4 bands, outlined by a row it half covers on each side:
    # those rows read about 0.5 despite noise as strong as their change (unmixing magnitudes rather
    # than squared magnitudes read about a third); a row beside a sharp bar reads about 0
    rng = np.random.default_rng(7)
    before = rng.normal(0, 1, (4, 40, 400)).astype(np.float32)
    after = (before + rng.normal(0, 1, before.shape)).astype(np.float32)
    s = 1.5 * np.sqrt(2.0)  # 1.5 sigmas per band, 3 in all: the difference's noise is sqrt(2)
    sigma = np.full(4, np.sqrt(2.0), np.float32)
    soft = after.copy()
    soft[:, 15:25] += s
    soft[:, [14, 25]] += s / 2
    obj = np.zeros((40, 400), bool)
    obj[14:26, 5:395] = True
    half = np.median(O.coverage(obj, before, soft, sigma)[[14, 25], 20:380])
    assert 0.4 < half < 0.6
    sharp = after.copy()
    sharp[:, 14:26] += s
    wide = np.zeros((40, 400), bool)
    wide[13:27, 5:395] = True  # the threshold kept a row of noise on each side
    cover = O.coverage(wide, before, sharp, sigma)
    assert np.median(cover[[13, 26], 20:380]) < 0.25
    trimmed = O.trim_edges(wide, cover, 0.5)
    assert trimmed[[13, 26], 20:380].mean() < 0.3 and trimmed[14:26, 20:380].all()
