"""``changedet series`` (issue 14): dates, presence per date, tracks, the contract, errors."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import rasterio
from affine import Affine
from typer.testing import CliRunner

from changedet.cli import app
from changedet.errors import InputError
from changedet.series import OUTPUT_FILES, series_schema
from changedet.series import background, presence, tracks
from changedet.series.dates import date_from_name, date_from_tag, discover, pick_reference

from .series_fixture import dates, make_series

runner = CliRunner()
FAST = ["--set", "registration.grid=3"]
VESSEL_DATES = (1, 2, 5)
EXTENSION_DATES = (3,)  # a structure present on one date, gone on the next
CLOUDY = (4,)
N = 7


def _run(args):
    return runner.invoke(app, ["series", *[str(a) for a in args], *FAST])


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    paths = make_series(root / "images", n=N, vessel_dates=VESSEL_DATES, hut_dates=EXTENSION_DATES, cloudy=CLOUDY)
    folder_out = root / "from_folder"
    res = _run([root / "images", "--out", folder_out, "--site", "quay"])
    assert res.exit_code == 0, res.output
    shuffled = [paths[i] for i in np.random.default_rng(3).permutation(len(paths))]
    shuffled_out = root / "shuffled"
    res = _run([*shuffled, "--out", shuffled_out, "--site", "quay"])
    assert res.exit_code == 0, res.output
    small_out = root / "small_windows"  # windows of about 100 px instead of the whole tile
    res = _run([root / "images", "--out", small_out, "--site", "quay", "--set", "series.memory_mb=8"])
    assert res.exit_code == 0, res.output
    return folder_out, shuffled_out, small_out


def _presence(out):
    lines = (out / "presence.csv").read_text().splitlines()
    return lines[0].split(","), [ln.split(",") for ln in lines[1:]]


# --------------------------------------------------------------------------- dates


def test_dates_from_tag_and_name():
    assert date_from_tag("2024:10:17 12:00:00") == dt.date(2024, 10, 17)
    assert date_from_tag("2024-10-17T12:00:00Z") == dt.date(2024, 10, 17)
    assert date_from_tag("yesterday") is None
    assert date_from_name("site_2024-10-17_x.tif") == dt.date(2024, 10, 17)
    assert date_from_name("S2_20241017_T37.tif") == dt.date(2024, 10, 17)
    assert date_from_name("20241017_20241018.tif") is None  # ambiguous
    assert date_from_name("img_20241399.tif") is None  # not a date


def test_manifest_before_tag_before_filename(tmp_path):
    paths = make_series(tmp_path, n=3, vessel_dates=(), hut_dates=(), size=64)
    # tags say 2024-10-01/04/07; rename the last to carry another date in its name: the tag wins
    renamed = paths[2].with_name("2030-01-01.tif")
    paths[2].rename(renamed)
    found, _ = discover([tmp_path])
    assert [im.date for im in found] == dates(3)
    assert {im.source for im in found} == {"tag"}
    (tmp_path / "m.yaml").write_text(
        "images:\n"
        f"  - {{path: {paths[0].name}, date: 2023-05-05}}\n"
        f"  - {{path: {paths[1].name}}}\n"
        f"  - {{path: {renamed.name}, date: '2023-06-01'}}\n"
        "config: {series: {min_observable_fraction: 0.4}}\n")
    found, cfg = discover([tmp_path / "m.yaml"])
    assert [im.date for im in found] == [dt.date(2023, 5, 5), dt.date(2023, 6, 1), dates(3)[1]]
    assert [im.source for im in found] == ["manifest", "manifest", "tag"]
    assert cfg == {"series": {"min_observable_fraction": 0.4}}
    assert pick_reference(found, "2023-06-01") == 1
    assert pick_reference(found, str(renamed)) == 1


def test_filename_date_when_untagged(tmp_path):
    make_series(tmp_path, n=2, vessel_dates=(), hut_dates=(), tag=False, size=64)
    found, _ = discover([tmp_path])
    assert [im.source for im in found] == ["filename", "filename"]


@pytest.mark.parametrize("case", ["undated", "same_date", "one_date"])
def test_discover_errors_name_the_file(tmp_path, case):
    if case == "undated":
        paths = make_series(tmp_path, n=2, vessel_dates=(), hut_dates=(), tag=False, name_dates=False, size=64)
        with pytest.raises(InputError, match=paths[0].name):
            discover([tmp_path])
    elif case == "same_date":
        paths = make_series(tmp_path, n=2, vessel_dates=(), hut_dates=(), tag=False, size=64)
        twin = tmp_path / "copy_of_2024-10-01.tif"
        shutil.copy(paths[0], twin)
        with pytest.raises(InputError, match="same date"):
            discover([tmp_path])
    else:
        paths = make_series(tmp_path, n=1, vessel_dates=(), hut_dates=(), size=64)
        with pytest.raises(InputError, match="at least 2 dates"):
            discover([paths[0]])


# --------------------------------------------------------------------------- pure stages


def test_temporal_median_uses_observable_dates_only():
    stack = np.zeros((5, 1, 2, 2), np.float32)
    stack[:, 0, 0, 0] = [1, 2, 3, 100, 100]
    use = np.ones((5, 2, 2), bool)
    use[3:, 0, 0] = False  # the two bright dates are clouds there
    med = background.temporal_median(stack, use)
    assert med[0, 0, 0] == 2
    with pytest.raises(ValueError):
        background.temporal_median(stack, use[:, 0])


def test_states_persistent_structure_present_after_it_appears():
    # a hut built on date 3 of 10: in the median, so dates 0-2 stand out (by its absence)
    n = 10
    con = np.zeros((n, 4))
    con[3:] = 30.0
    stood = np.zeros(n, bool)
    stood[:3] = True
    st_ = presence.decide_states(con, np.ones(n, bool), stood, 2.0)
    assert st_ is not None and not st_.object_is_new
    assert np.flatnonzero(st_.present).tolist() == list(range(3, n))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(8, 30), frac=st.floats(0.2, 0.8), seed=st.integers(0, 10_000))
def test_lasting_step_found_at_its_date(n, frac, seed):
    # a structure built on date k: every pixel of it steps by 10 sigma there, the rest is noise
    rng = np.random.default_rng(seed)
    k = min(max(2, int(round(frac * n))), n - 2)
    stack = rng.normal(0, 1, (n, 2, 6, 6)).astype(np.float32)
    stack[k:, :, :3] += 10.0
    use = np.ones((n, 6, 6), bool)
    step, after = background.lasting_step(stack, use, np.ones(2), 3.0, 4.0)
    assert step[:3].all() and (after[:3] == k).all()
    assert not step[3:].any()


def _blob(shape, centre, radius, seed):
    """A ragged disk (bool): a radius that wanders by up to a third around the circle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    ang = np.arctan2(yy - centre[0], xx - centre[1])
    wobble = sum(rng.uniform(0.08, 0.15) * np.sin(k * ang + rng.uniform(0, 6.3)) for k in (3, 5, 7))
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius * (1 + wobble)


