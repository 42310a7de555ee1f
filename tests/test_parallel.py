"""The ordered thread pool, and runs that do not depend on the worker count."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from changedet import parallel
from changedet.cli import app
from changedet.config import build_config
from changedet.pipeline import detect_pair

ROOT = Path(__file__).resolve().parents[1]
RASTERS = ("change_mask.tif", "change_class.tif", "change_score.tif", "detections.geojson")


def _slow_square(x: int) -> int:
    # later items finish first when the pool runs them together
    threading.Event().wait(0.0005 * (x % 3))
    return x * x


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-1000, 1000), max_size=40), st.integers(1, 6), st.integers(1, 8))
def test_ordered_map_equals_serial_map(items, workers, ahead):
    assert list(parallel.ordered_map(_slow_square, items, workers, ahead)) == [_slow_square(x) for x in items]


def test_ordered_map_consumes_items_lazily_in_callers_thread():
    seen: list[str] = []

    def items():
        for i in range(10):
            seen.append(threading.current_thread().name)
            yield i

    out = parallel.ordered_map(lambda x: x + 1, items(), workers=3, ahead=2)
    assert next(out) == 1
    assert len(seen) <= 3  # bounded read-ahead
    assert list(out) == list(range(2, 11))
    assert set(seen) == {threading.current_thread().name}


def test_ordered_map_raises_the_items_error():
    def fn(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        list(parallel.ordered_map(fn, range(8), workers=2))


def test_resolve_workers():
    assert parallel.resolve_workers(0) == parallel.cpu_count()
    assert parallel.resolve_workers(None) == parallel.cpu_count()
    assert parallel.resolve_workers(3) == 3
    assert parallel.library_threads(parallel.cpu_count()) == 1
    assert parallel.library_threads(1) == parallel.cpu_count()


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("timings_s", "created", "site", "files", "run")}


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in RASTERS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert _comparable(sa) == _comparable(sb)
    # item.json's datetime is the run's clock when the inputs carry no date; everything else is equal
    assert {k: v for k, v in sa["files"].items() if k != "item.json"} == \
        {k: v for k, v in sb["files"].items() if k != "item.json"}


@pytest.mark.parametrize("model", [True, False])
def test_worker_count_does_not_change_outputs_on_many_windows(small_scene, tmp_path, model):
    runs = {}
    for n in (1, 2):
        cfg = build_config({"processing": {"window_px": 64, "workers": n}, "model": {"enabled": model}})
        runs[n] = detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / f"w{n}" / "site", cfg)
        assert runs[n].summary["run"]["workers"] == n
        assert "workers" not in runs[n].summary["config"]["processing"]  # a batch resumes whatever the workers
    assert runs[1].summary["detections"], "the scene must have something to detect"
    _assert_same_outputs(runs[1].out_dir, runs[2].out_dir)


def test_cli_workers_on_a_sample_tile(tmp_path):
    tile = ROOT / "sample_tiles" / "camp"
    for n in (1, 2):
        res = CliRunner().invoke(app, ["detect", str(tile / "before.tif"), str(tile / "after.tif"),
                                       "--out", str(tmp_path / f"w{n}" / "camp"), "--workers", str(n)])
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "w2" / "camp" / "summary.json").read_text())["run"]["workers"] == 2
    _assert_same_outputs(tmp_path / "w1" / "camp", tmp_path / "w2" / "camp")


def test_cli_refuses_negative_workers(tmp_path):
    tile = ROOT / "sample_tiles" / "camp"
    res = CliRunner().invoke(app, ["detect", str(tile / "before.tif"), str(tile / "after.tif"),
                                   "--out", str(tmp_path / "x"), "--workers", "-1"])
    assert res.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_window_threads_run_map_windows_on_a_pool_only_within_the_block():
    def thread_of(_: int) -> str:
        return threading.current_thread().name

    assert set(parallel.map_windows(thread_of, range(6))) == {threading.current_thread().name}
    with parallel.window_threads(2) as n:
        assert n == 2
        names = list(parallel.map_windows(thread_of, range(6)))
        # a pass called from a worker runs on that worker: no pool within a pool
        inner = list(parallel.map_windows(lambda _: set(parallel.map_windows(thread_of, range(4))), range(3)))
    assert all(name.startswith("changedet") for name in names)
    assert all(len(s) == 1 and next(iter(s)).startswith("changedet") for s in inner)
    assert set(parallel.map_windows(thread_of, range(3))) == {threading.current_thread().name}
    assert list(parallel.map_windows(lambda x: x * x, range(20))) == [x * x for x in range(20)]


def test_blas_runs_one_thread_per_worker_within_the_cap_and_is_restored_after():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy as np  # noqa: F401 - loads numpy's BLAS, so that there is one to cap

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library that threadpoolctl can see")
    with parallel.capped_blas_threads(parallel.cpu_count() * 2) as per:
        assert per == 1 and blas_threads() == [1] * len(before)
    assert blas_threads() == before
    with parallel.capped_blas_threads(1) as per:  # one worker: BLAS keeps every core
        assert per == parallel.cpu_count() and blas_threads() == before


def test_later_gives_its_result_or_its_error_when_called():
    ran_on: list[str] = []

    def work(x: int) -> int:
        ran_on.append(threading.current_thread().name)
        return x * 2

    task = parallel.Later(work, 21, name="changedet-test")
    assert task() == 42
    assert ran_on == ["changedet-test"]  # on a thread of its own

    def fails() -> None:
        raise ValueError("no hash")

    failed = parallel.Later(fails)
    failed.wait()  # waiting alone does not raise
    with pytest.raises(ValueError, match="no hash"):
        failed()
