"""Issue 13, the output side: full, read-only or wrong ``--out``, interrupted runs, and resume.

Every failure here must be exit 2 (or 128 + the signal) with one ``changedet: error:`` line that names
the place and the fix, and must leave nothing behind: no staging folder ``.NAME.changedet-*`` beside
the output, no ``changedet-inputs-*`` copy in TMPDIR, no half-written output.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from changedet import io as cio
from changedet import pipeline, synth
from changedet.batch import Site, is_current, run_batch
from changedet.compare import clockless
from changedet.config import build_config
from changedet.errors import OutputError, OutputWriteError

from .subproc import (assert_nothing_left, assert_one_line_error, cli, scratch_folders, staging_folders, start_cli,
                      tmpfs, wait_until)

ROOT = Path(__file__).resolve().parents[1]
FAST = ("--set", "model.enabled=false")
SCENES = (("camp", 11), ("trenches", 12), ("port", 13))


def _png_pair(src: Path, dst: Path) -> Path:
    """``before.png`` / ``after.png`` from a scene's GeoTIFFs: a slow-window format, copied to TMPDIR by a run."""
    import rasterio

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("before", "after"):
        with rasterio.open(src / f"{name}.tif") as ds:
            cv2.imwrite(str(dst / f"{name}.png"), np.ascontiguousarray(ds.read([3, 2, 1]).transpose(1, 2, 0)))
    return dst


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Three 128 px synth sites and a manifest; the second site is a PNG pair (slow format, local copies)."""
    root = tmp_path_factory.mktemp("hostile_outputs")
    for scenario, seed in SCENES:
        synth.write_scene(synth.make_scene(scenario, seed=seed, size=128), root / scenario)
    _png_pair(root / "trenches", root / "trenches_png")
    gsd = json.loads((root / "trenches" / "truth.json").read_text())["gsd_m"]
    (root / "sites.yaml").write_text(
        "config: {model: {enabled: false}}\nsites:\n"
        "  - {name: camp, before: camp/before.tif, after: camp/after.tif}\n"
        f"  - {{name: trenches, before: trenches_png/before.png, after: trenches_png/after.png, gsd_m: {gsd}}}\n"
        "  - {name: port, before: port/before.tif, after: port/after.tif}\n")
    (root / "one.yaml").write_text("sites:\n  - {name: camp, before: camp/before.tif, after: camp/after.tif}\n")
    return root


@pytest.fixture(scope="module")
def slow_pair(tmp_path_factory) -> Path:
    """The 512 px camp sample as PNG: a run of several seconds that makes local copies in TMPDIR."""
    return _png_pair(ROOT / "sample_tiles" / "camp", tmp_path_factory.mktemp("slow") / "camp_png")


# --------------------------------------------------------------------------- wrong --out


@pytest.mark.parametrize("command", ["detect", "batch", "synth", "train"])
def test_empty_out_is_exit_2_and_writes_nothing_in_the_working_folder(tmp_path, scenes, command):
    work = tmp_path / "work"
    work.mkdir()
    args = {"detect": ("detect", scenes / "camp/before.tif", scenes / "camp/after.tif", *FAST),
            "batch": ("batch", scenes / "one.yaml", *FAST), "synth": ("synth", "--size", "128"),
            "train": ("train", scenes / "one.yaml")}[command]
    proc = cli(*args, "--out", "", tmpdir=tmp_path / "tmp", cwd=work)
    assert_one_line_error(proc, "--out ''", "empty")
    assert list(work.iterdir()) == []
    assert_nothing_left(tmp_path / "tmp", work)


@pytest.mark.parametrize("command", ["batch", "synth", "detect"])
@pytest.mark.parametrize("under", [False, True], ids=["is-a-file", "under-a-file"])
def test_out_that_is_a_file_is_exit_2(tmp_path, scenes, command, under):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    args = {"detect": ("detect", scenes / "camp/before.tif", scenes / "camp/after.tif", *FAST),
            "batch": ("batch", scenes / "one.yaml", *FAST), "synth": ("synth", "--size", "128")}[command]
    proc = cli(*args, "--out", afile / "x" if under else afile, tmpdir=tmp_path / "tmp")
    assert_one_line_error(proc, str(afile.name), "not a folder", "--out")
    assert afile.read_text() == "mine"
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_train_out_is_checked_before_training(tmp_path):
    from changedet.learned import head

    (tmp_path / "afile").write_text("mine")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(OutputError, match="is a file, not a folder"):
        head.check_model_path(tmp_path / "afile" / "m.npz")
    with pytest.raises(OutputError, match="is a folder"):
        head.check_model_path(tmp_path / "folder.npz")
    head.check_model_path(tmp_path / "new" / "m.npz")  # a folder still to make is fine


@pytest.mark.parametrize("command", ["batch", "detect", "synth"])
def test_read_only_out_is_exit_2_one_line(tmp_path, scenes, command):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        out = ro if command == "batch" else ro / "site"
        args = {"detect": ("detect", scenes / "camp/before.tif", scenes / "camp/after.tif", *FAST),
                "batch": ("batch", scenes / "one.yaml", *FAST), "synth": ("synth", "--size", "128")}[command]
        proc = cli(*args, "--out", out, tmpdir=tmp_path / "tmp")
        assert_one_line_error(proc, str(ro), "read-only", "--out")
        assert list(ro.iterdir()) == []
    assert_nothing_left(tmp_path / "tmp")


def test_not_permitted_out_is_exit_2_one_line(tmp_path, scenes):
    """Root passes mode bits, so the folder is made immutable (chattr +i); skipped where that cannot be done."""
    out = tmp_path / "locked"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(out)], capture_output=True, check=False).returncode != 0:
        pytest.skip("root ignores mode bits and chattr +i is not available here")
    try:
        for args in (("batch", scenes / "one.yaml", *FAST, "--out", out),
                     ("detect", scenes / "camp/before.tif", scenes / "camp/after.tif", *FAST, "--out", out / "site")):
            proc = cli(*args, tmpdir=tmp_path / "tmp")
            assert_one_line_error(proc, str(out.name), "not permitted", "--out")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(out)], check=False)
        out.chmod(0o755)
    assert list(out.iterdir()) == []
    assert_nothing_left(tmp_path / "tmp", tmp_path)


# --------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("size", ["24k", "150k", "700k"], ids=["scratch", "rasters", "quicklook"])
def test_full_disk_is_exit_2_one_line_and_leaves_nothing(tmp_path, scenes, size):
    """A real small tmpfs: the disk fills while the score scratch, the COGs or the quick-look are written
    (the up-front disk check, which would refuse the pair first, is off)."""
    no_check = ("--set", "limits.disk_fraction=0")
    with tmpfs(tmp_path / "small", size) as small:
        proc = cli("detect", scenes / "camp/before.tif", scenes / "camp/after.tif", *FAST, *no_check,
                   "--out", small / "o", tmpdir=tmp_path / "tmp")
        assert_one_line_error(proc, str(small / "o"), "the disk is full", "--out")
        assert list(small.iterdir()) == []
        if size == "150k":
            proc = cli("batch", scenes / "sites.yaml", *no_check, "--out", small / "runs", tmpdir=tmp_path / "tmp")
            assert_one_line_error(proc, "the disk is full", "--out")
            sites = [p for p in (small / "runs").iterdir() if p.is_dir()]
            assert all(_whole(p) for p in sites)  # a batch stops on a full disk; what it finished is whole
        assert_nothing_left(tmp_path / "tmp", small)


def test_too_small_a_disk_is_refused_up_front(tmp_path, scenes):
    """With the check on, a pair whose temporary files cannot fit beside --out is refused before any work."""
    with tmpfs(tmp_path / "small", "24k") as small:
        proc = cli("detect", scenes / "camp/before.tif", scenes / "camp/after.tif", *FAST, "--out", small / "o",
                   tmpdir=tmp_path / "tmp")
        assert_one_line_error(proc, str(small / "o"), "128x128 pixels", "MiB of temporary disk",
                              "--out on a larger disk", "limits.disk_fraction=0")
        assert list(small.iterdir()) == []
    assert_nothing_left(tmp_path / "tmp", tmp_path)


def test_synth_into_a_full_disk_is_exit_2_and_leaves_no_half_scene(tmp_path):
    with tmpfs(tmp_path / "small", "64k") as small:
        proc = cli("synth", "--size", "128", "--out", small / "scene", tmpdir=tmp_path / "tmp")
        assert_one_line_error(proc, str(small / "scene"), "the disk is full", "--out")
        assert list(small.iterdir()) == []


def test_train_into_a_full_disk_is_one_error_and_leaves_no_temporary(tmp_path, monkeypatch):
    from changedet.learned import head

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez_compressed", full)
    hd = head.Head(np.zeros(head.N_FEATURES, np.float32), np.ones(head.N_FEATURES, np.float32),
                   (np.zeros((head.N_FEATURES, 1), np.float32),), (np.zeros(1, np.float32),), 0.5, {})
    with pytest.raises(OutputWriteError, match="the disk is full"):
        head.save(hd, tmp_path / "models" / "m.npz")
    assert list((tmp_path / "models").iterdir()) == []


def _whole(out: Path) -> bool:
    """Every file the folder's summary records is there, as recorded."""
    return cio.files_match(out, json.loads((out / "summary.json").read_text())["files"])