@pytest.mark.parametrize("radius", [20, 30])
def test_passing_cloud_on_one_date_only(radius):
    core_bit, rim_bit = 1, 2
    shape = (140, 140)
    cloud = _blob(shape, (70, 70), radius, radius)
    bits = np.where(cloud, core_bit | rim_bit, 0).astype(np.uint8)
    quiet = np.zeros(shape, np.uint8)
    min_px = 12
    got = background.passing_clouds(bits, [quiet, quiet], core_bit, rim_bit, min_px, 0.8)
    assert got[cloud].all() and not got[~cloud].any()
    # bright on the next date as well: it lasts (a new roof, a paved yard), not a cloud here
    assert not background.passing_clouds(bits, [quiet, bits], core_bit, rim_bit, min_px, 0.8).any()
    # a hull or roof moored for one date fills its rectangle; a boom is thinner than the disk
    hull = np.zeros(shape, np.uint8)
    hull[40:40 + 2 * radius, 10:130] = core_bit | rim_bit
    assert not background.passing_clouds(hull, [quiet, quiet], core_bit, rim_bit, min_px, 0.8).any()
    boom = np.zeros(shape, np.uint8)
    boom[65:65 + min_px, 10:130] = core_bit | rim_bit
    boom[10:130, 65:65 + min_px] = core_bit | rim_bit
    assert not background.passing_clouds(boom, [quiet, quiet], core_bit, rim_bit, min_px, 0.8).any()
    # the rule off
    assert not background.passing_clouds(bits, [quiet], core_bit, rim_bit, 0, 0.8).any()


