import json
import os
import sys

import pytest

from changedet import batch
from changedet.errors import ConfigError, InputError
from changedet.compare import clockless
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
                   "config": cfg.record(), "detections": [{}], "changed_area_m2": 12.0,
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
    res = batch.run_batch(m, tmp_path / "runs", sets=["processing.workers=1"])  # workers do not change results
    assert [s["status"] for s in res["sites"]] == ["skipped", "failed", "skipped"]
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


def test_batch_writes_an_index_linking_the_reports_of_its_sites(tmp_path, monkeypatch):
    for n in ("a1", "a2"):
        (tmp_path / f"{n}.tif").write_bytes(n.encode())
    m = write_manifest(tmp_path, "sites:\n  - {name: a, before: a1.tif, after: a2.tif}\n"
                                 "  - {name: b, before: bad.tif, after: a2.tif}\n")
    monkeypatch.setattr(batch, "detect_pair", fake_detect([]))
    batch.run_batch(m, tmp_path / "runs")
    page = (tmp_path / "runs" / "index.html").read_text()
    assert 'href="a/report.html"' in page and 'href="b/report.html"' not in page and "bad.tif" in page
    assert not list((tmp_path / "runs").glob(".*.tmp"))
# ---- parallel batches (issue 15): a local dask cluster (--workers N) or an existing one (--scheduler)

PARALLEL_SITES = ("camp", "trenches")


def _comparable(path):
    """A file's content for comparing two batches: without the clock (and the folder names)."""
    return clockless(path)


