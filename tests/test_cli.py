"""One test per command through typer's CliRunner, and the error contract (exit 2, one line, nothing left)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from changedet.cli import app

from .conftest import SAMPLE_TILES

runner = CliRunner()
CAMP = SAMPLE_TILES / "camp"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("changedet: error:"), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0]


def test_detect_writes_outputs_and_reports(tmp_path):
    res = run("detect", CAMP / "before.tif", CAMP / "after.tif", "--out", tmp_path / "o", "--site", "camp-x",
              "--set", "decide.min_area_m2=3", "--vector-format", "fgb")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["site"] == "camp-x" and summary["config"]["decide"]["min_area_m2"] == 3
    assert summary["config"]["output"]["vector_format"] == "fgb" and "detections.fgb" in summary["files"]
    assert (tmp_path / "o" / "detections.fgb").is_file() and not (tmp_path / "o" / "detections.gpkg").exists()
    assert "detections" in res.output and str(tmp_path / "o") in res.output


def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(tmp_path):
    out = tmp_path / "out"
    one_line_error(run("detect", tmp_path / "missing.tif", CAMP / "after.tif", "--out", out), "missing.tif")
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    one_line_error(run("detect", text, CAMP / "after.tif", "--out", out), "notes.tif")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("decide:\n  bogus: 1\n")
    one_line_error(run("detect", CAMP / "before.tif", CAMP / "after.tif", "--out", out, "--config", cfg), "decide.bogus")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(run("detect", CAMP / "before.tif", CAMP / "after.tif", "--out", blocker / "o"), str(blocker))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "file", "notes.tif"]


def test_an_unknown_vector_format_is_a_usage_error(tmp_path):
    res = run("detect", CAMP / "before.tif", CAMP / "after.tif", "--out", tmp_path / "o", "--vector-format", "shp")
    assert res.exit_code == 2 and "shp" in res.output and not (tmp_path / "o").exists()


def test_pair_that_does_not_overlap(tmp_path):
    with rasterio.open(CAMP / "after.tif") as src:
        profile = src.profile
        data = src.read()
    t = profile["transform"]
    profile["transform"] = Affine(t.a, t.b, t.c + 10_000, t.d, t.e, t.f)
    with rasterio.open(tmp_path / "far.tif", "w", **profile) as dst:
        dst.write(data)
    one_line_error(run("detect", CAMP / "before.tif", tmp_path / "far.tif", "--out", tmp_path / "o"), "overlap")
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["far.tif"]


def test_synth_then_eval(tmp_path):
    res = run("synth", "--out", tmp_path / "s", "--scenario", "port", "--seed", "5", "--size", "256")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "truth.json").exists()
    res = run("-q", "detect", tmp_path / "s" / "before.tif", tmp_path / "s" / "after.tif", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    res = run("eval", tmp_path / "o", "--truth", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    scores = json.loads(res.output)
    assert 0 <= scores["pixel"]["f1"] <= 1


def test_synth_rejects_unknown_scenario(tmp_path, capsys):
    """A choice outside the enum is typer's usage error: main() prints it as one line, exit 2."""
    from changedet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "s"), "--scenario", "volcano"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("changedet: error:") and "volcano" in lines[0], err
    assert "trenches" in lines[0]
    one_line_error(run("synth", "--out", tmp_path / "s", "--scenario", "base"), "base", "without --dates")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("weather", ["fog", "cloud,fog", "none,cloud", ""])
def test_synth_rejects_bad_weather(tmp_path, weather):
    one_line_error(run("synth", "--out", tmp_path / "s", "--weather", weather), "--weather")
    assert not (tmp_path / "s").exists()


def test_synth_with_weather_then_eval_ignores_clouds(tmp_path):
    res = run("synth", "--out", tmp_path / "s", "--scenario", "camp", "--seed", "8", "--size", "256",
              "--weather", "cloud,jpeg", "--rotation-deg", "0.5")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "s" / "truth.json").read_text())
    assert meta["nuisances"]["weather"]["kinds"] == ["cloud", "jpeg"] and meta["nuisances"]["rotation_deg"] == 0.5
    assert (tmp_path / "s" / "truth_weather.tif").exists()


def test_eval_without_outputs_is_a_user_error(tmp_path):
    one_line_error(run("eval", tmp_path, "--truth", CAMP), "change_mask.tif")