def test_an_empty_berth_is_no_cloud_shadow():
    """Against the median of the dates a berth left empty is dark on every date its vessel is away;
    only a dark region the dates before and after do not share can be a passing cloud's shadow."""
    from changedet import observability
    from changedet.config import ObserveConfig
    shape, gsd = (300, 300), 1.0
    cloud = _blob(shape, (220, 60), 45, 3)
    berth = np.zeros(shape, bool)
    berth[100:130, 160:290] = True  # larger than shadow_min_area_m2, far from the cloud
    dark = observability.DARK
    bits = np.where(cloud, observability.CORE | observability.RIM, 0).astype(np.uint8)
    bits[berth] |= dark
    away = np.where(berth, dark, 0).astype(np.uint8)  # the next date: the vessel is still away
    quiet = np.zeros(shape, np.uint8)
    params = ObserveConfig(shadow_max_offset_m=400.0)
    valid = np.ones(shape, bool)

    def shadow(ev):
        return observability.resolve(np.zeros_like(ev), ev, valid, gsd, params).reason == observability.CLOUD_SHADOW

    assert shadow(bits)[berth].mean() > 0.5  # the search lays the cloud on the rare dark pixels
    kept = background.passing_dark(bits, [quiet, away], dark)
    assert not shadow(kept).any()
    assert np.array_equal(kept & ~np.uint8(dark), bits & ~np.uint8(dark))  # only the dark bit goes
    # a region dark on this date only is kept: the cloud's real shadow
    real = np.roll(cloud, 150, axis=1)  # beside its cloud, apart from the berth
    both = bits | np.where(real, dark, 0).astype(np.uint8)
    kept = background.passing_dark(both, [quiet, away], dark)
    assert np.array_equal((kept & dark) > 0, real)
    assert np.array_equal(background.passing_dark(bits, [], dark), bits)


def test_lasting_step_ignores_slow_drift_and_unusable_dates():
    n = 20
    drift = np.linspace(0, 12, n, dtype=np.float32)  # the season: 12 sigma over the series, no step
    stack = np.broadcast_to(drift[:, None, None, None], (n, 1, 2, 2)).copy()
    use = np.ones((n, 2, 2), bool)
    step, _ = background.lasting_step(stack, use, np.ones(1), 3.0, 4.0)
    assert not step.any()
    # a step hidden under clouds on the dates around it is still dated by the usable ones
    flat = np.zeros((n, 1, 2, 2), np.float32)
    flat[10:] = 8.0
    use[8:12] = False
    step, after = background.lasting_step(flat, use, np.ones(1), 3.0, 4.0)
    assert step.all() and (after == 12).all()
    bg = background.step_background(flat, use, step, after)
    assert np.all(bg == 0.0)  # the side with more usable dates (8 before, 8 after: before)


def test_smoothed_sigma_resists_objects():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.0, (3, 20_000))
    x[:, :4000] += 50.0  # a fifth of the samples on objects
    sig = background.smoothed_sigma(x)
    assert np.all(np.abs(sig - 2.0) < 0.8)
    assert background.smoothed_sigma(np.zeros((2, 0))).shape == (2,)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), side=st.integers(1, 17), step=st.integers(1, 6))
def test_sample_grid_windowed_equals_whole(h, w, side, step):
    whole = {(r, c) for r in range(0, h, step) for c in range(0, w, step)}
    got = set()
    for r0 in range(0, h, side):
        for c0 in range(0, w, side):
            box = (r0, c0, min(side, h - r0), min(side, w - c0))
            rows, cols = background.sample_grid(box, step)
            got |= {(r0 + int(r), c0 + int(c)) for r in rows for c in cols}
    assert got == whole


def test_states_faint_structure_in_varied_surroundings():
    # a trench across a field edge: its ring differs from it on every date (side ~2), yet its
    # contrast falls into two tight groups, built on date 12 of 24
    rng = np.random.default_rng(3)
    n = 24
    con = np.array([-1.0, 0.5, 0.2]) + rng.normal(0, 0.05, (n, 3))
    con[12:] += np.array([-1.0, -1.5, -0.8])
    side = np.where(np.arange(n) >= 12, 2.4, 1.9) + rng.normal(0, 0.05, n)
    stood = np.arange(n) >= 12
    st_ = presence.decide_states(con, np.ones(n, bool), stood, 1.5, side, 4.0)
    assert st_ is not None and np.flatnonzero(st_.present).tolist() == list(range(12, n))
    # the side's cue too faint to split on (it only tells which group is the object): from the
    # contrasts' two tight groups
    flat = 2.0 + 0.4 * (np.arange(n) >= 12) + rng.normal(0, 0.3, n)
    st_ = presence.decide_states(con, np.ones(n, bool), stood, 1.5, flat, 4.0)
    assert st_ is not None and np.flatnonzero(st_.present).tolist() == list(range(12, n))
    # one state's scatter, or a slow drift: no object
    noise = np.array([-1.0, 0.5, 0.2]) + rng.normal(0, 0.3, (n, 3))
    assert presence.decide_states(noise, np.ones(n, bool), stood, 1.5, flat, 4.0) is None
    drift = np.linspace(0, 3, n)[:, None] * np.ones(3)
    assert presence.decide_states(drift, np.ones(n, bool), stood, 1.5, np.linspace(1, 2, n), 4.0) is None


