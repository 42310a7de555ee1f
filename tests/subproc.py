"""Run the installed CLI in a child process, as a user would, and check the error contract.

The hostile-input tests (issue 13) use these: a private TMPDIR per run, so that what a run
leaves behind in it can be seen; the exit code; one stderr line naming the file or option.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
    assert leftovers(tmpdir, *folders) == []
