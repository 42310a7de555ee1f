"""Run many sites from a YAML manifest.

One site's failure is recorded and the rest go on. A site whose outputs exist
for the same input files (SHA-256) and the same effective configuration is
skipped as current.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .config import MAX_GSD_M, Config, _merge, build_config
from .errors import ChangedetError, ConfigError, OutputError, OutputWriteError, shown
from .io import as_write_error, files_match, sweep_dead_staging, write_error, write_fault
from .stac import batch_collection, dumps, input_sha256, is_remote, resolve_input, split_assets
from .pipeline import CONTRACT_FILES, OUTPUT_FILES, ProgressFn, detect_pair, summary_schema
from .report import render_index
from .yamlfile import read_yaml

#: a site name names a folder: matched whole (``fullmatch``; ``$`` would let a final newline through)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Site:
    """One entry of a manifest."""

    name: str
    before: str  # a path (resolved against the manifest's folder), a URL or a STAC Item, as a string
    after: str
    config: dict[str, Any] = field(default_factory=dict)
    gsd_m: float | None = None
    assets: tuple[str, ...] = ()  # STAC Item assets to read (default: visual, else the 10 m bands)


def _site(entry: Any, i: int, base: Path, manifest: Path) -> Site:
    where = f"{manifest}: site {i + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping with name, before and after")
    unknown = [k for k in entry if k not in ("name", "before", "after", "config", "gsd_m", "assets")]
    if unknown:
        raise ConfigError(f"{where}: unknown key {shown(unknown[0])}; use name, before, after, config, gsd_m, assets")
    for key in ("name", "before", "after"):
        if entry.get(key) is None or entry.get(key) == "":
            raise ConfigError(f"{where}: missing {key!r}")
    name = entry["name"]
    if not isinstance(name, (str, int)) or isinstance(name, bool) or not NAME.fullmatch(str(name)):
        raise ConfigError(f"{where}: name {shown(name)} must be 1 to 100 letters, digits, '-', '_' or '.', "
                          "starting with a letter or digit (it names a folder)")
    name = str(name)
    for key in ("before", "after"):
        if not isinstance(entry[key], str) or "\0" in entry[key]:
            raise ConfigError(f"{where} ({name}): {key} {shown(entry[key])} must be a path (a string)")
    cfg = entry.get("config") or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} ({name}): config must be a mapping of overrides")
    gsd = entry.get("gsd_m")
    if gsd is not None and (not isinstance(gsd, (int, float)) or isinstance(gsd, bool)
                            or not 0 < gsd <= MAX_GSD_M):  # nan fails this too
        raise ConfigError(f"{where} ({name}): gsd_m {shown(gsd)} must be a positive number of metres, "
                          f"at most {MAX_GSD_M:g}")
    assets = entry.get("assets") or []
    if isinstance(assets, str):
        assets = [assets]
    if not isinstance(assets, list) or not all(isinstance(a, str) for a in assets):
        raise ConfigError(f"{where} ({name}): assets {shown(entry['assets'])} must be asset names, "
                          "e.g. assets: [B04, B03, B02]")
    before, after = (entry[k] if is_remote(entry[k]) else str(base / entry[k]) for k in ("before", "after"))
    return Site(name, before, after, cfg, gsd, split_assets(assets))


def read_manifest(path: str | Path) -> tuple[list[Site], dict[str, Any]]:
    """Read a manifest: a list of sites, or ``{config: {...}, sites: [...]}``.

    Returns the sites (paths resolved against the manifest's folder) and the
    manifest-wide configuration overrides.
    """
    path = Path(path)
    data = read_yaml(path, "manifest")
    overrides: dict[str, Any] = {}
    if isinstance(data, dict):
        extra = [k for k in data if k not in ("config", "sites")]
        if extra:
            raise ConfigError(f"{path}: unknown key {shown(extra[0])}; a manifest has 'config' and 'sites'")
        overrides = data.get("config") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: config must be a mapping of overrides, e.g. config: {{preset: vhr-0.5m}}")
        data = data.get("sites")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: no sites; list them under 'sites:' with name, before and after")
    sites = [_site(e, i, path.parent, path) for i, e in enumerate(data)]
    seen: set[str] = set()
    for s in sites:
        if s.name in seen:
            raise ConfigError(f"{path}: site name {shown(s.name)} is used twice; names must be unique")
        seen.add(s.name)
    return sites, overrides


def is_current(site: Site, out: Path, cfg: Config) -> bool:
    """True when ``out`` holds a complete run of this site's inputs with this configuration.

    Complete: ``summary.json`` has every key its schema requires, and every file it records
    (``files``) is there with that size and SHA-256, and no other contract file is; current:
    the same configuration and input files (SHA-256).
    """
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        return False
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if not isinstance(summary, dict) or not set(summary_schema()["required"]) <= set(summary):
            return False
        files = summary["files"]
        if not set(OUTPUT_FILES) - {"summary.json"} <= set(files):
            return False
        if any((out / name).is_file() for name in CONTRACT_FILES if name != "summary.json" and name not in files):
            return False
        if summary["config"] != cfg.record() or not files_match(out, files):
            return False
        for key in ("before", "after"):  # an input whose bytes cannot be hashed is never taken as current
            sha = input_sha256(resolve_input(getattr(site, key), site.assets).open_path)
            if sha is None or summary["inputs"][key]["sha256"] != sha:
                return False
        return True
    except (OSError, KeyError, ValueError, TypeError, ChangedetError):
        return False


def run_site(site: Site, out: Path, cfg: Config, progress: ProgressFn | None) -> dict[str, Any]:
    """Run one site and return its record; never raises for a site's own failure."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"name": site.name, "status": "ok", "error": None, "out_dir": str(out),
                              "n_detections": None, "changed_area_m2": None}
    try:
        if is_current(site, out, cfg):
            record["status"] = "skipped"
            summary = json.loads((out / "summary.json").read_text())
        else:
            summary = detect_pair(site.before, site.after, out, cfg, site=site.name, gsd_m=site.gsd_m,
                                  progress=progress, assets=site.assets).summary
        record["n_detections"] = len(summary["detections"])
        record["changed_area_m2"] = summary["changed_area_m2"]
    except OutputWriteError:
        raise  # a full or read-only disk is not this site's fault: the next sites would fail the same way
    except ChangedetError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one site's bug must not stop the batch
        record.update(status="error", error=f"{type(exc).__name__}: {exc}")
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def run_batch(manifest_path: str | Path, out_dir: str | Path, base_config_data: dict[str, Any] | None = None, *,
              sets: list[str] | tuple[str, ...] = (), preset: str | None = None, progress: ProgressFn | None = None,
              site_callback: Callable[[str, str], None] | None = None, workers: int = 1,
              scheduler: str | None = None, counts: Callable[[int, int, int, int], None] | None = None
              ) -> dict[str, Any]:
    """Run every site of a manifest into ``out_dir/<name>/`` and write ``batch_summary.json``.

    With ``workers`` 1 and no ``scheduler`` the sites run one after another in manifest order; with
    ``workers`` > 1 on a local dask cluster of that many processes, with ``scheduler`` (an address) on
    an existing dask cluster that sees the same files. Either way a site's outputs and the summary
    (records in manifest order) are the serial run's. ``counts(done, failed, running, total)`` follows
    a parallel batch; ``progress`` (per stage) only a serial one.
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give a number of worker processes from 1 up")
    if str(out_dir) == "":
        raise OutputError("--out is empty; give the batch's output folder")
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    sites, overrides = read_manifest(manifest_path)
    configs = {}
    for s in sites:  # resolve every config first: a bad key fails the batch before any work
        data = _merge(_merge(dict(base_config_data or {}), overrides), s.config)
        cfg = build_config(data, preset=preset, sets=sets, source=f"{manifest_path}: site {s.name}")
        if cfg.model.path and not Path(cfg.model.path).is_absolute():  # model files are relative to the manifest
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
                update={"path": str(manifest_path.parent / cfg.model.path)})})
        configs[s.name] = cfg

    def said(name: str, rec: dict[str, Any]) -> None:
        if site_callback:
            site_callback(name, rec["status"] if not rec["error"] else f"{rec['status']}: {rec['error']}")

    if workers == 1 and scheduler is None:
        _make_out(out_dir)
        sweep_dead_staging(out_dir)
        records = []
        for s in sites:
            records.append(run_site(s, out_dir / s.name, configs[s.name], progress))
            said(s.name, records[-1])
    else:
        from . import cluster

        client = cluster.connect(scheduler, workers)  # a bad address fails before the output folder is made
        try:
            _make_out(out_dir)
            sweep_dead_staging(out_dir)  # sites of a killed batch are run again; their dead staging goes now
            records = cluster.run_sites(client, sites, out_dir, configs, said, counts)
        finally:
            cluster.close(client)
    result = {
        "manifest": str(manifest_path),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sites": records,
        "n_ok": sum(r["status"] == "ok" for r in records),
        "n_skipped": sum(r["status"] == "skipped" for r in records),
        "n_failed": sum(r["status"] in ("failed", "error") for r in records),
    }
    _write_text(out_dir, "collection.json", dumps(batch_collection(manifest_path.stem, site_items(out_dir, records))))
    _write_text(out_dir, "index.html", render_index(result, out_dir))
    _write_text(out_dir, "batch_summary.json", json.dumps(result, indent=2) + "\n")
    return result


def site_items(out_dir: Path, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ``item.json`` of every site that ran or was current, by name, in manifest order."""
    items = {}
    for rec in records:
        path = out_dir / rec["name"] / "item.json"
        if rec["status"] in ("ok", "skipped") and path.is_file():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a run older than item.json, or one damaged: the collection lists what it can
            if isinstance(doc, dict) and doc.get("type") == "Feature" and isinstance(doc.get("properties"), dict):
                items[rec["name"]] = doc
    return items


def _write_text(out_dir: Path, name: str, text: str) -> None:
    """Write ``out_dir/name`` whole or not at all (a temporary file, then a rename)."""
    tmp = out_dir / f".{name}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        err = as_write_error(exc, out_dir, out_dir)
        if err is None:
            raise
        raise err from exc


def _make_out(out_dir: Path) -> None:
    """Create the batch's output folder, or say in one line why it cannot be written."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"{folder}: is a file, not a folder; choose another --out")
            break
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise as_write_error(exc, out_dir, out_dir) or OutputError(
            f"{out_dir}: cannot be created ({exc.strerror}); choose another --out") from None
    code = write_fault(out_dir)  # the folder must take files before any work
    if code is not None:
        raise write_error(out_dir, code)