def _folder(out):
    return {str(p.relative_to(out)): _comparable(p) for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def parallel_manifest(tmp_path_factory):
    """Two sample sites and one with a missing file, named so that manifest order is not sorted order."""
    from tests.conftest import SAMPLE_TILES

    folder = tmp_path_factory.mktemp("parallel")
    lines = [f"  - {{name: {s}, before: {SAMPLE_TILES / s / 'before.tif'}, after: {SAMPLE_TILES / s / 'after.tif'}}}"
             for s in PARALLEL_SITES]
    lines.insert(1, f"  - {{name: bad, before: {folder / 'missing.tif'}, after: {SAMPLE_TILES / 'camp' / 'after.tif'}}}")
    manifest = folder / "sites.yaml"
    manifest.write_text("sites:\n" + "\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def serial_batch(parallel_manifest, tmp_path_factory):
    from tests.subproc import cli

    out = tmp_path_factory.mktemp("serial") / "runs"
    proc = cli("-q", "batch", parallel_manifest, "--out", out, tmpdir=out.parent / "tmp")
    assert proc.returncode == 1, proc.stderr  # the bad site fails alone
    return out


def _check_parallel(out, serial, proc):
    assert proc.returncode == 1, proc.stderr  # the same exit code as the serial batch
    summary = json.loads((out / "batch_summary.json").read_text())
    assert [s["name"] for s in summary["sites"]] == [PARALLEL_SITES[0], "bad", PARALLEL_SITES[1]]
    assert [s["status"] for s in summary["sites"]] == ["ok", "failed", "ok"]
    assert "missing.tif" in summary["sites"][1]["error"]
    assert set(summary) == set(json.loads((serial / "batch_summary.json").read_text()))
    assert _folder(out) == _folder(serial)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_scheduler_runs_the_sites_on_an_existing_cluster_as_serially(parallel_manifest, serial_batch, tmp_path,
                                                                     monkeypatch):
    import cv2
    import dask
    from distributed import LocalCluster

    from tests.subproc import cli

    monkeypatch.delenv("CHANGEDET_THREADS", raising=False)  # the in-process worker sets it: restored after
    threads = cv2.getNumThreads()
    out = tmp_path / "runs"
    try:
        # dask's scratch in the test's folder, not a dask-scratch-space left in TMPDIR
        with dask.config.set({"temporary-directory": str(tmp_path / "dask")}), \
                LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                             dashboard_address=None, scheduler_kwargs={"dashboard": False}) as cluster:
            proc = cli("-q", "batch", parallel_manifest, "--out", out, "--scheduler", cluster.scheduler_address,
                       tmpdir=tmp_path / "tmp")
            _check_parallel(out, serial_batch, proc)
            again = cli("-q", "batch", parallel_manifest, "--out", out, "--scheduler", cluster.scheduler_address,
                        tmpdir=tmp_path / "tmp")
    finally:
        cv2.setNumThreads(threads)
    assert again.returncode == 1
    summary = json.loads((out / "batch_summary.json").read_text())
    assert [s["status"] for s in summary["sites"]] == ["skipped", "failed", "skipped"]  # resumed


def test_workers_2_equals_the_serial_batch(parallel_manifest, serial_batch, tmp_path):
    from tests.subproc import assert_nothing_left, cli

    out = tmp_path / "runs"
    proc = cli("batch", parallel_manifest, "--out", out, "--workers", "2", tmpdir=tmp_path / "tmp")
    _check_parallel(out, serial_batch, proc)
    assert "1 failed" in proc.stdout and "bad: failed" in proc.stdout
    assert_nothing_left(tmp_path / "tmp", out)  # the local cluster's dask scratch went with it
    assert not any("dask" in p.name for p in (tmp_path / "tmp").iterdir())


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:{port}", "not an address::", "tcp://127.0.0.1:99999"])
def test_a_bad_scheduler_address_is_exit_2_with_nothing_left(parallel_manifest, tmp_path, address):
    from tests.subproc import assert_nothing_left, assert_one_line_error, cli

    address = address.format(port=_free_port())
    out = tmp_path / "runs"
    proc = cli("batch", parallel_manifest, "--out", out, "--scheduler", address, tmpdir=tmp_path / "tmp")
    assert_one_line_error(proc, f"--scheduler {address}", "e.g. tcp://")
    assert not out.exists()
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_workers_with_scheduler_or_below_one_is_a_usage_error(parallel_manifest, tmp_path):
    from tests.subproc import assert_one_line_error, cli

    proc = cli("batch", parallel_manifest, "--out", tmp_path / "r", "--workers", "2", "--scheduler",
               "tcp://127.0.0.1:8786", tmpdir=tmp_path / "tmp")
    assert_one_line_error(proc, "--workers 2 with --scheduler")
    proc = cli("batch", parallel_manifest, "--out", tmp_path / "r", "--workers", "0", tmpdir=tmp_path / "tmp")
    assert_one_line_error(proc, "--workers")
    assert not (tmp_path / "r").exists()


# ---- the local cluster's workers fork warm from a fork server (issue 15)

def test_every_changedet_module_the_workers_preload_exists():
    import importlib

    from changedet.cluster import WORKER_PRELOAD

    # the fork server skips a name it cannot import: a misspelt one would go unnoticed
    for name in WORKER_PRELOAD:
        importlib.import_module(name)
    assert "changedet.batch" in WORKER_PRELOAD and "onnxruntime" not in WORKER_PRELOAD  # no threads in the server


def test_prestart_gives_the_fork_server_one_thread_per_library_and_leaves_this_process_as_it_was(monkeypatch):
    import multiprocessing
    from multiprocessing import forkserver

    from changedet import cluster

    if not sys.platform.startswith("linux") or "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("the workers fork from a fork server on Linux only")
    seen = {}
    monkeypatch.setattr(forkserver, "set_forkserver_preload", lambda names: seen.update(preload=list(names)))
    monkeypatch.setattr(forkserver, "ensure_running", lambda: seen.update(env=dict(os.environ)))
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("CHANGEDET_THREADS", raising=False)
    assert cluster.prestart()
    assert seen["preload"] == list(cluster.WORKER_PRELOAD)
    assert {k: seen["env"].get(k) for k in cluster.SINGLE_THREAD_ENV} == cluster.SINGLE_THREAD_ENV
    assert os.environ["OMP_NUM_THREADS"] == "7" and "CHANGEDET_THREADS" not in os.environ


def test_a_tmpdir_too_long_for_the_fork_servers_socket_falls_back_to_spawned_workers(tmp_path):
    import multiprocessing
    import subprocess

    if not sys.platform.startswith("linux") or "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("the workers fork from a fork server on Linux only")
    long_tmp = tmp_path / ("t" * max(1, 100 - len(str(tmp_path))))  # a Unix socket's path holds 108 bytes
    long_tmp.mkdir()
    code = "from changedet import cluster; print(cluster.prestart())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(long_tmp)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert list(long_tmp.iterdir()) == []  # the socket's folder went at exit


def test_a_local_clusters_workers_start_with_the_site_modules_imported():
    import multiprocessing

    from changedet import cluster

    if not sys.platform.startswith("linux") or "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("the workers fork from a fork server on Linux only")
    client = cluster.connect(None, 1)
    try:
        def fresh_worker():
            import sys

            return "changedet.batch" in sys.modules, os.environ.get("OPENBLAS_NUM_THREADS")

        assert client.submit(fresh_worker, pure=False).result() == (True, "1")
    finally:
        cluster.close(client)


@pytest.mark.parametrize("args,started", [(("--workers", "2"), True), ((), False),
                                          (("--scheduler", "tcp://127.0.0.1:8786"), False)])
def test_batch_starts_the_fork_server_first_for_a_local_cluster_only(tmp_path, monkeypatch, args, started):
    from typer.testing import CliRunner

    from changedet import cluster
    from changedet.cli import app

    calls = []
    monkeypatch.setattr(cluster, "prestart", lambda: calls.append("prestart"))
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: calls.append("run_batch") or
                        {"n_ok": 0, "n_skipped": 0, "n_failed": 0})
    res = CliRunner().invoke(app, ["-q", "batch", str(tmp_path / "sites.yaml"), "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 0, res.output
    assert calls == (["prestart", "run_batch"] if started else ["run_batch"])


def test_sites_go_to_the_cluster_largest_first_as_one_task_group_and_come_back_in_manifest_order(tmp_path,
                                                                                                monkeypatch):
    import distributed
    from dask.utils import key_split

    from changedet import cluster
    from changedet.config import Config

    for name, size in (("a", 10), ("b", 300), ("c", 20)):
        (tmp_path / f"{name}.tif").write_bytes(b"x" * size)
    sites = [batch.Site("small", str(tmp_path / "a.tif"), str(tmp_path / "a.tif")),
             batch.Site("large", str(tmp_path / "b.tif"), str(tmp_path / "c.tif")),
             batch.Site("remote", "https://example.com/x.tif", str(tmp_path / "missing.tif"))]

    class Done:
        def __init__(self, name):
            self.name = name

        def result(self):
            return {"name": self.name, "status": "ok", "error": None, "seconds": 1.0}

        def cancel(self):
            pass

    class Client:
        loop = None
        submitted = []

        def submit(self, fn, site, out, cfg, **kw):
            self.submitted.append((site.name, kw))
            return Done(site.name)

        def nthreads(self):
            return {"w1": 1, "w2": 1}

    monkeypatch.setattr(distributed, "as_completed", lambda futures, loop=None: reversed(futures))
    records = cluster.run_sites(Client(), sites, tmp_path / "runs", {s.name: Config() for s in sites})
    assert [r["name"] for r in records] == ["small", "large", "remote"]
    priority = {name: kw["priority"] for name, kw in Client.submitted}
    assert priority == {"small": 20, "large": 320, "remote": 0}
    assert len({key_split(kw["key"]) for _, kw in Client.submitted}) == 1
    assert len({kw["key"] for _, kw in Client.submitted}) == 3
