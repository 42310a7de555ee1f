"""Checks as JUnit XML, the report format CI systems read (GitLab, Jenkins, GitHub test reporters).

One ``<testsuite>`` holds one ``<testcase>`` per check; a failed check carries a ``<failure>``
with its message. Counts (``tests``, ``failures``, ``errors``, ``skipped``) are attributes of
the suite and of the ``<testsuites>`` root, as the common JUnit schema expects.
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError


@dataclass(frozen=True)
class Check:
    """One pass/fail check: ``name`` says what was checked, ``message`` why it failed (or what it measured)."""

    name: str
    passed: bool
    message: str


def junit_tree(suite: str, checks: list[Check]) -> ET.ElementTree:
    """A JUnit document of ``checks`` as test cases of one suite named ``suite``."""
    failures = sum(not c.passed for c in checks)
    counts = {"tests": str(len(checks)), "failures": str(failures), "errors": "0", "skipped": "0"}
    root = ET.Element("testsuites", {"name": "changedet", **counts})
    ts = ET.SubElement(root, "testsuite", {"name": suite, **counts, "time": "0"})
    for c in checks:
        tc = ET.SubElement(ts, "testcase", {"classname": suite, "name": c.name, "time": "0"})
        if c.passed:
            ET.SubElement(tc, "system-out").text = c.message
        else:
            ET.SubElement(tc, "failure", {"message": c.message, "type": "CheckFailed"}).text = c.message
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(path: str | Path, suite: str, checks: list[Check]) -> Path:
    """Write ``checks`` as JUnit XML to ``path``: a temporary file beside it, then a rename.

    A reader (a CI job collecting reports) never sees a half-written file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"--junit {path}: is a folder; give a file name such as {path / 'report.xml'}")
    tree = junit_tree(suite, checks)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"--junit {path}: cannot write there ({exc.strerror}); give a file in a writable "
                          "folder") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            tree.write(fh, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
