import json

import cv2
import numpy as np
import pytest
import rasterio
from scipy import ndimage
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


# --------------------------------------------------------------------------- weather (opt-in nuisances)

def _digest(scene) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in (scene.before, scene.after, scene.truth_class, scene.truth_instances):
        h.update(a.tobytes())
    return h.hexdigest()


# digests of make_scene(s, seed=4, size=192) as rendered before weather existed (and before objects
# were placed on their own windows): existing seeds must keep giving these exact scenes
NO_WEATHER_DIGESTS = {
    "trenches": "31c418b0e43f513d5524915e91a1daa68ce9d0a4415b0b9a95e627c61a8bcfd5",
    "camp": "023e1e6490c25460850c6acb7040bf9f770e3258d09bae306d496ab51c527a80",
    "port": "c585f41fc1e8f4b75af94afbb884f39217edc1d7a18fdf659a0ccfa14a7fdba8",
}


@pytest.mark.parametrize("scenario", synth.SCENARIOS)
def test_weather_off_leaves_scenes_as_they_were(scenario):
    plain = synth.make_scene(scenario, seed=4, size=192)
    assert _digest(plain) == NO_WEATHER_DIGESTS[scenario]
    none = synth.make_scene(scenario, seed=4, size=192, weather="none")
    assert _digest(none) == _digest(plain) and none.nuisances == plain.nuisances
    assert none.weather_mask is None and "weather" not in none.nuisances


def test_parse_weather():
    assert synth.parse_weather("none") == ()
    assert synth.parse_weather("all") == synth.WEATHER
    assert synth.parse_weather("jpeg, cloud") == ("cloud", "jpeg")
    for bad in ("fog", "", "none,cloud"):
        with pytest.raises(ValueError, match="weather"):
            synth.parse_weather(bad)


@pytest.fixture(scope="module")
def cloudy():
    return synth.make_scene("camp", seed=8, size=384, weather="cloud", shift_px=(0.0, 0.0))


def test_cloud_and_shadow_are_255_in_truth(cloudy, tmp_path):
    s, code = cloudy, cloudy.weather_mask
    rec = s.nuisances["weather"]["cloud"]
    assert 1 <= len(rec["clouds"]) <= 3
    assert (code == synth.WEATHER_CODES["cloud"]).any() and (code == synth.WEATHER_CODES["shadow"]).any()
    assert np.array_equal(s.truth_class == 255, code > 0)
    # clouds are bright and white in every band on the date they fall on
    cloud = code == synth.WEATHER_CODES["cloud"]
    for o in rec["clouds"]:
        assert all(0.5 * 0.9 <= r <= 0.9 for r in o["reflectance"])
    dates = {o["date"] for o in rec["clouds"]}
    img = s.after if dates == {"after"} else s.before if dates == {"before"} else None
    if img is not None:
        core = cloud & (ndimage.binary_erosion(cloud, iterations=6))
        assert img[:, core].mean() > 140 and img[:, ~(code > 0)].mean() < 110
    files = synth.write_scene(s, tmp_path / "c")
    with rasterio.open(files["truth_class.tif"]) as ds:
        assert np.array_equal(ds.read(1) == 255, code > 0)
    with rasterio.open(files["truth_weather.tif"]) as ds:
        assert np.array_equal(ds.read(1), code)
    meta = json.loads(files["truth.json"].read_text())
    assert meta["nuisances"]["weather"]["cloud"]["shadow_offset_px"] == rec["shadow_offset_px"]
    for o, frac in zip(meta["objects"], s.observable_fraction):
        assert o["observable_fraction"] == frac and o["observable"] == (frac > 0)


def test_shadow_is_the_cloud_displaced_by_the_recorded_vector(cloudy):
    code, (dx, dy) = cloudy.weather_mask, cloudy.nuisances["weather"]["cloud"]["shadow_offset_px"]
    assert np.hypot(dx, dy) > 5
    h, w = code.shape
    rows, cols = np.nonzero(code == synth.WEATHER_CODES["shadow"])
    src_r, src_c = rows - dy, cols - dx
    inside = (src_r >= 0) & (src_r < h) & (src_c >= 0) & (src_c < w)
    assert inside.sum() > 100
    # every shadow pixel whose source lies on the grid is cast by a cloud pixel
    assert (code[src_r[inside], src_c[inside]] == synth.WEATHER_CODES["cloud"]).all()
    # and the shadow darkens the ground on its date relative to the other date
    clouds = cloudy.nuisances["weather"]["cloud"]["clouds"]
    if {c["date"] for c in clouds} == {"after"}:
        shadow = code == synth.WEATHER_CODES["shadow"]
        assert cloudy.after[:, shadow].mean() < 0.75 * cloudy.before[:, shadow].mean()


