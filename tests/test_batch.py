import json

import pytest

from changedet import batch
from changedet.errors import ConfigError, InputError
from changedet.io import file_record, sha256_file
from changedet.pipeline import OUTPUT_FILES, summary_schema


def write_manifest(tmp_path, text):
    p = tmp_path / "sites.yaml"
    p.write_text(text)
    return p


def test_manifest_forms_and_paths(tmp_path):
    m = write_manifest(tmp_path, "config: {decide: {min_area_m2: 3}}\nsites:\n"
                                 "  - {name: a, before: img/a1.tif, after: img/a2.tif, gsd_m: 0.5}\n")
    sites, overrides = batch.read_manifest(m)
    assert overrides == {"decide": {"min_area_m2": 3}}
    assert sites[0].before == str(tmp_path / "img" / "a1.tif") and sites[0].gsd_m == 0.5
    m2 = write_manifest(tmp_path, "- {name: b, before: x.tif, after: y.tif}\n")
    assert batch.read_manifest(m2)[0][0].name == "b"


@pytest.mark.parametrize("text,match", [
    ("sites:\n  - {before: a, after: b}\n", "missing 'name'"),
    ("sites:\n  - {name: a, before: a, after: b}\n  - {name: a, before: a, after: b}\n", "used twice"),
    ("sites:\n  - {name: '../up', before: a, after: b}\n", "names a folder"),
    ("sites:\n  - {name: a, before: a, after: b, colour: red}\n", "unknown key"),
    ("sites: []\n", "no sites"),
])
def test_manifest_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        batch.read_manifest(write_manifest(tmp_path, text))


def fake_detect(calls):
    def detect(before, after, out, cfg, site=None, gsd_m=None, progress=None, assets=()):
        calls.append(site)
        if "bad" in str(before):
            raise InputError(f"{before}: no such file; check the path")
        out.mkdir(parents=True, exist_ok=True)
        names = [n for n in OUTPUT_FILES if n != "summary.json"]
        for name in names:
            (out / name).write_text(name)
        summary = {**{key: None for key in summary_schema()["required"]},
                   "config": cfg.model_dump(mode="json"), "detections": [{}], "changed_area_m2": 12.0,
                   "inputs": {"before": {"sha256": sha256_file(before)},
                              "after": {"sha256": sha256_file(after)}},
                   "files": file_record(out, names)}
        (out / "summary.json").write_text(json.dumps(summary))

        class R:
            pass

        r = R()
        r.summary = summary
        return r
    return detect


def test_batch_records_failures_skips_current_sites_and_reruns_on_change(tmp_path, monkeypatch):
    for n in ("a1", "a2", "c1", "c2"):
        (tmp_path / f"{n}.tif").write_bytes(n.encode())
    m = write_manifest(tmp_path, "sites:\n  - {name: a, before: a1.tif, after: a2.tif}\n"
                                 "  - {name: b, before: bad.tif, after: a2.tif}\n"
                                 "  - {name: c, before: c1.tif, after: c2.tif}\n")
    calls = []
    monkeypatch.setattr(batch, "detect_pair", fake_detect(calls))
    res = batch.run_batch(m, tmp_path / "runs")
    assert [s["status"] for s in res["sites"]] == ["ok", "failed", "ok"]
    assert "bad.tif" in res["sites"][1]["error"] and res["n_failed"] == 1
    assert json.loads((tmp_path / "runs" / "batch_summary.json").read_text())["n_ok"] == 2
    res = batch.run_batch(m, tmp_path / "runs")
    assert [s["status"] for s in res["sites"]] == ["skipped", "failed", "skipped"]
    (tmp_path / "c1.tif").write_bytes(b"changed")  # c's input changed: only c runs again
    res = batch.run_batch(m, tmp_path / "runs")
    assert [s["status"] for s in res["sites"]] == ["skipped", "failed", "ok"]
    assert calls.count("a") == 1 and calls.count("c") == 2
    res = batch.run_batch(m, tmp_path / "runs", sets=["decide.min_area_m2=9"])  # new config: all run again
    assert [s["status"] for s in res["sites"]] == ["ok", "failed", "ok"]
    assert calls.count("a") == 2 and calls.count("c") == 3


def test_bad_site_config_fails_before_any_work(tmp_path, monkeypatch):
    m = write_manifest(tmp_path, "sites:\n  - {name: a, before: a.tif, after: b.tif, config: {decide: {nope: 1}}}\n")
    calls = []
    monkeypatch.setattr(batch, "detect_pair", fake_detect(calls))
    with pytest.raises(ConfigError, match="decide.nope"):
        batch.run_batch(m, tmp_path / "runs")
    assert calls == [] and not (tmp_path / "runs").exists()
