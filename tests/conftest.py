"""Shared fixtures: scenes made by the project's own generator, and runs of detect on them."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TILES = ROOT / "sample_tiles"
SITES = ("trenches", "camp", "port")


def _run_sites(out: Path, sets: list[str]) -> dict[str, Path]:
    from changedet.config import build_config
    from changedet.pipeline import detect_pair

    runs = {}
    for site in SITES:
        folder = SAMPLE_TILES / site
        detect_pair(folder / "before.tif", folder / "after.tif", out / site, build_config(sets=sets), site=site)
        runs[site] = out / site
    return runs


@pytest.fixture(scope="session")
def sample_runs(tmp_path_factory) -> dict[str, Path]:
    """``detect`` run once on every bundled sample site, as shipped."""
    return _run_sites(tmp_path_factory.mktemp("sample_runs"), [])


@pytest.fixture(scope="session")
def classical_runs(tmp_path_factory) -> dict[str, Path]:
    """``detect`` with the learned stage off, once on every bundled sample site."""
    return _run_sites(tmp_path_factory.mktemp("classical_runs"), ["model.enabled=false"])


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory) -> Path:
    """A fresh 256 px camp scene written by synth."""
    from changedet import synth

    folder = tmp_path_factory.mktemp("scene") / "camp"
    synth.write_scene(synth.make_scene("camp", seed=101, size=256), folder)
    return folder
