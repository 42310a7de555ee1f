import json

import numpy as np
import pytest
import rasterio

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
