"""Run the installed CLI in a child process, as a user would, and check the error contract.

The hostile-input tests (issue 13) use these: a private TMPDIR per run, so that what a run
leaves behind in it can be seen; the exit code; one stderr line naming the file or option.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_MARK = ".changedet-"  # staging folders are ".<out name>.changedet-<random>"


def cli(*args: object, tmpdir: Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m changedet ARGS`` with TMPDIR set to ``tmpdir`` (created); output captured as text."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "TMPDIR": str(tmpdir), "NO_COLOR": "1", "COLUMNS": "100", **(env or {})}
    return subprocess.run([sys.executable, "-m", "changedet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    """Exit ``code``, exactly one non-empty stderr line starting ``changedet: error:``, containing every needle."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("changedet: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def leftovers(*folders: Path) -> list[Path]:
    """Staging folders and changedet scratch anywhere under ``folders`` (recursively)."""
    found = []
    for folder in folders:
        if folder.exists():
            found += [p for p in folder.rglob("*") if STAGING_MARK in p.name or p.name.startswith("changedet-")]
    return sorted(found)


def assert_nothing_left(tmpdir: Path, *folders: Path) -> None:
    """No staging folder or changedet scratch copy is left in ``tmpdir`` or under ``folders``.

    Only changedet's own names are looked for: the sandbox or other libraries may put files of
    their own in TMPDIR.
    """
    found = leftovers(tmpdir, *folders)
    assert found == [], found


def start_cli(*args: object, tmpdir: Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``python -m changedet ARGS`` in the background, TMPDIR ``tmpdir``; stderr captured as text."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "NO_COLOR": "1", "COLUMNS": "100"}
    return subprocess.Popen([sys.executable, "-m", "changedet", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str] | None = None, bound_s: float = 240.0,
               what: str = "the condition") -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``bound_s`` (a generous bound, not a
    timing assertion) or when ``proc`` ends first."""
    deadline = time.monotonic() + bound_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {bound_s:.0f} s")
        time.sleep(0.02)


def staging_folders(folder: Path) -> list[Path]:
    """The hidden staging folders ``.NAME.changedet-*`` directly in ``folder``."""
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and STAGING_MARK in p.name[1:]) \
        if folder.is_dir() else []


def scratch_folders(tmpdir: Path) -> list[Path]:
    """The local copies of slow-format inputs ``changedet-inputs-*`` in ``tmpdir``."""
    return sorted(tmpdir.glob("changedet-inputs-*"))


@contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs mounted on ``folder`` (made) for the block; skips the test where mounting is not permitted."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8) for a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root or not permitted): {made.stderr.strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