def _cand(r, c, h, w):
    return presence.Candidate(r, c, np.ones((h, w), bool), [])


def test_fallback_split_needs_an_object_unlike_its_ring():
    # a patch of water within a berth: its contrast to the ring falls into tight groups as hulls of
    # several sizes moor beside it, but on every date it is like one side of its ring (water beside
    # water, hull beside hull): not an object
    rng = np.random.default_rng(5)
    n = 24
    con = np.array([5.6, 0.0, 0.0]) + rng.normal(0, 0.05, (n, 3))
    con[4:9] += np.array([28.0, 5.0, 0.0])
    side = 0.2 + rng.normal(0, 0.05, n)
    stood = np.zeros(n, bool)
    stood[[0, 2, 11, 17]] = True
    assert presence.decide_states(con, np.ones(n, bool), stood, 1.5, side, 4.0) is None
    # the same contrasts with the object unlike every side of its ring on those dates: found
    side[4:9] = 3.0 + rng.normal(0, 0.05, 5)
    got = presence.decide_states(con, np.ones(n, bool), stood, 1.5, side, 4.0)
    assert got is not None and np.flatnonzero(got.present).tolist() == list(range(4, 9))


def _dug(seed, n, first, empty, step, noise, side_empty, side_dug, side_noise):
    """Contrasts (n, 3) and side distances (n,) of a structure present from date ``first``."""
    rng = np.random.default_rng(seed)
    con = np.array(empty) + rng.normal(0, noise, (n, 3))
    con[first:] += np.array(step)
    side = np.where(np.arange(n) >= first, side_dug, side_empty) + rng.normal(0, side_noise, n)
    return rng, con, side, np.arange(n) >= first


def _present_dates(con, side, stood):
    got = presence.decide_states(con, np.ones(len(side), bool), stood, 1.5, side, 4.0)
    return None if got is None else np.flatnonzero(got.present).tolist()


def test_faint_trench_unlike_its_ring_only_since_it_was_dug():
    # a faint trench dug into a field on date 14: always a little unlike the field's sides (its
    # footprint holds some texture), more so since it was dug, but less than min_separation
    n = 28
    rng, con, side, stood = _dug(11, n, 14, [3.3, 0.5, -0.5], [2.3, 0.6, -0.4], 0.1, 0.8, 1.3, 0.05)
    assert _present_dates(con, side, stood) == list(range(14, n))
    # the same contrasts with the sides as like the footprint on every date: a patch of the field
    flat = 0.8 + rng.normal(0, 0.05, n)
    assert presence.decide_states(con, np.ones(n, bool), stood, 1.5, flat, 4.0) is None


def test_dates_a_trench_is_less_unlike_its_nearest_side_stay_present():
    # a trench dug on date 12: its side distance is 2-3 on most later dates but 1.3 on two (a
    # season that made the field a little like it), less than min_separation above the empty 0.6;
    # its contrast with the ring as a whole is as strong on those two dates as on the others
    n = 28
    rng, con, side, stood = _dug(13, n, 12, [1.5, 0.5, -0.5], [6.0, 3.0, -2.0], 0.1, 0.6, 2.4, 0.1)
    side[[15, 16]] = 1.3
    assert _present_dates(con, side, stood) == list(range(12, n))
    # a hull on a berth's dates only whose contrast norm does not split (it changes colour, not
    # strength): the side's dates stand
    con_c = np.where((np.arange(n) >= 12)[:, None], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0]) + rng.normal(0, 0.1, (n, 3))
    assert _present_dates(con_c, side, stood) == sorted(set(range(12, n)) - {15, 16})


