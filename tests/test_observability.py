"""Not observable: clouds, their shadows, haze, blown-out areas, nodata; and inputs with nothing to see."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from changedet import observability as O
from changedet.cli import app
from changedet.config import ObserveConfig, build_config
from changedet.pipeline import detect_pair

GSD = 2.0
PARAMS = ObserveConfig()
SHIFT = (-130, 80)  # where the cloud's shadow falls, (dx, dy) px


def _ground(size: int, seed: int = 0) -> np.ndarray:
    """4 bands (B G R NIR), 0..1 reflectance, textured fields and roofs."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 3)
    base = (base - base.min()) / (base.max() - base.min())
    bands = [0.05 + 0.12 * base, 0.07 + 0.12 * base, 0.06 + 0.15 * base, 0.2 + 0.2 * (1 - base)]
    img = np.stack(bands).astype(np.float32)
    img += rng.normal(0, 0.004, img.shape).astype(np.float32)
    return img


def _disk(size: int, cx: int, cy: int, r: float, soft: float) -> np.ndarray:
    yy, xx = np.indices((size, size))
    d = np.hypot(xx - cx, yy - cy)
    return np.clip((r + soft - d) / (2 * soft), 0, 1).astype(np.float32)  # 1 inside, a soft ramp at the edge


def _cloudy_pair(size: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    before = _ground(size)
    after = _ground(size) * 0.5 + before * 0.5  # the same ground, a little changed
    cloud = _disk(size, 220, 110, 45, 12)
    shadow = np.roll(np.roll(cloud, SHIFT[1], axis=0), SHIFT[0], axis=1)
    after = after * (1 - 0.6 * shadow)[None]
    after = after * (1 - cloud)[None] + 0.75 * cloud[None]
    roof = np.zeros((size, size), bool)
    roof[270:290, 250:270] = True  # a new white roof: bright, sharp, small
    after[:, roof] = 0.7
    return before, after, cloud, shadow, roof


def _scale(before: np.ndarray) -> O.Scale:
    return O.Scale.fit(before.reshape(4, -1), (2, 1, 0), 3, None)


def test_cloud_and_its_shadow_are_not_observable_a_new_roof_is():
    before, after, cloud, shadow, roof = _cloudy_pair()
    valid = np.ones(before.shape[1:], bool)
    eb, ea = O.evidence(before, after, valid, _scale(before), PARAMS)
    obs = O.resolve(eb, ea, valid, GSD, PARAMS)
    assert (obs.reason[cloud > 0.5] == O.CLOUD).mean() >= 0.95
    thick = (shadow > 0.5) & (cloud < 0.01)
    assert (obs.reason[thick] == O.CLOUD_SHADOW).mean() >= 0.95
    assert (obs.reason[roof] == O.OBSERVABLE).all()
    dx, dy = obs.shadow_offset_px[1]
    assert abs(dx - SHIFT[0]) <= 3 and abs(dy - SHIFT[1]) <= 3
    assert obs.shadow_offset_px[0] is None  # nothing on the clear date
    assert 0 < obs.observable_fraction() < 0.9


def test_a_clear_pair_is_all_observable():
    before = _ground(256, 1)
    after = before * 1.05 + np.random.default_rng(2).normal(0, 0.004, before.shape).astype(np.float32)
    valid = np.ones(before.shape[1:], bool)
    valid[:10] = False
    eb, ea = O.evidence(before, after, valid, _scale(before), PARAMS)
    obs = O.resolve(eb, ea, valid, GSD, PARAMS)
    assert (obs.reason[10:] == O.OBSERVABLE).all() and (obs.reason[:10] == O.NODATA).all()
    assert obs.areas_m2(GSD)["nodata"] == pytest.approx(10 * 256 * GSD * GSD)


def test_haze_that_hides_the_ground_is_not_observable():
    before = _ground(256, 3)
    haze = _disk(256, 128, 128, 80, 20)
    after = before * (1 - 0.85 * haze)[None] + (haze * 0.35)[None] * np.array([1.3, 1.1, 0.9, 0.6], np.float32)[:, None, None]
    valid = np.ones(before.shape[1:], bool)
    eb, ea = O.evidence(before, after, valid, _scale(before), PARAMS)
    obs = O.resolve(eb, ea, valid, GSD, PARAMS)
    assert (obs.reason[haze > 0.9] != O.OBSERVABLE).mean() >= 0.9
    yy, xx = np.indices(haze.shape)
    beyond = np.hypot(xx - 128, yy - 128) > 100 + PARAMS.buffer_m / GSD + 5  # past the veil and its buffer
    assert (obs.reason[beyond] == O.OBSERVABLE).mean() >= 0.99


@settings(max_examples=15, deadline=None)
@given(r=st.integers(0, 200), c=st.integers(0, 200), h=st.integers(20, 120), w=st.integers(20, 120))
def test_windowed_evidence_equals_whole(r, c, h, w):
    before, after, *_ = _cloudy_pair()
    valid = np.ones(before.shape[1:], bool)
    scale = _scale(before)
    whole = O.evidence(before, after, valid, scale, PARAMS)
    m = O.halo_px()
    r0, c0 = max(0, r - m), max(0, c - m)
    r1, c1 = min(320, r + h + m), min(320, c + w + m)
    part = O.evidence(before[:, r0:r1, c0:c1], after[:, r0:r1, c0:c1], valid[r0:r1, c0:c1], scale, PARAMS)
    # away from the scene's own border a window with its halo equals the whole image
    ir0, ic0 = (r - r0) if r0 > 0 else m, (c - c0) if c0 > 0 else m
    for wh, pt in zip(whole, part):
        a = wh[r0 + ir0:r + h, c0 + ic0:c + w]
        b = pt[ir0:ir0 + a.shape[0], ic0:ic0 + a.shape[1]]
        if r + h + m > 320 or c + w + m > 320:
            continue
        np.testing.assert_array_equal(a, b)


def _write(path, img, transform=Affine(GSD, 0, 500000, 0, -GSD, 4000000), **kw):
    with rasterio.open(path, "w", driver="GTiff", width=img.shape[2], height=img.shape[1], count=img.shape[0],
                       dtype=img.dtype, crs="EPSG:32637", transform=transform, **kw) as ds:
        ds.write(img)
    return path


def _dn(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 10000, 1, 65535).astype(np.uint16)


def test_detect_writes_255_under_cloud_and_reports_it(tmp_path):
    before, after, cloud, shadow, roof = _cloudy_pair()
    b = _write(tmp_path / "b.tif", _dn(before))
    a = _write(tmp_path / "a.tif", _dn(after))
    res = detect_pair(b, a, tmp_path / "out", build_config(sets=["model.enabled=false"]))
    with rasterio.open(tmp_path / "out" / "change_mask.tif") as ds:
        mask = ds.read(1)
    with rasterio.open(tmp_path / "out" / "change_class.tif") as ds:
        cls = ds.read(1)
    assert (mask[cloud > 0.5] == 255).all() and (cls[cloud > 0.5] == 255).all()
    assert (mask[(shadow > 0.5) & (cloud < 0.01)] == 255).mean() >= 0.95
    s = res.summary
    assert s["not_observable_m2"]["cloud"] >= (cloud > 0.5).sum() * GSD * GSD
    assert s["observable_fraction"] == pytest.approx((mask != 255).mean(), abs=1e-6)
    for d in s["detections"]:  # nothing is found inside what cannot be seen
        c0, r0, c1, r1 = d["bbox_px"]
        assert (mask[r0:r1 + 1, c0:c1 + 1] == 1).any()
    assert mask[roof].mean() > 0.5  # the new roof is still found


def test_observe_off_leaves_clouds_to_the_detector(tmp_path):
    before, after, cloud, *_ = _cloudy_pair()
    b = _write(tmp_path / "b.tif", _dn(before))
    a = _write(tmp_path / "a.tif", _dn(after))
    res = detect_pair(b, a, tmp_path / "out", build_config(sets=["model.enabled=false", "observe.enabled=false"]))
    assert res.summary["not_observable_m2"]["cloud"] == 0
    with rasterio.open(tmp_path / "out" / "change_mask.tif") as ds:
        assert (ds.read(1)[cloud > 0.5] == 1).mean() > 0.5


@pytest.mark.parametrize("kind", ["zero", "constant", "nodata"])
def test_an_image_with_nothing_to_see_exits_2_and_writes_nothing(tmp_path, kind):
    good = _write(tmp_path / "good.tif", _dn(_ground(64)))
    bad_img = {"zero": np.zeros((4, 64, 64), np.uint16), "constant": np.full((4, 64, 64), 812, np.uint16),
               "nodata": np.full((4, 64, 64), 9, np.uint16)}[kind]
    bad = _write(tmp_path / "bad.tif", bad_img, **({"nodata": 9} if kind == "nodata" else {}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["detect", str(bad), str(good), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nothing observable" in lines[0] and "bad.tif" in lines[0]
    assert not out.exists()


def test_zero_filled_corners_without_declared_nodata_are_nodata(tmp_path):
    img = _dn(_ground(96, 4))
    yy, xx = np.indices(img.shape[1:])
    fill = xx + yy < 40  # a scene cut from a larger product: a zero triangle in one corner, and another
    fill |= (95 - xx) + (95 - yy) < 30
    img[:, fill] = 0
    b = _write(tmp_path / "b.tif", img)
    a = _write(tmp_path / "a.tif", img.copy())
    res = detect_pair(b, a, tmp_path / "out", build_config(sets=["model.enabled=false"]))
    with rasterio.open(tmp_path / "out" / "change_mask.tif") as ds:
        mask = ds.read(1)
    assert (mask[fill] == 255).all() and (mask[~fill] != 255).mean() > 0.95
    assert any("taken as nodata" in w for w in res.summary["warnings"])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["not_observable_m2"]["nodata"] > 0


def test_a_scene_smaller_than_a_haze_patch_is_not_all_haze():
    # regression: the haze hole-filling took a whole small scene for a hole in haze
    before = _ground(64, 5)
    after = before.copy()
    after[:, 20:30, 20:30] *= 0.5  # some change, no haze anywhere
    valid = np.ones(before.shape[1:], bool)
    eb, ea = O.evidence(before, after, valid, _scale(before), PARAMS)
    assert (O.resolve(eb, ea, valid, 0.5, PARAMS).reason == O.OBSERVABLE).all()


def test_classes_too_fine_for_the_grid_are_named():
    from changedet.config import ObjectsConfig
    from changedet.objects import too_fine

    assert too_fine(0.5, ObjectsConfig()) == {}
    coarse = too_fine(10.0, ObjectsConfig())
    assert set(coarse) == {"trench", "hut", "vessel"} and "10 m pixel" in coarse["trench"]
    assert set(too_fine(1.55, ObjectsConfig())) == {"trench"}  # vessels 1.6 m, huts 2 m still resolved


def test_each_date_clips_at_its_own_level():
    """A uint8 before clips at 255; a uint16 after of the same scene (x 257) does not clip there."""
    before = (_ground(96) * 255 / 0.5).clip(0, 255).astype(np.float32)
    before[:, 10:40, 10:40] = 255.0  # blown out on before only
    after_raw = before * 257.0  # uint16 values: every pixel >= 255, none at its own clipping level
    scale = O.Scale.fit(before.reshape(4, -1), (2, 1, 0), 3, (255.0, None))
    valid = np.ones(before.shape[1:], bool)
    eb, ea = O.evidence(before, before.copy(), valid, scale, PARAMS, after_raw=after_raw)
    assert ((eb & O.SAT) > 0)[10:40, 10:40].all()
    assert ((eb & O.SAT) > 0).sum() == 30 * 30
    assert not (ea & O.SAT).any()
    both = O.Scale.fit(before.reshape(4, -1), (2, 1, 0), 3, 255.0)  # one level for both dates, as before
    eb2, ea2 = O.evidence(before, before.copy(), valid, both, PARAMS)
    assert ((ea2 & O.SAT) > 0).sum() == 30 * 30


@pytest.mark.parametrize("window", [48, 100])
def test_windows_and_memory_maps_give_the_whole_scene_reasons(tmp_path, window):
    # clouds, their shadows, saturation and nodata crossing window seams: the same reasons, offsets
    # and areas as one window over the whole scene (the whole-array computation)
    from changedet import scratch

    before, after, _, _, _ = _cloudy_pair()
    after[:, 10:40, 150:230] = 1.0  # blown out
    valid = np.ones(before.shape[1:], bool)
    valid[:, :7] = False
    eb, ea = O.evidence(before, after, valid, _scale(before), PARAMS)
    eb[5:60, 5:60] |= O.SAT  # and on the other date
    whole = O.resolve(eb, ea, valid, GSD, PARAMS, window_px=4096)
    assert {O.CLOUD, O.CLOUD_SHADOW, O.SATURATED, O.NODATA} <= set(np.unique(whole.reason))
    got = O.resolve(eb, ea, valid, GSD, PARAMS, window_px=window, scr=scratch.Scratch(tmp_path, 0))
    assert scratch.is_mapped(got.reason)
    np.testing.assert_array_equal(np.asarray(got.reason), whole.reason)
    assert got.shadow_offset_px == whole.shadow_offset_px
    assert got.areas_m2(GSD) == whole.areas_m2(GSD)


def test_haze_by_windows_equals_the_whole_scene(tmp_path):
    from changedet import scratch

    before = _ground(256, 3)
    haze = _disk(256, 128, 128, 80, 20)
    after = before * (1 - 0.85 * haze)[None] + (haze * 0.35)[None] * np.array([1.3, 1.1, 0.9, 0.6], np.float32)[:, None, None]
    valid = np.ones(before.shape[1:], bool)
    eb, ea = O.evidence(before, after, valid, _scale(before), PARAMS)
    whole = O._haze((ea & O.HAZY) > 0, GSD, PARAMS)
    assert whole.sum() > 1000
    for window in (40, 100):
        got = O._haze_windowed(ea, GSD, PARAMS, window, scratch.Scratch(tmp_path, 0))
        np.testing.assert_array_equal(np.asarray(got) > 0, whole)


def test_haze_holes_by_windows_fill_enclosed_gaps_only(tmp_path):
    from changedet import scratch

    ev = np.zeros((200, 230), np.uint8)
    ev[0:180, 20:200] = O.HAZY
    ev[90:100, 90:100] = 0  # an enclosed gap: filled
    ev[0:60, 120:130] = 0  # a notch from the scene's edge: left
    whole = O._haze((ev & O.HAZY) > 0, GSD, PARAMS)
    assert whole[95, 95] and not whole[10, 125]
    got = O._haze_windowed(ev, GSD, PARAMS, 48, scratch.Scratch(tmp_path, 0))
    np.testing.assert_array_equal(np.asarray(got) > 0, whole)
