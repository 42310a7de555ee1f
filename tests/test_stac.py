"""Inputs by URL and STAC Item, acquisition dates, and the STAC Item / Collection of runs.

A local HTTP server (a thread, with Range support) serves a synth scene on 127.0.0.1; no test needs
the network.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pystac.validation
import pytest
import rasterio
from typer.testing import CliRunner

from changedet import stac
from changedet.cli import app
from changedet.config import build_config
from changedet.errors import InputError
from changedet.pipeline import detect_pair, summary_schema

CFG = ["model.enabled=false"]


@pytest.fixture(scope="module")
def served(small_scene, tmp_path_factory):
    """The scene's two dates in a folder served over http://127.0.0.1, with STAC Items of both."""
    root = tmp_path_factory.mktemp("www")
    shutil.copy(small_scene / "before.tif", root / "before.tif")
    shutil.copy(small_scene / "after.tif", root / "after.tif")
    log = tmp_path_factory.mktemp("log") / "ranges.log"
    log.write_text("")
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("range_server.py")), str(root), str(log)],
                              stdout=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{server.stdout.readline().strip()}"
    for name, day in (("before", 3), ("after", 20)):
        item = pystac.Item(name, None, None, _dt.datetime(2024, 5, day, 10, 30, tzinfo=_dt.timezone.utc), {})
        item.add_asset("visual", pystac.Asset(f"{base}/{name}.tif", media_type=pystac.MediaType.COG))
        (root / f"{name}.item.json").write_text(json.dumps(item.to_dict(include_self_link=False)))
    yield root, base, log
    server.terminate()
    server.wait()