def test_a_thin_footprint_across_a_field_edge_is_oriented_by_the_clearer_cue():
    # an L-shaped trench dug on date 20 across a field edge: its empty footprint, half one field and
    # half the other, is unlike either side (4.5), the trench less so (2.3); its contrast with the
    # ring as a whole is 1.8 before and 10.6 after. Both cues split the same dates; the clearer
    # one (against its scatter) says which are the object's
    n = 28
    rng, con, side, stood = _dug(17, n, 20, [1.5, 0.8, -0.5], [8.0, 5.0, -3.0], 0.05, 4.5, 2.3, 0.2)
    assert _present_dates(con, side, stood) == list(range(20, n))
    # a berth: a hull unlike every side (side 4.5 on its dates) whose ring, half quay, makes the empty
    # water's contrast a little larger than the hull's: the side is the clearer cue and stands
    hull = np.arange(n) < 20
    con_b = np.array([4.0, 1.0, 0.0]) + rng.normal(0, 0.3, (n, 3))
    con_b[hull] -= np.array([1.5, 0.5, 0.0])
    side_b = np.where(hull, 4.5, 0.5) + rng.normal(0, 0.05, n)
    assert _present_dates(con_b, side_b, hull) == list(range(20))


def test_a_small_hull_in_a_large_hulls_footprint_stays_present_when_its_side_dips():
    # a berth's footprint left by a large hull (contrast 28, side 8 on dates 1-5); a small hull on
    # dates 17-22 fills part of it: its side distance is 1.3-2.8 but 1.0 on date 21, below the
    # split, while its contrasts (every band) are those of its other dates
    n = 30
    rng = np.random.default_rng(23)
    empty = np.array([-10.0, -8.5, -7.7, -9.4])
    con = empty + rng.normal(0, 0.1, (n, 4))
    side = 0.15 + rng.normal(0, 0.03, n)
    con[1:6] = np.array([28.0, 27.0, 25.5, 29.0]) + rng.normal(0, 0.6, (5, 4))
    side[1:6] = 8.5 + rng.normal(0, 0.5, 5)
    con[17:23] = np.array([-4.5, -3.4, -3.0, -3.6]) + rng.normal(0, 0.1, (6, 4))
    side[17:23] = [1.4, 1.6, 2.8, 1.3, 1.0, 2.6]
    stood = np.zeros(n, bool)
    stood[[*range(1, 6), *range(17, 23)]] = True
    assert _present_dates(con, side, stood) == [*range(1, 6), *range(17, 23)]
    # the same side distances with date 21's contrasts those of the empty berth: it stays absent
    con[21] = empty + rng.normal(0, 0.1, 4)
    assert _present_dates(con, side, stood) == [*range(1, 6), 17, 18, 19, 20, 22]


def test_object_state_from_the_clearer_cue():
    # a hut built on date 12 at a field's edge: the empty ground there (half field, half bare) is
    # like neither side, the hut like the bare side, so the side barely tells the states apart;
    # the contrast to the ring as a whole (4 sigmas empty, 9 with the hut) does
    rng = np.random.default_rng(7)
    n = 24
    con = np.array([4.0, -1.5, 1.0]) + rng.normal(0, 0.1, (n, 3))
    con[12:] += np.array([4.5, -1.0, 1.5])
    side = np.where(np.arange(n) >= 12, 1.7, 1.8) + rng.normal(0, 0.25, n)
    stood = np.arange(n) < 12  # the background holds the hut (built before the middle date): the empty dates stand out
    got = presence.decide_states(con, np.ones(n, bool), stood, 1.5, side, 4.0)
    assert got is not None and np.flatnonzero(got.present).tolist() == list(range(12, n))
    # the contrast changes colour, not strength (its norm tells nothing): the side decides
    con_c = np.where((np.arange(n) >= 12)[:, None], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0]) + rng.normal(0, 0.05, (n, 3))
    side_c = np.where(np.arange(n) >= 12, 0.5, 1.0) + rng.normal(0, 0.05, n)
    ax = presence.state_axis(con_c, side_c)
    assert ax[:12].min() > ax[12:].max()
    assert presence.state_axis(con_c, 1.5 - side_c)[12:].min() > presence.state_axis(con_c, 1.5 - side_c)[:12].max()


def test_nearest_side_faces_outward_along_a_strip():
    # a 60 x 5 px strip of a pier crossing the crop, water above and below: the strip's own
    # continuation lies beyond its ends, so the strip is like one side of its ring
    water, pier, crane = 10.0, 60.0, 35.0
    img = np.full((1, 31, 90), water)
    img[:, 13:18, :] = pier
    inside = np.zeros((31, 90), bool)
    inside[13:18, 15:75] = True
    around = presence.ring_of(inside, 4, np.zeros_like(inside))
    assert presence.nearest_side(img, inside, around, np.ones(1)) < 1.0
    # a crane painted on it: unlike the pier beyond its ends and the water beside it
    img[:, 14:17, 17:73] = crane
    assert presence.nearest_side(img, inside, around, np.ones(1)) > 10.0


