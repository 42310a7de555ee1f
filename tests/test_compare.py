"""compare: two runs of one site, what changed between them, and the CLI's exit codes and reports."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from changedet.cli import app
from changedet.compare import Tolerance, centroid_distance_m, compare_runs, load_run, match_detections
from changedet.errors import InputError

from .conftest import SAMPLE_TILES

runner = CliRunner()
CAMP = SAMPLE_TILES / "camp"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """detect run twice on the camp sample, into two folders."""
    from changedet.config import build_config
    from changedet.pipeline import detect_pair

    base = tmp_path_factory.mktemp("compare")
    for name in ("a", "b"):
        detect_pair(CAMP / "before.tif", CAMP / "after.tif", base / name, build_config(), site="camp")
    return base / "a", base / "b"


def _rewrite(path, fn):
    with rasterio.open(path) as src:
        profile, band = src.profile, src.read(1)
    profile.update(driver="GTiff")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(fn(band), 1)


def without_detection(run_dir, dest, index=0):
    """A copy of ``run_dir`` with detection ``index`` removed from detections.geojson and its pixels
    zeroed in change_mask.tif and change_class.tif; returns the removed feature's properties."""
    shutil.copytree(run_dir, dest)
    fc = json.loads((dest / "detections.geojson").read_text())
    gone = fc["features"].pop(index)["properties"]
    (dest / "detections.geojson").write_text(json.dumps(fc))
    c0, r0, c1, r1 = (gone[k] for k in ("bbox_col0", "bbox_row0", "bbox_col1", "bbox_row1"))
    with rasterio.open(dest / "change_class.tif") as src:
        footprint = np.zeros(src.shape, bool)
        footprint[r0:r1 + 1, c0:c1 + 1] = src.read(1)[r0:r1 + 1, c0:c1 + 1] > 0
    for name in ("change_mask.tif", "change_class.tif"):
        _rewrite(dest / name, lambda b: np.where(footprint & (b != 255), 0, b).astype(b.dtype))
    return gone, int(footprint.sum())