@pytest.fixture(scope="module")
def local_run(small_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "camp"
    return detect_pair(small_scene / "before.tif", small_scene / "after.tif", out, build_config(sets=CFG), site="camp")


def _comparable(summary):
    s = json.loads(json.dumps(summary))
    for key in ("created", "timings_s", "files"):
        s.pop(key)
    for side in ("before", "after"):
        for key in ("path", "datetime", "assets"):
            s["inputs"][side].pop(key, None)
    return s


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("change_mask.tif", "change_class.tif"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    with rasterio.open(a / "change_score.tif") as x, rasterio.open(b / "change_score.tif") as y:
        np.testing.assert_array_equal(x.read(), y.read())
    assert json.loads((a / "detections.geojson").read_text()) == json.loads((b / "detections.geojson").read_text())


def test_detect_on_urls_equals_local_run(served, local_run, tmp_path):
    root, base, log = served
    out = tmp_path / "camp"
    log.write_text("")
    result = runner_ok(["detect", f"{base}/before.tif", f"/vsicurl/{base}/after.tif", "--out", str(out),
                        "--site", "camp", "--set", CFG[0]])
    assert log.read_text().strip(), "GDAL read the files by Range requests"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["before"]["path"] == f"{base}/before.tif"  # kept as given, not // -> /
    assert summary["inputs"]["after"]["path"] == f"/vsicurl/{base}/after.tif"
    assert summary["inputs"]["before"]["sha256"] == local_run.summary["inputs"]["before"]["sha256"]
    _same_outputs(local_run.out_dir, out)
    assert _comparable(summary) == _comparable(local_run.summary)
    assert result.exit_code == 0


def test_detect_on_stac_items_equals_local_run(served, local_run, tmp_path):
    root, base, log = served
    out = tmp_path / "camp"
    runner_ok(["detect", f"{base}/before.item.json", str(root / "after.item.json"), "--out", str(out),
               "--site", "camp", "--set", CFG[0]])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["before"]["datetime"] == "2024-05-03T10:30:00Z"
    assert summary["inputs"]["after"]["datetime"] == "2024-05-20T10:30:00Z"
    assert summary["inputs"]["after"]["assets"] == ["visual"]
    _same_outputs(local_run.out_dir, out)
    assert _comparable(summary) == _comparable(local_run.summary)
    item = pystac.Item.from_file(str(out / "item.json"))
    assert item.datetime == _dt.datetime(2024, 5, 20, 10, 30, tzinfo=_dt.timezone.utc)
    assert item.common_metadata.start_datetime == _dt.datetime(2024, 5, 3, 10, 30, tzinfo=_dt.timezone.utc)


def test_band_assets_stacked_in_a_vrt(small_scene, local_run, tmp_path):
    """Single-band assets named by common name are stacked in order and give the 3-band run's outputs."""
    with rasterio.open(small_scene / "before.tif") as ds:
        names = ds.descriptions
    hrefs = {}
    for date in ("before", "after"):
        item = pystac.Item(date, None, None, _dt.datetime(2024, 5, 1, tzinfo=_dt.timezone.utc), {})
        with rasterio.open(small_scene / f"{date}.tif") as ds:
            profile = {**ds.profile, "count": 1}
            for i, common in enumerate(names, 1):
                path = tmp_path / f"{date}_{common}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(ds.read(i), 1)
                item.add_asset(f"band{i}", pystac.Asset(path.name, extra_fields={"eo:bands": [{"common_name": common}]}))
        item.set_self_href(str(tmp_path / f"{date}.json"))
        item.save_object(include_self_link=False)
        hrefs[date] = str(tmp_path / f"{date}.json")
    out = tmp_path / "camp"
    runner_ok(["detect", hrefs["before"], hrefs["after"], "--out", str(out), "--site", "camp",
               "--asset", "band1", "--asset", "band2,band3", "--set", CFG[0]])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["before"]["assets"] == ["band1", "band2", "band3"]
    assert summary["inputs"]["before"]["sha256"] is None
    _same_outputs(local_run.out_dir, out)


def test_item_json_is_valid_stac_with_projection(local_run):
    out = local_run.out_dir
    doc = json.loads((out / "item.json").read_text())
    # offline: pystac's bundled core schemas (Item v1.1.0, GeoJSON); the projection schema is remote,
    # so its fields are checked here against the extension's definitions
    core = {**doc, "stac_extensions": []}
    pystac.validation.validate_dict(core)
    assert stac.PROJ_SCHEMA in doc["stac_extensions"]
    props = doc["properties"]
    grid = local_run.summary["grid"]
    assert props["proj:code"] == grid["crs"]
    assert props["proj:shape"] == [grid["height"], grid["width"]]
    assert props["proj:transform"] == grid["transform"]
    left, bottom, right, top = props["proj:bbox"]
    assert right - left == pytest.approx(grid["width"] * grid["transform"][0])
    assert top - bottom == pytest.approx(grid["height"] * -grid["transform"][4])
    lon0, lat0, lon1, lat1 = doc["bbox"]
    assert -180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90
    item = pystac.Item.from_file(str(out / "item.json"))
    from pystac.extensions.projection import ProjectionExtension
    assert ProjectionExtension.has_extension(item)
    assert ProjectionExtension.ext(item).shape == [grid["height"], grid["width"]]
    hrefs = sorted(a.href for a in item.assets.values())
    assert hrefs == sorted(f"./{n}" for n in [*local_run.summary["files"], "summary.json"] if n != "item.json")
    assert {"change_mask", "change_class", "change_score", "detections", "summary", "quicklook"} <= set(item.assets)
    for asset in item.assets.values():
        assert (out / asset.href).is_file() and asset.roles and asset.media_type
    assert item.assets["change_mask"].media_type == pystac.MediaType.COG
    assert "item.json" in local_run.summary["files"]


def test_dates_from_tag_then_file_name(small_scene, tmp_path):
    before = tmp_path / "site_2023-09-14.tif"
    after = tmp_path / "after.tif"
    shutil.copy(small_scene / "before.tif", before)
    shutil.copy(small_scene / "after.tif", after)
    with rasterio.open(after, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2024:02:29 11:00:00")
    run = detect_pair(before, after, tmp_path / "out", build_config(sets=CFG))
    assert run.summary["inputs"]["before"]["datetime"] == "2023-09-14"
    assert run.summary["inputs"]["after"]["datetime"] == "2024-02-29"
    item = json.loads((tmp_path / "out" / "item.json").read_text())
    assert item["properties"]["start_datetime"].startswith("2023-09-14")
    assert item["properties"]["datetime"].startswith("2024-02-29")
    import jsonschema
    jsonschema.validate(run.summary, summary_schema())


def test_default_assets():
    def item(keys, common=None):
        it = pystac.Item("x", None, None, _dt.datetime(2024, 1, 1), {})
        for k in keys:
            extra = {"eo:bands": [{"common_name": common[k]}]} if common else {}
            it.add_asset(k, pystac.Asset(f"{k}.tif", extra_fields=extra))
        return it

    assert stac.default_assets(item(["B01", "visual", "B02"])) == ("visual",)
    assert stac.default_assets(item(["B08", "B04", "B03", "B02", "B11"])) == ("B02", "B03", "B04", "B08")
    assert stac.default_assets(item(["nir", "red", "green", "blue"])) == ("blue", "green", "red", "nir")
    common = {"a": "red", "b": "nir", "c": "blue", "d": "green"}
    assert stac.default_assets(item(list(common), common)) == ("c", "d", "a", "b")
    with pytest.raises(InputError, match="--asset"):
        stac.default_assets(item(["B02", "B03"]))
    assert stac.split_assets(["B04,B03", " B02 "]) == ("B04", "B03", "B02")


def test_gdal_name():
    assert stac.gdal_name("https://h/a.tif") == "/vsicurl/https://h/a.tif"
    assert stac.gdal_name("s3://bucket/k/a.tif") == "/vsis3/bucket/k/a.tif"
    assert stac.gdal_name("/data/a.tif") == "/data/a.tif"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("which", ["missing", "refused", "item"])
def test_bad_url_is_one_line_exit_2(served, tmp_path, which):
    root, base, log = served
    url = {"missing": f"{base}/nothere.tif", "refused": f"http://127.0.0.1:{_closed_port()}/a.tif",
           "item": f"{base}/nothere.item.json"}[which]
    res = CliRunner().invoke(app, ["detect", url, f"{base}/after.tif", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and url in lines[0], res.output
    assert not (tmp_path / "o").exists()


def test_batch_urls_items_and_collection(served, small_scene, local_run, tmp_path):
    from changedet.batch import run_batch

    root, base, log = served
    manifest = tmp_path / "sites.yaml"
    manifest.write_text("config: {model: {enabled: false}}\nsites:\n"
                        f"  - {{name: url, before: '{base}/before.tif', after: '{base}/after.tif'}}\n"
                        f"  - {{name: item, before: '{base}/before.item.json', after: '{root}/after.item.json',"
                        " assets: [visual]}\n"
                        f"  - {{name: local, before: '{small_scene}/before.tif', after: '{small_scene}/after.tif'}}\n")
    result = run_batch(manifest, tmp_path / "runs")
    assert result["n_ok"] == 3, result
    for name in ("url", "item", "local"):
        _same_outputs(local_run.out_dir, tmp_path / "runs" / name)
    col = pystac.Collection.from_file(str(tmp_path / "runs" / "collection.json"))
    pystac.validation.validate_dict(json.loads((tmp_path / "runs" / "collection.json").read_text()))
    items = list(col.get_items())
    assert [it.id for it in items] == ["url", "item", "local"]
    assert col.extent.temporal.intervals[0][0] == _dt.datetime(2024, 5, 3, 10, 30, tzinfo=_dt.timezone.utc)
    # rerun: all current, including the http inputs (hashed by streaming)
    again = run_batch(manifest, tmp_path / "runs")
    assert again["n_skipped"] == 3, again


def runner_ok(args):
    res = CliRunner().invoke(app, ["-q", *args])
    assert res.exit_code == 0, res.output
    return res