def test_pieces_on_the_same_dates_side_by_side_are_one_object():
    cands = [_cand(0, 0, 4, 10), _cand(0, 11, 4, 10), _cand(0, 40, 4, 10), _cand(0, 22, 4, 4)]
    keys = [(3, 4, 5), (3, 4, 5), (3, 4, 5), (3, 4)]
    # 0 and 1 are 2 px apart (one empty column): one object; 2 is far; 3 is as near 1 but on other dates
    assert presence.same_object_groups(keys, cands, 2) == [[0, 1], [2], [3]]
    assert presence.same_object_groups(keys, cands, 1) == [[0], [1], [2], [3]]
    # two hulls moored end to end: near and on the same dates, but nothing that differs joins them
    assert presence.same_object_groups(keys, cands, 2, lambda i, j: False) == [[0], [1], [2], [3]]
    merged = presence.union([cands[0], cands[1]])
    assert (merged.row0, merged.col0, merged.footprint.shape, int(merged.footprint.sum())) == (0, 0, (4, 21), 80)


def test_absence_under_haze_is_unobserved():
    present = np.array([1, 1, 0, 1, 0, 0], bool)
    st_ = presence.States(present, np.ones(6, bool), 5.0, True)
    sure = np.array([1, 1, 0, 1, 1, 1], bool)  # date 2 clear only by the small buffer
    got = presence.doubt_absence(st_, sure)
    assert got is not None and got.observed.tolist() == [True, True, False, True, True, True]
    # a building that "vanished" only on a hazy date is part of the site: no track
    assert presence.doubt_absence(presence.States(np.array([1, 1, 0, 1], bool), np.ones(4, bool), 5.0, True),
                                  np.array([1, 1, 0, 1], bool)) is None


def test_a_hazy_date_that_looks_empty_is_not_present():
    # a crane on dates 10-11 at a quay; on date 8 a cloud's haze covers the buffer (the footprint
    # half seen): the side distance calls it present, its contrasts are those of the empty quay
    n = 15
    rng = np.random.default_rng(31)
    con = np.array([12.6, 10.5, 9.6, 11.6]) + rng.normal(0, 0.1, (n, 4))
    con[10:12] = np.array([25.9, 17.7, -3.6, 17.2]) + rng.normal(0, 0.1, (2, 4))
    con[8] += -1.5
    present = np.zeros(n, bool)
    present[[8, 10, 11]] = True
    observed = np.ones(n, bool)
    sure = np.ones(n, bool)
    sure[8] = False
    st = presence.States(present, observed, 5.0, True)
    got = presence.doubt_hazy_presence(st, con, sure, 4.0)
    assert np.flatnonzero(got.present).tolist() == [10, 11]
    assert not got.observed[8] and got.observed.sum() == n - 1
    # the same date clear by the full buffer: the side's call stands
    assert presence.doubt_hazy_presence(st, con, np.ones(n, bool), 4.0) is st
    # a hazy date with the crane's contrasts stays present
    con[8] = con[10] + rng.normal(0, 0.1, 4)
    assert np.flatnonzero(presence.doubt_hazy_presence(st, con, sure, 4.0).present).tolist() == [8, 10, 11]


def test_haze_patch_neither_swallows_nor_hides_a_hut():
    hut = np.zeros((60, 60), np.uint8)
    hut[20:26, 20:26] = 1
    haze = np.zeros((60, 60), np.uint8)
    haze[5:55, 5:55] = 1
    for haze_first in (False, True):
        linker = presence.Linker((60, 60), 0.3, 10.0)
        if haze_first:
            linker.add(presence.regions_of(haze, 2, 4)[0])  # one date's haze patch over the hut
        for date in (4, 5, 6):
            linker.add(presence.regions_of(hut, date, 4)[0])
        if not haze_first:
            linker.add(presence.regions_of(haze, 2, 4)[0])
        cands = linker.candidates()
        assert sorted(sorted(c.dates()) for c in cands) == [[2], [4, 5, 6]]
    covered = presence.covered_dates(cands, 8, 10.0)
    small = [g for g, c in enumerate(cands) if c.dates() == {4, 5, 6}][0]
    assert np.flatnonzero(covered[small]).tolist() == [2] and not covered[1 - small].any()
    # a trench's lasting step gathers the pieces it stands out in on each date, however small
    line = np.zeros((60, 60), np.uint8)
    line[30:33, 2:58] = 1
    piece = np.zeros((60, 60), np.uint8)
    piece[30:33, 10:14] = 1
    linker = presence.Linker((60, 60), 0.3, 10.0)
    linker.add(presence.regions_of(line, 7, 4)[0], lasting=True)
    linker.add(presence.regions_of(piece, 8, 4)[0])
    assert len(linker.candidates()) == 1