def _fail_with(exc: BaseException, name_end: str):
    """A writer that raises ``exc`` for files whose name ends ``name_end``, and writes the rest."""
    real_bytes, real_cog, real_json = Path.write_bytes, pipeline.to_cog, pipeline.write_json

    def write_bytes(self, data):
        if self.name.endswith(name_end):
            raise exc
        return real_bytes(self, data)

    def to_cog(src, dst, *a, **k):
        if dst.name.endswith(name_end):
            raise exc
        return real_cog(src, dst, *a, **k)

    def write_json(path, obj, **k):
        if path.name.endswith(name_end):
            raise exc
        return real_json(path, obj, **k)

    return write_bytes, to_cog, write_json


@pytest.mark.parametrize("name_end", ["change_mask.tif", "detections.geojson", "quicklook.png", "summary.json"])
def test_injected_enospc_is_output_write_error_and_leaves_nothing(tmp_path, scenes, monkeypatch, name_end):
    """Where a tmpfs cannot be mounted: ENOSPC injected into each writer, in process."""
    write_bytes, to_cog, write_json = _fail_with(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), name_end)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(pipeline, "to_cog", to_cog)
    monkeypatch.setattr(cio, "to_cog", to_cog)  # the categorical rasters are written by io.write_categorical_cog
    monkeypatch.setattr(pipeline, "write_json", write_json)
    out = tmp_path / "runs" / "o"
    (tmp_path / "runs").mkdir()
    with pytest.raises(OutputWriteError, match="the disk is full") as info:
        pipeline.detect_pair(scenes / "camp/before.tif", scenes / "camp/after.tif", out,
                             build_config(sets=["model.enabled=false"]))
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_bug_while_writing_stays_a_bug(tmp_path, scenes, monkeypatch):
    """Only a failure the output side explains becomes an OutputWriteError; the staging goes either way."""
    write_bytes, to_cog, write_json = _fail_with(ValueError("a bug"), "change_mask.tif")
    monkeypatch.setattr(pipeline, "to_cog", to_cog)
    monkeypatch.setattr(cio, "to_cog", to_cog)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="a bug"):
        pipeline.detect_pair(scenes / "camp/before.tif", scenes / "camp/after.tif", tmp_path / "runs" / "o",
                             build_config(sets=["model.enabled=false"]))
    assert list((tmp_path / "runs").iterdir()) == []