def test_batch_records_a_failure_and_goes_on(tmp_path):
    manifest = tmp_path / "sites.yaml"
    manifest.write_text(
        "sites:\n"
        f"  - {{name: camp, before: {CAMP / 'before.tif'}, after: {CAMP / 'after.tif'}}}\n"
        f"  - {{name: broken, before: {tmp_path / 'nope.tif'}, after: {CAMP / 'after.tif'}}}\n"
    )
    res = run("batch", manifest, "--out", tmp_path / "runs")
    assert res.exit_code == 1, res.output
    summary = json.loads((tmp_path / "runs" / "batch_summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["sites"]}
    assert status == {"camp": "ok", "broken": "failed"}
    assert (tmp_path / "runs" / "camp" / "summary.json").exists()
    assert not (tmp_path / "runs" / "broken").exists()


def test_presets_and_version():
    res = run("presets")
    assert res.exit_code == 0 and "vhr-0.5m" in res.output
    res = run("--version")
    assert res.exit_code == 0 and res.output.startswith("changedet ")


def test_png_without_georeferencing_works_in_pixel_coordinates(tmp_path):
    import cv2

    with rasterio.open(CAMP / "before.tif") as b, rasterio.open(CAMP / "after.tif") as a:
        bb, aa = b.read(), a.read()
    to8 = lambda x: np.ascontiguousarray(np.clip(x[:3][::-1].transpose(1, 2, 0), 0, 255).astype(np.uint8))  # noqa: E731
    cv2.imwrite(str(tmp_path / "b.png"), to8(bb))
    cv2.imwrite(str(tmp_path / "a.png"), to8(aa))
    res = run("detect", tmp_path / "b.png", tmp_path / "a.png", "--out", tmp_path / "o", "--gsd", "0.5")
    assert res.exit_code == 0, res.output
    fc = json.loads((tmp_path / "o" / "detections.geojson").read_text())
    assert fc["crs"] is None and fc["features"]
    x, y = fc["features"][0]["geometry"]["coordinates"][0][0]
    assert 0 <= x <= bb.shape[2] and 0 <= y <= bb.shape[1]
    assert "pixel coordinates" in res.output


def _unrelated_after(tmp_path):
    """Another site's pixels on the camp grid."""
    with rasterio.open(CAMP / "before.tif") as ref, rasterio.open(SAMPLE_TILES / "port" / "after.tif") as other:
        profile = ref.profile
        data = other.read(window=rasterio.windows.Window(0, 0, ref.width, ref.height), boundless=True)
        profile.update(count=data.shape[0], dtype=data.dtype.name)
        with rasterio.open(tmp_path / "other.tif", "w", **profile) as dst:
            dst.write(data)
    return tmp_path / "other.tif"


def test_require_registration_turns_low_confidence_into_exit_1(tmp_path):
    other = _unrelated_after(tmp_path)
    res = run("detect", CAMP / "before.tif", other, "--out", tmp_path / "o", "--require-registration")
    assert res.exit_code == 1, res.output
    assert "registration confidence" in res.output
    assert not (tmp_path / "o").exists()


def test_tiepoints_are_written_on_request(tmp_path):
    res = run("detect", CAMP / "before.tif", CAMP / "after.tif", "--out", tmp_path / "o",
              "--set", "registration.write_tiepoints=true")
    assert res.exit_code == 0, res.output
    fc = json.loads((tmp_path / "o" / "tiepoints.geojson").read_text())
    props = [f["properties"] for f in fc["features"]]
    assert len(props) >= 4 and all(f["geometry"]["type"] == "Point" for f in fc["features"])
    assert sum(p["inlier"] for p in props) >= 4 and any(p["held_back"] for p in props)
    truth = json.loads((CAMP / "truth.json").read_text())["shift_px"]
    inl = [p for p in props if p["inlier"]]
    assert np.median([p["dx_px"] for p in inl]) == pytest.approx(truth[0], abs=0.1)


def _run_from_truth(folder, truth_dir, keep):
    """An output folder whose change_mask is the truth (``keep``) or all zero (not ``keep``)."""
    import shutil

    folder.mkdir()
    shutil.copy(truth_dir / "truth_class.tif", folder / "change_mask.tif")
    with rasterio.open(folder / "change_mask.tif", "r+") as ds:
        cls = ds.read(1)
        ds.write(((cls > 0) & (cls != 255) & keep).astype(np.uint8), 1)
    (folder / "summary.json").write_text(json.dumps({"detections": []}))
    return folder


def test_eval_fail_under_gates_and_writes_junit(tmp_path):
    import xml.etree.ElementTree as ET

    good = _run_from_truth(tmp_path / "good", CAMP, True)
    bad = _run_from_truth(tmp_path / "bad", CAMP, False)
    res = run("eval", good, "--truth", CAMP, "--fail-under", "f1=0.99,recall=0.99", "--junit", tmp_path / "g.xml")
    assert res.exit_code == 0, res.output
    assert "failed" not in res.output
    res = run("eval", bad, "--truth", CAMP, "--fail-under", "f1=0.5,precision=0.5,recall=0.5",
              "--junit", tmp_path / "b.xml")
    assert res.exit_code == 1, res.output
    fail = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(fail) == 1 and "f1 0.0000 < 0.5" in fail[0] and "recall 0.0000 < 0.5" in fail[0]
    assert "precision" not in fail[0]  # nothing predicted: precision is 1 by convention, and passes
    for name, n_fail in (("g.xml", 0), ("b.xml", 2)):
        root = ET.parse(tmp_path / name).getroot()
        assert len(root.findall("testsuite/testcase")) == int(root.get("tests")) == (2 if name == "g.xml" else 3)
        assert len(root.findall("testsuite/testcase/failure")) == int(root.get("failures")) == n_fail
    res = run("eval", bad, "--truth", CAMP, "--json", "--fail-under", "recall=0.5")
    assert res.exit_code == 1 and json.loads(res.stdout)["checks"][0]["passed"] is False


def test_eval_fail_under_unknown_metric_exits_2_listing_the_names(tmp_path):
    good = _run_from_truth(tmp_path / "good", CAMP, True)
    one_line_error(run("eval", good, "--truth", CAMP, "--fail-under", "f1=0.8,fscore=0.5"),
                   "fscore", "precision, recall, f1, iou, object_precision, object_recall, type_accuracy")
    one_line_error(run("eval", good, "--truth", CAMP, "--fail-under", "f1=2"), "f1=2")
    one_line_error(run("eval", good, "--truth", CAMP, "--junit", tmp_path / "x.xml"), "--fail-under")
    assert not (tmp_path / "x.xml").exists()


def test_detect_json_is_the_summary_alone_on_stdout(tmp_path):
    res = run("detect", CAMP / "before.tif", CAMP / "after.tif", "--out", tmp_path / "o", "--json",
              "--set", "model.enabled=false")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads((tmp_path / "o" / "summary.json").read_text())


def test_batch_json_is_the_batch_summary_alone_on_stdout(tmp_path):
    manifest = tmp_path / "sites.yaml"
    manifest.write_text(f"sites:\n  - {{name: camp, before: {CAMP / 'before.tif'}, after: {CAMP / 'after.tif'}}}\n")
    res = run("batch", manifest, "--out", tmp_path / "runs", "--json", "--set", "model.enabled=false")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record == json.loads((tmp_path / "runs" / "batch_summary.json").read_text())
    assert "camp: ok" in res.stderr


def test_shell_completion_is_offered_and_printed():
    res = run("--help")
    assert "--install-completion" in res.output and "--show-completion" in res.output
    res = runner.invoke(app, ["--show-completion", "bash"], prog_name="changedet")
    assert res.exit_code == 0, res.output
    assert "complete -o default -F _changedet_completion changedet" in res.stdout
    env = {"_CHANGEDET_COMPLETE": "complete_bash", "COMP_WORDS": "changedet synth --scenario ", "COMP_CWORD": "3"}
    res = runner.invoke(app, [], prog_name="changedet", env=env)
    assert res.stdout.split() == ["trenches", "camp", "port", "base"]
    env.update(COMP_WORDS="changedet detect --preset vhr", COMP_CWORD="3")
    assert runner.invoke(app, [], prog_name="changedet", env=env).stdout.split() == ["vhr-0.5m"]


def test_synth_choices_are_listed_in_help():
    res = run("synth", "--help")
    assert res.exit_code == 0
    for choice in ("trenches", "camp", "port", "base", "easy", "medium", "hard"):
        assert choice in res.output