def test_level_change_within_a_run():
    # a crane run out over a moored ship on dates 4-5 of its run 2-8
    value = np.full(10, np.nan)
    value[2:9] = [5.0, 5.1, 8.0, 8.1, 5.0, 4.9, 5.1]
    assert presence.level_changes(value, list(range(2, 9)), 1.5, 8.0) == [4, 6]
    flat = np.where(np.isfinite(value), 5.0 + 0.05 * np.arange(10), np.nan)
    assert presence.level_changes(flat, list(range(2, 9)), 1.5, 8.0) == []


def test_tracks_split_on_observed_absence_not_on_clouds():
    present = np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)
    observed = np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)
    trs = tracks.tracks_of(0, present, observed)
    assert [t.present for t in trs] == [[1, 2, 4], [7]]
    assert trs[0].unobserved == [3]
    assert trs[0].events == [("appeared", 1), ("departed", 5)]
    assert trs[1].events == [("appeared", 7)]


def test_another_hull_after_a_cloudy_gap_is_another_track():
    # one berth: a bright hull on dates 1-5, dates 6-9 under cloud, a dull hull on dates 10-13;
    # the run of presence is unbroken (no date seen empty), but its contrasts change across the gap
    n = 16
    rng = np.random.default_rng(29)
    con = np.array([-10.0, -8.5, -7.7]) + rng.normal(0, 0.1, (n, 3))
    con[1:6] = np.array([28.0, 27.0, 25.5]) + rng.normal(0, 0.6, (5, 3))
    con[10:14] = np.array([10.5, 10.4, 10.0]) + rng.normal(0, 0.3, (4, 3))
    con[6:10] = np.nan
    present = np.zeros(n, bool)
    present[[*range(1, 6), *range(10, 14)]] = True
    observed = np.ones(n, bool)
    observed[6:10] = False

    def handed_over(run):
        return presence.handovers(con, run, observed, 1.5, 8.0)

    trs = tracks.tracks_of(0, present, observed, splits=handed_over)
    assert [t.present for t in trs] == [[1, 2, 3, 4, 5], [10, 11, 12, 13]]
    assert trs[0].unobserved == [6, 7, 8, 9]
    assert trs[1].events[0] == ("appeared", 10)
    # the same hull on both sides of the gap (its contrast within its scatter): one track
    con[10:14] = np.array([28.0, 27.0, 25.5]) + rng.normal(0, 0.6, (4, 3))
    assert [t.present for t in tracks.tracks_of(0, present, observed, splits=handed_over)] == \
        [[*range(1, 6), *range(10, 14)]]
    # a change seen happening on observed dates (a crane run out) is an event, not a new object
    seen = np.ones(n, bool)
    con[6:10] = np.array([28.0, 27.0, 25.5]) + rng.normal(0, 0.6, (4, 3))
    con[10:14] = np.array([10.5, 10.4, 10.0]) + rng.normal(0, 0.3, (4, 3))
    assert presence.handovers(con, list(range(1, 14)), seen, 1.5, 8.0) == []
    # fewer than four dates that can be judged: the scatter is unknown, nothing is split
    assert presence.handovers(con, [5, 10, 11], observed, 1.5, 8.0) == []


# --------------------------------------------------------------------------- the run


def test_vessel_found_on_its_dates(series_run):
    header, rows = _presence(series_run[0])
    assert header[:6] == ["date", "observable_fraction", "vessel", "hut", "trench", "other"]
    vessel = [i for i, r in enumerate(rows) if r[2] not in ("", "0")]
    assert vessel == list(VESSEL_DATES)


