import json

import cv2
import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet import synth
from changedet.registration import phase_shift, refine_lk


@pytest.fixture(scope="module")
def scenes():
    return {s: synth.make_scene(s, seed=3, size=256) for s in synth.SCENARIOS}


def test_deterministic_and_seeded():
    a = synth.make_scene("camp", seed=5, size=160)
    b = synth.make_scene("camp", seed=5, size=160)
    c = synth.make_scene("camp", seed=6, size=160)
    assert np.array_equal(a.before, b.before) and np.array_equal(a.after, b.after) and a.objects == b.objects
    assert not np.array_equal(a.before, c.before)


@pytest.mark.parametrize("scenario,bands,dtype", [("trenches", 4, np.uint16), ("camp", 3, np.uint8),
                                                  ("port", 4, np.uint16)])
def test_shapes_codes_and_instances(scenes, scenario, bands, dtype):
    s = scenes[scenario]
    assert s.before.shape == s.after.shape == (bands, 256, 256) and s.before.dtype == dtype
    assert set(np.unique(s.truth_class)) <= {0, 1, 2, 3, 4}
    assert s.objects, "every scene has changes"
    assert set(np.unique(s.truth_instances)) - {0} == {o.id for o in s.objects}
    for o in s.objects:
        rows, cols = np.nonzero(s.truth_instances == o.id)
        assert (s.truth_class[rows, cols] == synth.CLASS_CODES[o.cls]).all()
        assert o.bbox_px == (cols.min(), rows.min(), cols.max(), rows.max())
        assert o.length_m >= o.width_m > 0


def test_scenario_contents(scenes):
    assert {o.cls for o in scenes["trenches"].objects} >= {"trench"}
    assert {o.cls for o in scenes["camp"].objects} >= {"hut"}
    port = scenes["port"]
    assert {o.cls for o in port.objects} == {"vessel"}
    nir = port.before[3].astype(float)
    for o in port.objects:
        c0, r0, c1, r1 = o.bbox_px
        ring = np.ones_like(nir, bool)
        ring[max(r0 - 4, 0):r1 + 5, max(c0 - 4, 0):c1 + 5] = False
        ring[: max(r0 - 8, 0)] = ring[r1 + 9:] = False
        ring[:, : max(c0 - 8, 0)] = ring[:, c1 + 9:] = False
        assert np.median(nir[ring]) < np.percentile(nir, 30), "vessels lie on dark water"
    events = {o.event for s in range(6) for o in synth.make_scene("port", seed=s, size=256).objects}
    assert events == {"appeared", "departed"}


def test_shift_convention_holds(scenes):
    s = scenes["camp"]
    ref = s.before.astype(np.float32).mean(axis=0)
    tgt = s.after.astype(np.float32).mean(axis=0)
    dx, dy, _ = refine_lk(ref, tgt, *phase_shift(ref, tgt, 100))
    assert abs(dx - s.shift_px[0]) < 0.2 and abs(dy - s.shift_px[1]) < 0.2


def test_write_scene_round_trip(tmp_path, scenes):
    s = scenes["port"]
    files = synth.write_scene(s, tmp_path / "port")
    with rasterio.open(files["before.tif"]) as b, rasterio.open(files["after.tif"]) as a:
        assert np.array_equal(b.read(), s.before) and np.array_equal(a.read(), s.after)
        assert b.crs.to_string() == s.crs and b.transform == s.transform == a.transform
        assert b.descriptions == s.band_names
    with rasterio.open(files["truth_class.tif"]) as t:
        assert np.array_equal(t.read(1), s.truth_class)
    meta = json.loads(files["truth.json"].read_text())
    assert meta["shift_px"] == list(s.shift_px) and len(meta["objects"]) == len(s.objects)
    assert sum(meta["counts"].values()) == len(s.objects)
    assert not list((tmp_path / "port").glob(".*tmp"))


@pytest.mark.parametrize("kwargs,match", [({"scenario": "volcano"}, "scenario"), ({"size": 64}, "size"),
                                          ({"difficulty": "insane"}, "difficulty")])
def test_bad_arguments(kwargs, match):
    args = {"scenario": "camp", **kwargs}
    with pytest.raises(ValueError, match=match):
        synth.make_scene(**args)


# --------------------------------------------------------------------------- rasterisation by pixel centre