def test_object_wholly_under_cloud_is_kept_and_not_observable():
    for seed in range(30):
        s = synth.make_scene("camp", seed=seed, size=256, weather="cloud,haze")
        if 0.0 in s.observable_fraction:
            break
    else:
        pytest.skip("no object wholly under weather in 30 seeds")
    i = s.observable_fraction.index(0.0)
    o = s.objects[i]
    assert (s.truth_instances == o.id).any() and (s.truth_class[s.truth_instances == o.id] == 255).all()


def test_thick_haze_is_255_and_recorded():
    s = synth.make_scene("trenches", seed=2, size=320, weather="haze")
    rec = s.nuisances["weather"]["haze"]
    assert rec["thick_tau_blue"] == synth.THICK_HAZE_TAU and 0.3 <= rec["peak_tau_blue"] <= 1.0
    assert np.array_equal(s.truth_class == 255, s.weather_mask == synth.WEATHER_CODES["haze"])
    assert abs((s.weather_mask > 0).mean() - rec["thick_fraction"]) < 1e-4
    plain = synth.make_scene("trenches", seed=2, size=320)
    hazy = s.after if rec["date"] == "after" else s.before
    clear = plain.after if rec["date"] == "after" else plain.before
    lift = hazy.astype(float).mean(axis=(1, 2)) - clear.astype(float).mean(axis=(1, 2))
    assert lift[2] > lift[0] > 0 and lift[2] > lift[3], "haze adds most in blue"


def test_season_is_not_change():
    plain = synth.make_scene("trenches", seed=5, size=320)
    s = synth.make_scene("trenches", seed=5, size=320, weather="season")
    rec = s.nuisances["weather"]["season"]
    assert np.array_equal(s.truth_class, plain.truth_class) and s.objects == plain.objects
    assert set(np.unique(s.truth_class)) <= {0, 1, 2, 3, 4} and not (s.weather_mask > 0).any()
    assert rec["fields_changed"] and abs(rec["vegetation_gain"]) >= 0.15
    date = rec["date"]
    other = "before" if date == "after" else "after"
    # the two dates now differ far more on unchanged ground than without season
    unchanged = s.truth_class == 0
    diff = np.abs(getattr(s, date).astype(float) - getattr(s, other).astype(float))[:, unchanged].mean()
    base = np.abs(plain.after.astype(float) - plain.before.astype(float))[:, unchanged].mean()
    assert diff > 1.2 * base


def test_jpeg_changes_pixels_not_truth():
    plain = synth.make_scene("port", seed=6, size=256)
    s = synth.make_scene("port", seed=6, size=256, weather="jpeg")
    q = s.nuisances["weather"]["jpeg"]["quality"]
    assert 40 <= q["before"] <= 60 and 40 <= q["after"] <= 60
    assert np.array_equal(s.truth_class, plain.truth_class) and np.array_equal(s.truth_instances, plain.truth_instances)
    assert not np.array_equal(s.before, plain.before) and not np.array_equal(s.after, plain.after)
    err = np.abs(s.after.astype(float) - plain.after.astype(float)).mean()
    assert 0 < err < 300, err  # artefacts, not a different scene (DN 10000 = reflectance 1)


def test_weather_kinds_draw_independently():
    a = synth.make_scene("camp", seed=9, size=256, weather="cloud")
    b = synth.make_scene("camp", seed=9, size=256, weather="cloud,jpeg")
    assert a.nuisances["weather"]["cloud"] == b.nuisances["weather"]["cloud"]
    assert np.array_equal(a.weather_mask, b.weather_mask)


def test_make_and_write_scene_report_progress_without_changing_the_scene(tmp_path):
    calls = []
    record = lambda s, d, t: calls.append((s, d, t))  # noqa: E731
    scene = synth.make_scene("camp", seed=4, size=192, progress=record)
    assert _digest(scene) == NO_WEATHER_DIGESTS["camp"]
    steps = [(d, t) for s, d, t in calls if s == "synth"]
    assert steps == [(i, steps[0][1]) for i in range(1, steps[0][1] + 1)]
    synth.write_scene(scene, tmp_path / "s", progress=record)
    assert [(d, t) for s, d, t in calls if s == "write"] == [(1, 4), (2, 4), (3, 4), (4, 4)]
