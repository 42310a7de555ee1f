"""``run_series``: the series command as a library function (I/O at the edges, stages in between)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import NotGeoreferencedWarning

from .. import quicklook
from ..config import Config
from ..errors import OutputError
from ..io import OutputStage, _ScratchDir, file_record, sweep_dead_scratch, write_json
from ..pipeline import ProgressFn, _no_progress
from . import record, timeline
from .dates import DatedImage, discover, pick_reference
from .engine import analyse, counts_per_date
from .stack import register_dates

OUTPUT_FILES = ("presence.csv", "tracks.geojson", "timeline.png", "series.json")


@dataclass(frozen=True)
class SeriesResult:
    """What ``run_series`` produced."""

    out_dir: Path
    record: dict[str, Any]


def run_series(inputs: Sequence[str | Path], out_dir: str | Path, config: Config | None = None, *,
               reference: str | None = None, site: str | None = None, gsd_m: float | None = None,
               images: list[DatedImage] | None = None, progress: ProgressFn | None = None) -> SeriesResult:
    """Presence per date and tracks over a dated series of one site; writes the series contract.

    Parameters
    ----------
    inputs : raster files, folders and YAML manifests (``images: [{path, date}]``); see
        :func:`changedet.series.dates.discover`.
    out_dir : output folder; its files appear only when the run completes.
    config : effective configuration (a manifest's ``config`` is for the CLI to merge).
    reference : the reference date (YYYY-MM-DD) or path; default the first date.
    site : name for the record (default: the output folder's name).
    images : the dated images, when already discovered (the CLI discovers them to read a manifest's config).
    progress : callback ``(stage, done, total)``.
    """
    cfg = config or Config()
    progress = progress or _no_progress
    if str(out_dir) == "":
        raise OutputError("--out is empty; give the output folder")
    out = Path(out_dir)
    if images is None:
        images, _ = discover([Path(p) for p in inputs])
    ref = pick_reference(images, reference)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sweep_dead_scratch()
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        stage = OutputStage(out, OUTPUT_FILES)
        with stage:
            scratch = _ScratchDir()
            try:
                stack = register_dates(images, ref, scratch.path, cfg, gsd_m or cfg.gsd_m, progress)
                timings["register"] = round(time.perf_counter() - t0, 3)
                t1 = time.perf_counter()
                analysis = analyse(stack, cfg, progress)
                timings["analyse"] = round(time.perf_counter() - t1, 3)
                dates = [im.date.isoformat() for im in images]
                tracks = record.track_records(dates, analysis)
                warns = [f"{r.image.path}: {w}" for r in stack.records for w in r.warnings]
                (stage.file("presence.csv")).write_text(record.presence_csv(dates, analysis), encoding="utf-8")
                write_json(stage.file("tracks.geojson"), record.track_features(tracks, analysis, stack))
                name = site or out.name
                picture = timeline.render(dates, [bool(v) for v in analysis.date_ok], tracks,
                                          counts_per_date(analysis, len(dates)),
                                          f"{name}: {dates[0]} to {dates[-1]} ({len(dates)} dates)",
                                          cfg.series.timeline_max_tracks)
                stage.file("timeline.png").write_bytes(quicklook.encode_png(picture))
                timings["total"] = round(time.perf_counter() - t0, 3)
                rec = record.series_record(name, stack, ref, dates, analysis, tracks, cfg.model_dump(mode="json"),
                                           warns, timings)
                rec["files"] = file_record(stage.file("series.json").parent, list(OUTPUT_FILES[:-1]))
                write_json(stage.file("series.json"), rec)
            finally:
                scratch.close()
            stage.commit(list(OUTPUT_FILES))
    return SeriesResult(stage.out_dir, rec)


def series_schema() -> dict[str, Any]:
    """The JSON Schema that ``series.json`` validates against (shipped in the package)."""
    import json
    from importlib.resources import files

    return json.loads(files("changedet").joinpath("schema/series.schema.json").read_text(encoding="utf-8"))
