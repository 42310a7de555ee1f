"""synth --dates: a dated series of one site with truth (changedet.series_synth)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from typer.testing import CliRunner

from changedet import series_synth as ss
from changedet.cli import app
from changedet.synth import CLASS_CODES

from .test_cli import one_line_error

runner = CliRunner()
EIGHT = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def port_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("series") / "port"
    ss.write_series(ss.plan_series("port", seed=4, size=256, n_dates=8), out)
    return out


def _components(truth: np.ndarray, code: int) -> int:
    return int(ndimage.label(truth == code, structure=EIGHT)[1])


def check_truth(out) -> dict:
    """Every invariant of a written series: layout, rasters against counts, tracks against dates."""
    truth = json.loads((out / "truth_series.json").read_text())
    manifest = yaml.safe_load((out / "series.yaml").read_text())
    dates = truth["dates"]
    assert [str(im["date"]) for im in manifest["images"]] == dates
    assert [im["path"] for im in manifest["images"]] == [f"{d}.tif" for d in dates]
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    grid = None
    for p in truth["per_date"]:
        with rasterio.open(out / f"{p['date']}.tif") as ds:
            assert ds.count == 4 and ds.dtypes[0] == "uint16"
            assert ds.tags()["TIFFTAG_DATETIME"] == p["date"].replace("-", ":") + " 12:00:00"
            g = (ds.crs, ds.transform, ds.shape)
            grid = grid or g
            assert g == grid
        with rasterio.open(out / "truth" / f"{p['date']}_class.tif") as ds:
            t = ds.read(1)
            assert (ds.crs, ds.transform, ds.shape) == grid
        assert set(np.unique(t)) <= {0, 1, 2, 3, 4, 255}
        if not p["observable"]:
            assert p["counts"] is None and (t == 255).all() and p["cloud_fraction"] >= ss.OBSERVABLE_MAX_CLOUD
            continue
        assert p["cloud_fraction"] < ss.OBSERVABLE_MAX_CLOUD
        assert p["counts"] == {c: _components(t, CLASS_CODES[c]) for c in ("vessel", "hut", "trench", "other")}
    ship_days = sum(1 for p in truth["per_date"] if p["observable"] and p["counts"]["vessel"] >= 1)
    assert truth["ship_days"] == ship_days
    observable = {p["date"] for p in truth["per_date"] if p["observable"]}
    for tr in truth["tracks"]:
        seen = tr["dates_present"]
        assert set(seen) <= observable and set(seen) <= set(tr["dates_physically_present"])
        assert (tr["first_seen"], tr["last_seen"]) == ((seen[0], seen[-1]) if seen else (None, None))
        for e in tr["events"]:
            assert e["event"] in ("appeared", "departed", "changed") and e["date"] in observable
        c0, r0, c1, r1 = tr["bbox_px"]
        assert 0 <= c0 <= c1 < truth["size"] and 0 <= r0 <= r1 < truth["size"]
        for d in seen:  # the truth raster holds the object's class in its box on every date it is seen
            with rasterio.open(out / "truth" / f"{d}_class.tif") as ds:
                assert (ds.read(1)[r0:r1 + 1, c0:c1 + 1] == CLASS_CODES[tr["class"]]).any()
    return truth


def test_layout_and_truth_consistent(port_dir):
    truth = check_truth(port_dir)
    assert sorted(p.name for p in port_dir.iterdir()) == sorted(
        [f"{d}.tif" for d in truth["dates"]] + ["series.yaml", "truth", "truth_series.json"])
    assert sorted(p.name for p in (port_dir / "truth").iterdir()) == [f"{d}_class.tif" for d in truth["dates"]]
    assert truth["dates"][0] == "2024-08-20" and len(truth["dates"]) == 8
    assert {tr["class"] for tr in truth["tracks"]} >= {"vessel"}
    assert truth["per_date"][0]["nuisances"]["shift_px"] == [0.0, 0.0]  # the first date's grid is the truth's


def test_same_seed_same_bytes(port_dir, tmp_path):
    ss.write_series(ss.plan_series("port", seed=4, size=256, n_dates=8), tmp_path / "again")
    for p in sorted(port_dir.rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "again" / p.relative_to(port_dir)).read_bytes(), p.name
    other = ss.plan_series("port", seed=5, size=256, n_dates=8)
    assert not np.array_equal(other.base, ss.plan_series("port", seed=4, size=256, n_dates=8).base)


def test_site_does_not_depend_on_number_of_dates():
    a, b = ss.plan_series("base", seed=2, size=256, n_dates=10), ss.plan_series("base", seed=2, size=256, n_dates=40)
    assert np.array_equal(a.base, b.base) and len(b.dates) == 40


def test_base_has_lasting_and_transient_structures(tmp_path):
    truth = ss.write_series(ss.plan_series("base", seed=1, size=256, n_dates=12), tmp_path / "b")
    check_truth(tmp_path / "b")
    last = truth["dates"][-1]
    lasting = [t for t in truth["tracks"] if t["dates_physically_present"][-1] == last]
    transient = [t for t in truth["tracks"] if t["dates_physically_present"][-1] != last]
    assert lasting and {t["class"] for t in lasting} <= {"hut", "trench"}
    assert len(transient) == 1 and transient[0]["class"] == "hut"
    assert [e["event"] for e in transient[0]["events"]] == ["appeared", "departed"]


def test_port_vessels_come_and_go_and_crane_appears_once():
    plan = ss.plan_series("port", seed=0, size=512, n_dates=30)
    vessels = [o for o in plan.objects if o.cls == "vessel"]
    cranes = [o for o in plan.objects if o.cls == "other"]
    assert len(vessels) >= 4 and len(cranes) == 1 and 1 <= sum(cranes[0].present) <= 2
    occupied = [any(o.present[d] for o in vessels) for d in range(30)]
    assert not all(occupied) and sum(occupied) >= 10  # some dates with no vessel at all
    assert 4 <= sum(c != "" for c in plan.cloud) <= 7 and "overcast" in plan.cloud and plan.cloud[0] == ""


def test_dates_follow_start_and_cadence():
    plan = ss.plan_series("port", seed=3, size=256, n_dates=20, start_date=dt.date(2023, 12, 30), cadence_days=5)
    steps = {(b - a).days for a, b in zip(plan.dates[:-1], plan.dates[1:])}
    assert plan.dates[0] == dt.date(2023, 12, 30) and steps <= {4, 5, 6}
    daily = ss.plan_series("port", seed=3, size=256, n_dates=5, cadence_days=1)
    assert {(b - a).days for a, b in zip(daily.dates[:-1], daily.dates[1:])} == {1}


def test_dates_are_rendered_one_at_a_time():
    """The plan holds the site once; a date is rendered on its own (memory flat in the number of dates)."""
    plan = ss.plan_series("base", seed=6, size=256, n_dates=8)
    frames = ss.iter_series(plan)
    first = next(frames)
    assert first.image.shape == (4, 256, 256) and first.truth_class.shape == (256, 256)
    assert sum(o.values.nbytes + o.painted.nbytes for o in plan.objects) < plan.base.nbytes
    again = ss.render_date(plan, 5)
    assert np.array_equal(again.image, list(frames)[4].image)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=st.sampled_from(ss.SERIES_SCENARIOS), seed=st.integers(0, 10_000), n_dates=st.integers(2, 9))
def test_truth_consistent_for_any_series(tmp_path, scenario, seed, n_dates):
    out = tmp_path / f"{scenario}-{seed}-{n_dates}"
    ss.write_series(ss.plan_series(scenario, seed=seed, size=256, n_dates=n_dates), out)
    check_truth(out)


def test_cli_writes_series(tmp_path):
    res = runner.invoke(app, ["synth", "--dates", "6", "--size", "256", "--scenario", "base", "--seed", "3",
                              "--start-date", "2025-01-02", "--cadence-days", "2", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    truth = check_truth(tmp_path / "s")
    assert truth["dates"][0] == "2025-01-02" and truth["scenario"] == "base" and len(truth["dates"]) == 6


def test_cli_rewrites_a_series_in_place(tmp_path):
    out = tmp_path / "s"
    assert runner.invoke(app, ["synth", "--dates", "5", "--size", "256", "--out", str(out)]).exit_code == 0
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["synth", "--dates", "3", "--size", "256", "--start-date", "2024-01-01", "--out", str(out)])
    assert res.exit_code == 0, res.output
    truth = check_truth(out)
    assert sorted(p.name for p in out.glob("*.tif")) == [f"{d}.tif" for d in truth["dates"]]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args,needle", [
    (["--dates", "1"], "--dates 1"),
    (["--dates", "10000"], "--dates 10000"),
    (["--dates", "6", "--start-date", "2024-13-01"], "--start-date"),
    (["--dates", "6", "--start-date", "20240820"], "--start-date"),
    (["--dates", "6", "--cadence-days", "0"], "--cadence-days"),
    (["--dates", "6", "--scenario", "camp"], "--scenario"),
    (["--dates", "6", "--weather", "cloud"], "--weather"),
    (["--dates", "6", "--size", "128"], "--size"),
    (["--start-date", "2024-08-20"], "--dates"),
])
def test_cli_series_errors_one_line(tmp_path, args, needle):
    out = tmp_path / "s"
    one_line_error(runner.invoke(app, ["synth", "--size", "256", *args, "--out", str(out)]), needle)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- the benchmark's scorer


def _scorer():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "series.py"
    spec = importlib.util.spec_from_file_location("bench_series", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _oracle_run(folder, truth, run, cloudy_as_absent=False):
    """What a perfect engine would write: presence.csv, tracks.geojson (boxes, EPSG:4326), series.json."""
    from rasterio.warp import transform_geom

    run.mkdir()
    rows = ["date,observable_fraction,vessel,hut,trench,other"]
    for p in truth["per_date"]:
        counts = p["counts"] or ({c: 0 for c in ("vessel", "hut", "trench", "other")} if cloudy_as_absent else None)
        cells = [str(counts[c]) for c in ("vessel", "hut", "trench", "other")] if counts else [""] * 4
        rows.append(",".join([p["date"], f"{1 - p['cloud_fraction']:.3f}", *cells]))
    (run / "presence.csv").write_text("\n".join(rows) + "\n")
    with rasterio.open(folder / f"{truth['dates'][0]}.tif") as ds:
        crs, tf = ds.crs, ds.transform
    features = []
    for t in truth["tracks"]:
        if not t["dates_present"]:
            continue
        c0, r0, c1, r1 = t["bbox_px"]
        ring = [tf * (c, r) for c, r in ((c0, r0), (c1 + 1, r0), (c1 + 1, r1 + 1), (c0, r1 + 1), (c0, r0))]
        geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
        features.append({"type": "Feature", "geometry": geom, "properties": {
            "track_id": t["track_id"], "class": t["class"], "first_seen": t["first_seen"], "last_seen": t["last_seen"],
            "n_dates_present": len(t["dates_present"]), "dates_present": t["dates_present"], "events": t["events"]}})
    (run / "tracks.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (run / "series.json").write_text(json.dumps({"totals": {"dates_with_vessel": truth["ship_days"]}}))


@pytest.mark.parametrize("scenario", ss.SERIES_SCENARIOS)
def test_benchmark_scores_a_perfect_run_as_perfect(tmp_path, scenario):
    bench = _scorer()
    truth, _ = bench.generate(scenario, 2, 256, 12, tmp_path / "s")
    _oracle_run(tmp_path / "s", truth, tmp_path / "run")
    s = bench.score(tmp_path / "s", tmp_path / "run", truth)
    assert s["presence"] == 1.0 and all(v == 1.0 for v in s["counts"].values())
    assert s["ship_days_error"] == 0 and s["tracks_exact"] == 1.0 and s["cloudy_reported"] == 0
    assert s["transient_one_track"] is True
    _oracle_run(tmp_path / "s", truth, tmp_path / "run2", cloudy_as_absent=True)
    s = bench.score(tmp_path / "s", tmp_path / "run2", truth)
    assert s["n_cloudy"] >= 1 and s["cloudy_reported"] == s["n_cloudy"]