def test_permission_error_from_an_input_is_not_blamed_on_the_output(tmp_path):
    exc = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "inputs" / "before.tif"))
    (tmp_path / "out").mkdir()
    assert cio.as_write_error(exc, tmp_path / "out", tmp_path / "out") is None
    own = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "x.tif"))
    assert "not permitted" in str(cio.as_write_error(own, tmp_path / "out", tmp_path / "out"))


# --------------------------------------------------------------------------- what a rerun leaves


def test_rerun_removes_contract_files_it_did_not_write_and_keeps_the_users(tmp_path, scenes):
    out = tmp_path / "o"
    args = (scenes / "camp/before.tif", scenes / "camp/after.tif", out)
    pipeline.detect_pair(*args, build_config(sets=["model.enabled=false", "registration.write_tiepoints=true"]))
    assert (out / "tiepoints.geojson").is_file()
    (out / "notes.txt").write_text("mine")
    summary = pipeline.detect_pair(*args, build_config(sets=["model.enabled=false"])).summary
    assert not (out / "tiepoints.geojson").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(summary["files"]) == sorted(p.name for p in out.iterdir() if p.name not in ("summary.json",
                                                                                             "notes.txt"))
    import jsonschema

    jsonschema.validate(summary, pipeline.summary_schema())
    assert cio.files_match(out, summary["files"])