def _seg_dist(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points (xs, ys) to the segment a-b (brute force reference)."""
    d = b - a
    len2 = float(d @ d)
    t = np.zeros_like(xs) if len2 == 0 else np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / len2, 0, 1)
    return np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1])


_coord = st.floats(14.0, 50.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(cx=_coord, cy=_coord, length=st.floats(1.0, 24.0), width=st.floats(0.5, 12.0),
       angle=st.floats(0.0, 180.0))
def test_poly_mask_paints_pixels_whose_centre_is_inside(cx, cy, length, width, angle):
    """A pixel is painted exactly when its centre (x = col, y = row) lies inside the rectangle."""
    mask = synth._poly_mask((64, 64), synth._rect(cx, cy, length, width, angle))
    a = np.radians(angle)
    ys, xs = np.mgrid[0:64, 0:64].astype(float)
    along = (xs - cx) * np.sin(a) - (ys - cy) * np.cos(a)
    across = (xs - cx) * np.cos(a) + (ys - cy) * np.sin(a)
    margin = np.minimum(length / 2 - np.abs(along), width / 2 - np.abs(across))
    clear = np.abs(margin) > 1e-6  # centres on the outline may go either way
    assert np.array_equal(mask[clear], (margin > 0)[clear])


@settings(max_examples=100, deadline=None)
@given(pts=st.lists(st.tuples(_coord, _coord), min_size=2, max_size=4), width=st.floats(0.5, 9.0))
def test_line_mask_paints_pixels_within_half_width(pts, width):
    """A pixel is painted exactly when its centre is within width / 2 of the polyline."""
    p = np.array(pts, float)
    mask = synth._line_mask((64, 64), p, width)
    ys, xs = np.mgrid[0:64, 0:64].astype(float)
    dist = np.min([_seg_dist(xs, ys, a, b) for a, b in zip(p[:-1], p[1:])], axis=0)
    clear = np.abs(dist - width / 2) > 1e-6
    assert np.array_equal(mask[clear], (dist <= width / 2)[clear])


def test_painted_area_is_the_nominal_area_on_average():
    """Over random sub-pixel placements and angles the painted area has no bias (an outline fill has +20 %)."""
    rng = np.random.default_rng(2024)
    rect_err, line_err = [], []
    for _ in range(400):
        length, width, angle = rng.uniform(4, 40), rng.uniform(2, 12), rng.uniform(0, 180)
        width = min(width, length)
        cx, cy = 40 + rng.uniform(0, 1, 2)
        n = synth._poly_mask((80, 80), synth._rect(cx, cy, length, width, angle)).sum()
        rect_err.append((n - length * width) / (length * width))
        w, th = rng.uniform(1.5, 8.0), rng.uniform(0, 2 * np.pi)
        a = np.array([cx, cy]) - length / 2 * np.array([np.cos(th), np.sin(th)])
        b = a + length * np.array([np.cos(th), np.sin(th)])
        nominal = length * w + np.pi * w * w / 4  # a stadium: the band plus two half-disc caps
        line_err.append((synth._line_mask((80, 80), np.array([a, b]), w).sum() - nominal) / nominal)
    assert abs(np.mean(rect_err)) < 0.01 and abs(np.mean(line_err)) < 0.01
    assert np.percentile(np.abs(rect_err), 90) < 0.15 and np.percentile(np.abs(line_err), 90) < 0.15


def _painted_vs_truth(tmp_path):
    """Per class, relative differences between each object's painted mask and its truth.json size."""
    rel: dict[str, dict[str, list[float]]] = {}
    for scenario in synth.SCENARIOS:
        for difficulty in ("medium", "hard"):
            for seed in (41, 42):
                files = synth.write_scene(synth.make_scene(scenario, seed=seed, size=256, difficulty=difficulty),
                                          tmp_path / f"{scenario}_{difficulty}_{seed}")
                meta = json.loads(files["truth.json"].read_text())
                with rasterio.open(files["truth_instances.tif"]) as ds:
                    inst = ds.read(1)
                gsd = meta["gsd_m"]
                for o in meta["objects"]:
                    rows, cols = np.nonzero(inst == o["id"])
                    length, width = o["length_m"] / gsd, o["width_m"] / gsd
                    r = rel.setdefault(o["class"], {"width": [], "length": [], "area": []})
                    if o["class"] == "trench":
                        # a polyline of width w with round caps: area = path * w + pi w^2 / 4, path = length - w
                        r["width"].append((rows.size - np.pi * width ** 2 / 4) / (length - width) / width - 1)
                        continue
                    # the minimum-area rectangle of the painted pixel centres
                    (_, _), (e1, e2), _ = cv2.minAreaRect(np.column_stack([cols, rows]).astype(np.float32))
                    r["width"].append(min(e1, e2) / width - 1)
                    r["length"].append(max(e1, e2) / length - 1)
                    if o["class"] in ("hut", "vessel"):
                        nominal = length * width - (0.6 * width * width if o["class"] == "vessel" else 0.0)
                        r["area"].append(rows.size / nominal - 1)
                    assert abs(o["area_m2"] - rows.size * gsd * gsd) < 1e-3
    return rel


def test_truth_sizes_describe_the_painted_objects(tmp_path):
    """truth.json's width (and length, area) of huts, vessels and trenches is that of their painted mask."""
    rel = _painted_vs_truth(tmp_path)
    assert {"trench", "hut", "vessel"} <= set(rel)
    for cls in ("trench", "hut", "vessel"):
        assert abs(np.median(rel[cls]["width"])) < 0.04, (cls, "width", np.median(rel[cls]["width"]))
    for cls in ("hut", "vessel"):
        assert abs(np.median(rel[cls]["area"])) < 0.02, (cls, "area", np.median(rel[cls]["area"]))
    # centres span a pixel less than the outline; a hull also loses the last centres of its pointed bow
    assert abs(np.median(rel["hut"]["length"])) < 0.04, np.median(rel["hut"]["length"])
    assert -0.08 < np.median(rel["vessel"]["length"]) < 0.02, np.median(rel["vessel"]["length"])