def _square(x, y, side=1.0):
    return {"type": "Polygon", "coordinates": [[[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]]}


def _feature(fid, x, y, cls="hut", side=1.0):
    return {"type": "Feature", "geometry": _square(x, y, side),
            "properties": {"id": fid, "class": cls, "event": "appeared", "area_m2": side * side,
                           "centroid": [x + side / 2, y + side / 2], "bbox_px": [int(x), int(y), int(x + side), int(y + side)]}}


def test_match_detections_greedy_by_iou():
    a = [_feature(1, 0, 0), _feature(2, 10, 10)]
    b = [_feature(7, 10.5, 10), _feature(8, 0, 0), _feature(9, 50, 50)]
    assert match_detections(a, b, 0.1) == [(0, 1, 1.0), (1, 0, pytest.approx(1 / 3))]
    assert match_detections(a, b, 0.5) == [(0, 1, 1.0)]
    assert match_detections([], b, 0.1) == []


def test_centroid_distance_in_metres():
    assert centroid_distance_m([0, 0], [3, 4], False, 0.5) == pytest.approx(2.5)
    # a thousandth of a degree of latitude is about 111 m
    assert centroid_distance_m([38.0, 31.0], [38.0, 31.001], True, 0.5) == pytest.approx(111.2, abs=0.2)


def test_same_run_twice_is_identical(two_runs):
    a, b = (load_run(p) for p in two_runs)
    cmp = compare_runs(a, b)
    assert cmp.passed and cmp.mask_pixels_changed == 0 and cmp.class_pixels_changed == 0
    assert cmp.n_a == cmp.n_b > 0 and not (cmp.added or cmp.removed or cmp.retyped or cmp.moved)


def test_a_removed_detection_is_found_and_named(two_runs, tmp_path):
    gone, n_px = without_detection(two_runs[1], tmp_path / "b")
    cmp = compare_runs(load_run(two_runs[0]), load_run(tmp_path / "b"))
    assert not cmp.passed
    assert [d["id"] for d in cmp.removed] == [gone["id"]] and not cmp.added
    assert cmp.mask_pixels_changed == n_px > 0
    # tolerant enough: passes
    loose = Tolerance(max_pixels_changed=n_px / cmp.n_pixels, max_detections_changed=1)
    assert compare_runs(load_run(two_runs[0]), load_run(tmp_path / "b"), loose).passed


def test_retyped_and_moved(two_runs, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(two_runs[1], b)
    fc = json.loads((b / "detections.geojson").read_text())
    p0, p1 = fc["features"][0]["properties"], fc["features"][1]["properties"]
    p0["class"] = "vessel" if p0["class"] != "vessel" else "hut"
    p1["centroid_y"] += 0.0001  # about 11 m north
    (b / "detections.geojson").write_text(json.dumps(fc))
    cmp = compare_runs(load_run(two_runs[0]), load_run(b))
    assert [r["a"]["id"] for r in cmp.retyped] == [p0["id"]]
    assert [r["a"]["id"] for r in cmp.moved] == [p1["id"]] and cmp.moved[0]["moved_m"] == pytest.approx(11.1, abs=0.1)
    assert compare_runs(load_run(two_runs[0]), load_run(b), Tolerance(max_moved_m=20)).moved == []


def test_a_folder_that_is_not_a_run(tmp_path, two_runs):
    with pytest.raises(InputError, match="not a changedet run"):
        load_run(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        load_run(tmp_path / "nope")


def test_cli_same_site_exits_0_with_a_table_and_junit(two_runs, tmp_path):
    res = run("compare", *two_runs, "--junit", tmp_path / "c.xml")
    assert res.exit_code == 0, res.output
    assert "detections removed" in res.stdout and "FAIL" not in res.stdout
    root = ET.parse(tmp_path / "c.xml").getroot()
    assert root.tag == "testsuites" and root.get("failures") == "0"
    cases = root.findall("testsuite/testcase")
    assert len(cases) == int(root.find("testsuite").get("tests")) == 6
    assert not root.findall(".//failure")
    assert [p.name for p in tmp_path.iterdir()] == ["c.xml"]  # no temporary file left


def test_cli_removed_detection_exits_1_and_names_it(two_runs, tmp_path):
    gone, _ = without_detection(two_runs[1], tmp_path / "b")
    res = run("compare", two_runs[0], tmp_path / "b", "--junit", tmp_path / "c.xml")
    assert res.exit_code == 1, res.output
    fail_lines = [ln for ln in res.stderr.splitlines() if "compare failed" in ln]
    assert len(fail_lines) == 1 and f"#{gone['id']} {gone['class']}" in fail_lines[0]
    root = ET.parse(tmp_path / "c.xml").getroot()
    failures = root.findall("testsuite/testcase/failure")
    assert root.find("testsuite").get("failures") == str(len(failures)) == "3"  # mask, class, removed
    assert any(f"#{gone['id']}" in f.get("message") for f in failures)
    res = run("compare", two_runs[0], tmp_path / "b", "--json")
    assert res.exit_code == 1
    record = json.loads(res.stdout)
    assert record["passed"] is False and [d["id"] for d in record["detections"]["removed"]] == [gone["id"]]


def test_cli_not_a_run_exits_2_in_one_line(two_runs, tmp_path):
    res = run("compare", two_runs[0], tmp_path)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("changedet: error:") and "not a changedet run" in lines[0]


def test_runs_on_different_grids_are_refused(two_runs):
    a = load_run(two_runs[0])
    shifted = replace(a, path=a.path.parent / "other", grid={**a.grid, "transform": [1, 0, 0, 0, -1, 0]})
    with pytest.raises(InputError, match="grid differs"):
        compare_runs(a, shifted)
    with pytest.raises(InputError, match="grid differs"):
        compare_runs(a, replace(a, mask=a.mask[:-1], classes=a.classes[:-1]))


def test_a_long_list_of_differences_is_cut_in_the_message():
    from changedet.compare import MAX_LISTED, Run

    feats = [_feature(i, 3 * i, 0) for i in range(1, MAX_LISTED + 4)]
    a = Run(Path("a"), np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), feats, {"transform": [1]}, 1.0, False)
    cmp = compare_runs(a, replace(a, path=Path("b"), features=[]))
    removed = next(c for c in cmp.checks if c.name == "detections removed")
    assert f"removed: {MAX_LISTED + 3} (allowed 0)" in removed.message and "and 3 more" in removed.message
    assert len(cmp.removed) == MAX_LISTED + 3
