"""JUnit XML of checks: the elements and counts CI systems read, written whole or not at all."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from changedet.errors import OutputError
from changedet.junit import Check, write_junit


def test_cases_failures_and_counts(tmp_path):
    checks = [Check("f1", True, "f1 0.9 >= 0.8"), Check("recall", False, "recall 0.4 < 0.9"),
              Check("iou & <more>", False, "iou 0.1 < 0.5 \"quoted\"")]
    path = write_junit(tmp_path / "r.xml", "changedet eval site", checks)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "2", "0")
    suite = root.find("testsuite")
    assert suite.get("name") == "changedet eval site" and (suite.get("tests"), suite.get("failures")) == ("3", "2")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["f1", "recall", "iou & <more>"]
    assert cases[0].find("failure") is None
    assert cases[1].find("failure").get("message") == "recall 0.4 < 0.9"
    assert cases[2].find("failure").text == "iou 0.1 < 0.5 \"quoted\""
    assert [p.name for p in tmp_path.iterdir()] == ["r.xml"]


def test_no_checks_is_an_empty_valid_suite(tmp_path):
    root = ET.parse(write_junit(tmp_path / "r.xml", "s", [])).getroot()
    assert root.get("tests") == "0" and root.findall("testsuite/testcase") == []


def test_unwritable_places_are_output_errors(tmp_path):
    with pytest.raises(OutputError, match="is a folder"):
        write_junit(tmp_path, "s", [])
    with pytest.raises(OutputError, match="cannot write"):
        write_junit(tmp_path / "missing" / "r.xml", "s", [])
    assert [p.name for p in tmp_path.iterdir()] == []