def test_cloudy_date_is_not_observable(series_run):
    _, rows = _presence(series_run[0])
    for i, r in enumerate(rows):
        if i in CLOUDY:
            assert float(r[1]) < 0.5 and r[2:6] == ["", "", "", ""]
        else:
            assert float(r[1]) > 0.9 and "" not in r[2:6]
    rec = json.loads((series_run[0] / "series.json").read_text())
    assert rec["totals"]["n_observable_dates"] == N - len(CLOUDY)
    assert rec["totals"]["dates_with_vessel"] == len(VESSEL_DATES)
    cloudy = dates(N)[CLOUDY[0]].isoformat()
    assert all(cloudy not in t["dates_present"] for t in rec["tracks"])
    assert any(cloudy in t["dates_unobserved"] for t in rec["tracks"])  # unknown, not absent


def test_appear_then_disappear_is_one_track(series_run):
    rec = json.loads((series_run[0] / "series.json").read_text())
    d = [x.isoformat() for x in dates(N)]
    ext = [t for t in rec["tracks"] if t["dates_present"] == [d[i] for i in EXTENSION_DATES]]
    assert len(ext) == 1, rec["tracks"]
    assert ext[0]["events"] == [{"event": "appeared", "date": d[3]}, {"event": "departed", "date": d[5]}]
    assert ext[0]["dates_unobserved"] == [d[4]]  # cloudy: the departure was seen on the next clear date


def test_outputs_valid_and_geojson_in_wgs84(series_run):
    out = series_run[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    rec = json.loads((out / "series.json").read_text())
    jsonschema.validate(rec, series_schema())
    fc = json.loads((out / "tracks.geojson").read_text())
    assert len(fc["features"]) == len(rec["tracks"]) and "crs" not in fc
    for f in fc["features"]:
        lon, lat = f["geometry"]["coordinates"][0][0]
        assert 30 < lon < 50 and 20 < lat < 40
        assert {"track_id", "class", "first_seen", "last_seen", "n_dates_present", "dates_present", "events",
                "dates_unobserved"} <= set(f["properties"])


def test_shuffled_order_and_folder_give_the_same_outputs(series_run):
    a, b, _ = series_run
    for name in ("presence.csv", "tracks.geojson", "timeline.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ra, rb = (json.loads((p / "series.json").read_text()) for p in (a, b))
    for r in (ra, rb):
        r.pop("created"), r.pop("timings_s")
    assert ra == rb


def test_windowed_equals_whole(series_run):
    a, _, small = series_run
    ra, rs = (json.loads((p / "series.json").read_text()) for p in (a, small))
    assert rs["processing"]["window_px"] < 256 <= ra["processing"]["window_px"]
    for name in ("presence.csv", "tracks.geojson"):
        assert (a / name).read_bytes() == (small / name).read_bytes(), name
    assert ra["tracks"] == rs["tracks"]


# --------------------------------------------------------------------------- errors


def _one_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("changedet: error:"), result.output
    for n in needles:
        assert n in lines[0], lines[0]


def _far_copy(src, dst):
    with rasterio.open(src) as ds:
        prof, data = ds.profile, ds.read()
        prof["transform"] = ds.transform * Affine.translation(5000, 0)
        tags = ds.tags()
    with rasterio.open(dst, "w", **prof) as out:
        out.write(data)
        out.update_tags(**tags)


@pytest.mark.parametrize("case", ["undated", "same_date", "no_overlap", "one_date"])
def test_bad_inputs_exit_2_one_line_nothing_left(tmp_path, case):
    imgs = tmp_path / "imgs"
    paths = make_series(imgs, n=3, vessel_dates=(), hut_dates=(), size=64)
    out = tmp_path / "out"
    if case == "undated":
        bad = imgs / "scene.tif"
        make_series(tmp_path / "u", n=1, vessel_dates=(), hut_dates=(), tag=False, name_dates=False, size=64)[0].rename(bad)
        res, needle = _run([*paths, bad, "--out", out]), "scene.tif"
    elif case == "same_date":
        twin = tmp_path / "twin.tif"
        shutil.copy(paths[1], twin)
        res, needle = _run([*paths, twin, "--out", out]), "twin.tif"
    elif case == "no_overlap":
        far = tmp_path / "2024-12-01.tif"
        _far_copy(paths[2], far)
        with rasterio.open(far, "r+") as ds:
            ds.update_tags(TIFFTAG_DATETIME="2024:12:01 12:00:00")
        res, needle = _run([*paths, far, "--out", out]), "2024-12-01.tif"
    else:
        res, needle = _run([paths[0], "--out", out]), paths[0].name
    _one_line(res, needle)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
