"""``changedet series`` (issue 14): dates, presence per date, tracks, the contract, errors."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import jsonschema
import numpy as np
import pytest
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
    st = presence.decide_states(con, np.ones(n, bool), stood, 2.0)
    assert st is not None and not st.object_is_new
    assert np.flatnonzero(st.present).tolist() == list(range(3, n))


def test_tracks_split_on_observed_absence_not_on_clouds():
    present = np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)
    observed = np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)
    trs = tracks.tracks_of(0, present, observed)
    assert [t.present for t in trs] == [[1, 2, 4], [7]]
    assert trs[0].unobserved == [3]
    assert trs[0].events == [("appeared", 1), ("departed", 5)]
    assert trs[1].events == [("appeared", 7)]


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