def test_synth_rerun_without_weather_removes_the_old_weather_truth(tmp_path):
    synth.write_scene(synth.make_scene("camp", seed=1, size=128, weather="cloud"), tmp_path / "s")
    assert (tmp_path / "s" / "truth_weather.tif").is_file()
    synth.write_scene(synth.make_scene("camp", seed=1, size=128), tmp_path / "s")
    assert not (tmp_path / "s" / "truth_weather.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def finished(scenes, tmp_path_factory) -> Path:
    """A finished output folder of the camp site (learned stage off)."""
    out = tmp_path_factory.mktemp("finished") / "camp"
    pipeline.detect_pair(scenes / "camp/before.tif", scenes / "camp/after.tif", out,
                         build_config(sets=["model.enabled=false"]), site="camp")
    return out


@pytest.mark.parametrize("damage", ["delete mask", "truncate score", "same size other bytes", "stray tiepoints",
                                    "summary without files", "summary not json"])
def test_resume_reruns_a_site_whose_files_do_not_match_its_summary(tmp_path, scenes, finished, damage):
    cfg = build_config(sets=["model.enabled=false"])
    site = Site("camp", scenes / "camp/before.tif", scenes / "camp/after.tif")
    out = tmp_path / "camp"
    shutil.copytree(finished, out)
    assert is_current(site, out, cfg)
    summary_path = out / "summary.json"
    if damage == "delete mask":
        (out / "change_mask.tif").unlink()
    elif damage == "truncate score":
        data = (out / "change_score.tif").read_bytes()
        (out / "change_score.tif").write_bytes(data[: len(data) // 2])
    elif damage == "same size other bytes":
        data = bytearray((out / "quicklook.png").read_bytes())
        data[-20] ^= 0xFF
        (out / "quicklook.png").write_bytes(bytes(data))
    elif damage == "stray tiepoints":
        (out / "tiepoints.geojson").write_text("{}")
    elif damage == "summary without files":
        summary = json.loads(summary_path.read_text())
        del summary["files"]
        summary_path.write_text(json.dumps(summary))
    else:
        summary_path.write_text(summary_path.read_text()[:100])
    assert not is_current(site, out, cfg)


def test_batch_rerun_after_a_deleted_mask_runs_the_site_again(tmp_path, scenes):
    out = tmp_path / "runs"
    first = run_batch(scenes / "one.yaml", out, sets=["model.enabled=false"])
    mask = (out / "camp" / "change_mask.tif").read_bytes()
    assert [s["status"] for s in run_batch(scenes / "one.yaml", out, sets=["model.enabled=false"])["sites"]] \
        == ["skipped"]
    (out / "camp" / "change_mask.tif").unlink()
    again = run_batch(scenes / "one.yaml", out, sets=["model.enabled=false"])
    assert [s["status"] for s in again["sites"]] == ["ok"] and first["sites"][0]["status"] == "ok"
    assert (out / "camp" / "change_mask.tif").read_bytes() == mask


# --------------------------------------------------------------------------- signals and dead runs


def _marked(folders: list[Path]) -> bool:
    """Some folders, each holding its owner record (a kill -9 in the instant between making a folder
    and marking it leaves an empty folder without one, which no run sweeps: a documented limit)."""
    return bool(folders) and all((f / cio.OWNER_FILE).exists() for f in folders)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signal_removes_staging_and_scratch(tmp_path, slow_pair, sig):
    tmp, runs = tmp_path / "tmp", tmp_path / "runs"
    runs.mkdir()
    proc = start_cli("detect", slow_pair / "before.png", slow_pair / "after.png", "--gsd", "0.5", "--out",
                     runs / "o", *FAST, tmpdir=tmp)
    wait_until(lambda: _marked(staging_folders(runs)) and _marked(scratch_folders(tmp)), proc,
               what="the staging folder and the local copies, with their owner records")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", err),
                          f"interrupted by {sig.name}", code=128 + sig)
    assert list(runs.iterdir()) == []
    assert_nothing_left(tmp, runs)


def test_kill_9_leftovers_are_swept_by_the_next_run(tmp_path, slow_pair):
    tmp, runs = tmp_path / "tmp", tmp_path / "runs"
    runs.mkdir()
    args = ("detect", slow_pair / "before.png", slow_pair / "after.png", "--gsd", "0.5", "--out", runs / "o",
            *FAST)
    proc = start_cli(*args, tmpdir=tmp)
    wait_until(lambda: _marked(staging_folders(runs)) and _marked(scratch_folders(tmp)), proc,
               what="the staging folder and the local copies, with their owner records")
    proc.kill()
    proc.communicate(timeout=60)
    assert staging_folders(runs) and scratch_folders(tmp)  # what kill -9 leaves
    mine = runs / ".mine.changedet-keep"  # changedet's name, no owner record: not swept
    mine.mkdir()
    proc = cli(*args, tmpdir=tmp)
    assert proc.returncode == 0, proc.stderr
    assert staging_folders(runs) == [mine] and scratch_folders(tmp) == []
    assert (runs / "o" / "summary.json").is_file()


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_sweep_removes_only_folders_of_dead_changedet_runs(tmp_path):
    me = cio.owner_record()
    records = {
        ".a.changedet-dead": {**me, "pid": _dead_pid()},
        ".a.changedet-reused": {**me, "start_ticks": "1"},  # our pid, another process's start time
        ".a.changedet-live": me,
        ".a.changedet-elsewhere": {**me, "pid": _dead_pid(), "host": me["host"] + "-other"},
        ".a.changedet-container": {**me, "pid": _dead_pid(), "pid_namespace": "pid:[1]"},
        ".a.changedet-notours": {**me, "pid": _dead_pid(), "tool": "other"},
        "a-dead-but-not-a-staging-name": {**me, "pid": _dead_pid()},
    }
    for name, record in records.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / cio.OWNER_FILE).write_text(json.dumps(record))
    (tmp_path / ".b.changedet-noowner").mkdir()
    removed = cio.sweep_dead_staging(tmp_path)
    assert sorted(p.name for p in removed) == [".a.changedet-dead", ".a.changedet-reused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {*records, ".b.changedet-noowner"} - {".a.changedet-dead", ".a.changedet-reused"})


def test_a_folder_killed_before_it_was_marked_is_judged_by_its_name(tmp_path):
    """The owner token in a staging or scratch name is set when the folder is made; no record needed."""
    host, pid, start = cio.owner_token().split(".")
    dead = f"{host}.{_dead_pid()}.{start}"
    unmarked = {
        f".a.changedet-{dead}-x1y2z3": True,  # its owner is gone
        f".a.changedet-{host}.{pid}.{int(start) + 1}-x1y2z3": True,  # our pid, reused: another start time
        f".a.changedet-{cio.owner_token()}-x1y2z3": False,  # this very process: alive
        f".a.changedet-00000000.{_dead_pid()}.{start}-x1y2z3": False,  # another host or container
        f".a.changedet-{dead}": False,  # no random suffix: not a name changedet makes
    }
    for name in unmarked:
        (tmp_path / name).mkdir()
    removed = {p.name for p in cio.sweep_dead_staging(tmp_path)}
    assert removed == {name for name, gone in unmarked.items() if gone}
    made = cio.OutputStage(tmp_path / "site")
    with made:
        assert cio.owner_token() in made.path.name
        assert cio._owner_from_name(made.path.name) is not None


def _comparable(path: Path) -> object:
    """A file's content for comparing two runs: bytes, or JSON without the clock (created, timings)."""
    if path.name == "index.html":  # like batch_summary.json, it says which sites this invocation skipped
        return re.findall(r'href="([^"]+)"', path.read_text())
    data = clockless(path)
    if path.name == "batch_summary.json":  # which sites this invocation ran or skipped
        for site in data["sites"]:
            site.pop("status")
        for key in ("n_ok", "n_skipped"):
            data.pop(key)
    return data


def _folder(out: Path) -> dict[str, object]:
    return {str(p.relative_to(out)): _comparable(p) for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(scenes, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("uninterrupted")
    proc = cli("batch", scenes / "sites.yaml", "--out", root / "runs", tmpdir=root / "tmp")
    assert proc.returncode == 0, proc.stderr
    return _folder(root / "runs")


@pytest.mark.parametrize("sig,workers", [(signal.SIGKILL, 1), (signal.SIGTERM, 1), (signal.SIGKILL, 2)])
def test_batch_stopped_then_rerun_equals_an_uninterrupted_batch(tmp_path, scenes, uninterrupted, sig, workers):
    tmp, runs = tmp_path / "tmp", tmp_path / "runs"
    proc = start_cli("batch", scenes / "sites.yaml", "--out", runs, "--workers", workers, tmpdir=tmp)
    sites = ("camp", "trenches", "port")
    wait_until(lambda: any((runs / s / "summary.json").is_file() for s in sites), proc, what="a site's output")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", err),
                              "interrupted by SIGTERM", code=143)
        assert_nothing_left(tmp, runs)
    else:
        assert proc.returncode == -signal.SIGKILL
    done = [s for s in sites if (runs / s / "summary.json").is_file()]
    assert done and len(done) < len(sites) and not (runs / "batch_summary.json").exists()
    proc = cli("batch", scenes / "sites.yaml", "--out", runs, "--workers", workers, tmpdir=tmp)
    assert proc.returncode == 0, proc.stderr
    assert all(f"{s}: skipped" in proc.stdout for s in done)  # resumed: what was complete is not run again
    assert _folder(runs) == uninterrupted
    assert_nothing_left(tmp, runs)
    assert list(tmp.glob("pymp-*")) == []  # the killed batch's fork server folder went with the rerun
