"""The ``changedet`` command line: thin typer commands over the library.

Errors a user can cause (:class:`~changedet.errors.ChangedetError`) print one
line and exit 2; anything else is a bug: exit 1, traceback with ``--debug``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import __version__
from .config import MAX_GSD_M, list_presets, load_config
from .errors import ChangedetError, shown

try:  # typer >= 0.2x carries its own copy of click; older typer runs on click itself
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exceptions  # type: ignore[no-redef]
#: click raises it (from 8.2) for a group called with no arguments, after printing the help
_NO_ARGS_IS_HELP = getattr(_click_exceptions, "NoArgsIsHelpError", ())

app = typer.Typer(
    name="changedet",
    help="Find what is new between two satellite images of the same site.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False, "quiet": False}

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (see configs/).")]
# a str with completion rather than an enum: the config layer names a bad preset in its own bounded message
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help=f"Named preset: {', '.join(list_presets())}.",
                                                  autocompletion=lambda incomplete: [
                                                      p for p in list_presets() if p.startswith(incomplete)])]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override one key, e.g. --set decide.min_area_m2=10 (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else (messages go to stderr).")]
JunitOpt = Annotated[Optional[Path], typer.Option("--junit", metavar="FILE", help="Also write the checks as JUnit XML to FILE, one test case each (for CI).")]


class Scenario(str, Enum):
    """``synth --scenario``: a pair (trenches, camp, port) or, with --dates, a series (port, base)."""

    trenches = "trenches"
    camp = "camp"
    port = "port"
    base = "base"


class Difficulty(str, Enum):
    """``synth --difficulty``."""

    easy = "easy"
    medium = "medium"
    hard = "hard"


def _one_line(message: str, limit: int = 500) -> str:
    """``message`` as one printable line of at most ``limit`` characters.

    Messages quote what the user gave (paths, values, typer's echo of an option): control
    characters (newlines too: a path may hold one) are escaped, and an overlong message loses
    its middle, so that the start (what was wrong) and the end (the fix, a file's name) remain.
    """
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message.strip())
    if len(message) <= limit:
        return message
    half = (limit - 1) // 2
    return message[:half] + "…" + message[-half:]


def _fail(message: str, code: int) -> None:
    typer.echo(f"changedet: error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


class _Signalled(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind like Ctrl-C, so that staging and scratch are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _on_signal(signum: int, frame: object) -> None:
    for sig in _STOP_SIGNALS:  # the clean-up that follows must not be cut short by a second signal
        signal.signal(sig, signal.SIG_IGN)
    raise _Signalled(signum)


@contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP (and SIGINT) into an exception while a command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _errors() -> Iterator[None]:
    """Map library errors to exit codes: user error 2, bug 1, a stop signal 128 + its number."""
    try:
        with _stop_signals():
            yield
    except ChangedetError as exc:
        _fail(str(exc), 2)
    except (KeyboardInterrupt, _Signalled) as exc:
        signum = exc.signum if isinstance(exc, _Signalled) else int(signal.SIGINT)
        _fail(f"interrupted by {signal.Signals(signum).name}; the unfinished run's files were removed", 128 + signum)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if _state["debug"]:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per stage on a terminal; silent otherwise."""
    if _state["quiet"] or not sys.stderr.isatty():
        yield lambda stage, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, console=Console(stderr=True)) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


@contextmanager
def _site_counts(enabled: bool) -> Iterator[Callable[[int, int, int, int], None] | None]:
    """A rich line of sites done / failed / running while a cluster works; None when silent."""
    if not enabled or _state["quiet"] or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("sites"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[failed]} failed, {task.fields[running]} running"), TimeElapsedColumn(),
                  transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("sites", total=None, failed=0, running="?")

        def update(done: int, failed: int, running: int, total: int) -> None:
            bar.update(task, completed=done, total=total, failed=failed, running=running)

        yield update


def _out_path(value: str, what: str) -> Path:
    """``--out`` as a path; an empty one would silently mean the working folder."""
    if not value.strip():
        _fail(f"--out {value!r}: is empty; give {what}", 2)
    return Path(value)


OUT_METAVAR = "PATH"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"changedet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or result lines.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Find what is new between two satellite images of the same site."""
    _state["debug"], _state["quiet"] = debug, quiet
    logging.basicConfig(stream=sys.stderr, level=max(10, 30 - 10 * verbose), format="%(levelname)s %(name)s: %(message)s")


class VectorFormat(str, Enum):
    """Extra vector file beside detections.geojson (``output.vector_format``)."""

    gpkg = "gpkg"
    fgb = "fgb"


VectorFormatOpt = Annotated[Optional[VectorFormat], typer.Option(
    "--vector-format", help="Also write detections.gpkg (GeoPackage) or detections.fgb (FlatGeobuf); same as --set output.vector_format=...")]


@app.command()
def detect(
    before: Annotated[str, typer.Argument(help="Reference image: any GDAL raster, path or URL (https://, s3://, /vsicurl/...), or a STAC Item (.json file or URL); its grid is the output grid.")],
    after: Annotated[str, typer.Argument(help="Later image of the same site (same kinds as BEFORE).")],
    out: Annotated[str, typer.Option("--out", "-o", metavar=OUT_METAVAR, help="Output folder (created when the run completes).")],
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    site: Annotated[Optional[str], typer.Option("--site", help="Site name for the record (default: --out's name).")] = None,
    gsd: Annotated[Optional[float], typer.Option("--gsd", help="Ground sample distance in metres (for images without georeferencing).")] = None,
    require_registration: Annotated[bool, typer.Option("--require-registration", help="Exit 1 when registration confidence is low.")] = False,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model file from 'changedet train' (default: the shipped model; --set model.enabled=false for none).")] = None,
    asset: Annotated[Optional[list[str]], typer.Option("--asset", help="STAC Item asset(s) to read, repeatable or a comma list (default: visual, else B02,B03,B04,B08).")] = None,
    vector_format: VectorFormatOpt = None,
    as_json: JsonOpt = False,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", min=0, help="Threads running windows at once (default: processing.workers, 0 = every core); results do not depend on it.")] = None,
) -> None:
    """Detect changes between BEFORE and AFTER and write the output contract to --out.

    Example: changedet detect before.tif after.tif --out runs/site1 --preset vhr-0.5m
    """
    from .errors import RegistrationError
    from .pipeline import detect_pair
    from .stac import split_assets

    with _errors():
        out_dir = _out_path(out, "the output folder")
        if gsd is not None and not 0 < gsd <= MAX_GSD_M:  # nan fails this too
            _fail(f"--gsd {gsd}: give a positive number of metres, at most {MAX_GSD_M:g}", 2)
        if site is not None:
            _check_site(site)
        sets = list(set_ or [])
        if model is not None:
            sets.append(f"model.path={json.dumps(str(model))}")
        if vector_format is not None:
            sets.append(f"output.vector_format={vector_format.value}")
        if workers is not None:
            sets.append(f"processing.workers={workers}")
        cfg = load_config(config, preset=preset, sets=sets)
        if cfg.model.enabled:
            from .learned import load_model

            load_model(cfg.model.path)  # a bad model file fails before any work
        try:
            with _progress() as progress:
                result = detect_pair(before, after, out_dir, cfg, site=site, gsd_m=gsd,
                                     require_registration=require_registration, progress=progress,
                                     assets=split_assets(asset))
        except RegistrationError as exc:
            _fail(str(exc), 1)
        s = result.summary
        if as_json:
            typer.echo(json.dumps(s, ensure_ascii=False))  # the record as summary.json holds it
            for w in s["warnings"]:
                typer.echo(f"warning: {w}", err=True)
        elif not _state["quiet"]:
            reg = s["registration"]
            typer.echo(f"{s['site']}: {len(s['detections'])} detections "
                       f"({', '.join(f'{k} {v}' for k, v in s['counts'].items() if v) or 'none'}), "
                       f"changed {s['changed_area_m2']:.0f} m², shift {reg['shift_px']} px "
                       f"(confidence {reg['confidence']:.2f}) -> {result.out_dir}")
            for w in s["warnings"]:
                typer.echo(f"warning: {w}", err=True)


@app.command()
def series(
    inputs: Annotated[list[Path], typer.Argument(help="Images of one site: raster files, a folder of them, or a YAML manifest (images: [{path, date}]).")],
    out: Annotated[str, typer.Option("--out", "-o", metavar=OUT_METAVAR, help="Output folder (created when the run completes).")],
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="Reference date (YYYY-MM-DD) or path; its grid is the output grid (default: the first date).")] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    site: Annotated[Optional[str], typer.Option("--site", help="Site name for the record (default: --out's name).")] = None,
) -> None:
    """Presence per date and tracks over a dated series of one site.

    Dates come from the manifest, a TIFFTAG_DATETIME / ACQUISITIONDATETIME / datetime tag, or a YYYY-MM-DD or YYYYMMDD in the file name.

    Writes presence.csv, tracks.geojson, series.json and timeline.png to --out.

    Example: changedet series scenes/port/series.yaml --out runs/port --reference 2024-10-01
    """
    from .config import _merge, _read_yaml, build_config
    from .series import run_series
    from .series.dates import discover

    with _errors():
        out_dir = _out_path(out, "the output folder")
        if site is not None:
            _check_site(site)
        images, manifest_cfg = discover(inputs)
        data = _merge(manifest_cfg, _read_yaml(Path(config)) if config is not None else {})
        cfg = build_config(data, preset=preset, sets=list(set_ or []), source=str(config) if config else "manifest")
        with _progress() as progress:
            result = run_series(inputs, out_dir, cfg, reference=reference, site=site, images=images,
                                progress=progress)
        rec = result.record
        if not _state["quiet"]:
            t = rec["totals"]
            typer.echo(f"{rec['site']}: {t['n_dates']} dates ({t['n_observable_dates']} observable), "
                       f"{t['n_tracks']} tracks, ship-days {t['dates_with_vessel']} -> {result.out_dir}")
            for w in rec["warnings"]:
                typer.echo(f"warning: {w}", err=True)


@app.command()
def synth(
    out: Annotated[str, typer.Option("--out", "-o", metavar=OUT_METAVAR, help="Folder to write the scene into.")],
    scenario: Annotated[Optional[Scenario], typer.Option("--scenario", help="trenches, camp or port (default trenches); "
                                                         "with --dates: port or base (default port).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    size: Annotated[int, typer.Option("--size", help="Side of the square tile, pixels.")] = 512,
    difficulty: Annotated[Difficulty, typer.Option("--difficulty", help="How faint and cluttered the changes are.")] = Difficulty.medium,
    weather: Annotated[str, typer.Option("--weather", help="none, all, or a comma list of cloud, haze, season, jpeg "
                                         "(cloud, shadow and thick haze are 255 in the truth).")] = "none",
    rotation_deg: Annotated[float, typer.Option("--rotation-deg", help="Rotation of after about the tile centre, degrees.")] = 0.0,
    dates: Annotated[Optional[int], typer.Option("--dates", help="Write a dated series of N dates of one site "
                                                 "(DIR/<date>.tif, series.yaml, truth_series.json, truth/).")] = None,
    start_date: Annotated[Optional[str], typer.Option("--start-date", help="First date of a series, YYYY-MM-DD "
                                                      "(default 2024-08-20).")] = None,
    cadence_days: Annotated[Optional[int], typer.Option("--cadence-days", help="Days between dates of a series "
                                                        "(default 3, jittered by a day).")] = None,
) -> None:
    """Write a synthetic before/after pair, or with --dates a dated series, with ground truth.

    Example: changedet synth --out scenes/port1 --scenario port --seed 7 --weather cloud,haze

    Example: changedet synth --out series/port1 --dates 30 --scenario port --seed 7
    """
    from . import synth as synth_mod

    scenario_name = None if scenario is None else Scenario(scenario).value
    difficulty_name = Difficulty(difficulty).value
    with _errors():
        out_dir = _out_path(out, "the folder to write the scene into")
        if dates is not None or start_date is not None or cadence_days is not None:
            _synth_series(out_dir, scenario_name, seed, size, difficulty_name, weather, rotation_deg, dates, start_date,
                          cadence_days)
            return
        name = scenario_name or "trenches"
        if name not in synth_mod.SCENARIOS:
            _fail(f"--scenario {shown(name)}: without --dates choose one of {', '.join(synth_mod.SCENARIOS)}", 2)
        try:
            synth_mod.parse_weather(weather)
        except ValueError as exc:
            _fail(f"--weather {shown(weather)}: {exc}", 2)
        if not -45.0 <= rotation_deg <= 45.0:  # nan fails this too
            _fail(f"--rotation-deg {rotation_deg}: give a rotation from -45 to 45 degrees", 2)
        if not 128 <= size <= 16384:
            _fail(f"--size {size}: give a whole number of pixels from 128 to 16384", 2)
        if seed < 0:
            _fail(f"--seed {seed}: give a whole number from 0 up", 2)
        with _progress() as progress:
            try:
                scene = synth_mod.make_scene(name, seed=seed, size=size, difficulty=difficulty_name,
                                             rotation_deg=rotation_deg, weather=weather, progress=progress)
            except ValueError as exc:
                _fail(str(exc), 2)
            files = synth_mod.write_scene(scene, out_dir, progress)
        if not _state["quiet"]:
            typer.echo(f"{name} seed {seed}: {len(scene.objects)} objects, shift {list(scene.shift_px)} px -> {out_dir}")
            for fname in sorted(files):
                typer.echo(f"  {files[fname]}")


def _synth_series(out_dir: Path, scenario: str | None, seed: int, size: int, difficulty: str, weather: str,
                  rotation_deg: float, dates: int | None, start_date: str | None, cadence_days: int | None) -> None:
    """``synth --dates``: check the options, then plan and write the series."""
    import datetime as dt

    from . import series_synth as ss
    from . import synth as synth_mod

    if dates is None:
        _fail("--start-date and --cadence-days describe a series: give --dates N too", 2)
    assert dates is not None
    scenario = scenario or "port"
    if scenario not in ss.SERIES_SCENARIOS:
        _fail(f"--scenario {shown(scenario)}: with --dates choose one of {', '.join(ss.SERIES_SCENARIOS)}", 2)
    if not ss.MIN_DATES <= dates <= ss.MAX_DATES:
        _fail(f"--dates {dates}: give a number of dates from {ss.MIN_DATES} to {ss.MAX_DATES}", 2)
    if difficulty not in synth_mod.DIFFICULTIES:
        _fail(f"--difficulty {shown(difficulty)}: choose one of {', '.join(synth_mod.DIFFICULTIES)}", 2)
    if weather != "none":
        _fail(f"--weather {shown(weather)}: a series has its own cloudy dates; leave --weather out with --dates", 2)
    if rotation_deg != 0.0:
        _fail(f"--rotation-deg {rotation_deg}: not available with --dates (each date gets its own shift)", 2)
    if not ss.MIN_SIZE <= size <= ss.MAX_SIZE:
        _fail(f"--size {size}: with --dates give a whole number of pixels from {ss.MIN_SIZE} to {ss.MAX_SIZE}", 2)
    if seed < 0:
        _fail(f"--seed {seed}: give a whole number from 0 up", 2)
    start = dt.date(2024, 8, 20)
    if start_date is not None:
        try:
            if len(start_date) != 10:
                raise ValueError
            start = dt.date.fromisoformat(start_date)
        except ValueError:
            _fail(f"--start-date {shown(start_date)}: give a date as YYYY-MM-DD, e.g. 2024-08-20", 2)
    cadence = 3 if cadence_days is None else cadence_days
    if not 1 <= cadence <= 365:
        _fail(f"--cadence-days {cadence}: give a whole number of days from 1 to 365", 2)
    plan = ss.plan_series(scenario, seed=seed, size=size, n_dates=dates, start_date=start, cadence_days=cadence,
                          difficulty=difficulty)
    truth = ss.write_series(plan, out_dir)
    if not _state["quiet"]:
        n_obs = sum(p["observable"] for p in truth["per_date"])
        typer.echo(f"{scenario} seed {seed}: {dates} dates {truth['dates'][0]} to {truth['dates'][-1]} "
                   f"({n_obs} observable), {len(truth['tracks'])} tracks, ship-days {truth['ship_days']} -> {out_dir}")


def _gate(command: str, checks: list[Any]) -> None:
    """Exit 1 with one stderr line naming the failed checks (of eval --fail-under or compare)."""
    failed = [c.message for c in checks if not c.passed]
    if failed:
        typer.echo(f"changedet: {command} failed: {'; '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    outdir: Annotated[Path, typer.Argument(help="Output folder of changedet detect.")],
    truth: Annotated[Path, typer.Option("--truth", "-t", help="Truth folder from synth, or a 0/255 label image.")],
    as_json: JsonOpt = False,
    fail_under: Annotated[Optional[str], typer.Option(
        "--fail-under", metavar="NAME=MIN,...",
        help="Exit 1 when a metric is below its bound, e.g. f1=0.8,recall=0.9. Metrics: precision, recall, f1, iou "
             "(pixels), object_precision, object_recall, type_accuracy (need a synth truth folder).")] = None,
    junit: JunitOpt = None,
) -> None:
    """Score an output folder against ground truth; with --fail-under, a pass/fail gate for CI.

    Example: changedet eval runs/site1 --truth sample_tiles/trenches --fail-under f1=0.8 --junit eval.xml
    """
    from .evaluate import check_bounds, evaluate, format_table, parse_bounds
    from .junit import write_junit

    with _errors():
        bounds = {}
        if fail_under is not None:
            try:
                bounds = parse_bounds(fail_under)
            except ValueError as exc:
                _fail(f"--fail-under {shown(fail_under)}: {exc}", 2)
        elif junit is not None:
            _fail("--junit writes the --fail-under checks: give --fail-under too, e.g. --fail-under f1=0.8", 2)
        ev = evaluate(outdir, truth)
        try:
            checks = check_bounds(ev, bounds)
        except ValueError as exc:
            _fail(f"--fail-under {shown(fail_under)}: {exc}", 2)
        if junit is not None:
            write_junit(junit, f"changedet eval {outdir.name}", checks)
        if as_json:
            record = ev.to_json()
            if fail_under is not None:
                record["checks"] = [{"name": c.name, "passed": c.passed, "message": c.message} for c in checks]
            typer.echo(json.dumps(record, indent=2))
        else:
            typer.echo(format_table(ev))
        _gate("eval", checks)


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="Output folder of changedet detect: the reference run.")],
    run_b: Annotated[Path, typer.Argument(help="Output folder of the same site to compare with it.")],
    max_pixels_changed: Annotated[float, typer.Option(
        "--max-pixels-changed", metavar="FRACTION", min=0.0, max=1.0,
        help="Share of pixels of change_mask.tif / change_class.tif that may change state.")] = 0.0,
    max_detections_changed: Annotated[int, typer.Option(
        "--max-detections-changed", metavar="N", min=0,
        help="Detections that may be added, removed, retyped or moved (each).")] = 0,
    max_moved_m: Annotated[float, typer.Option(
        "--max-moved-m", metavar="M", min=0.0,
        help="A matched detection whose centroid moved further than this, in metres, counts as moved.")] = 1.0,
    min_iou: Annotated[float, typer.Option(
        "--min-iou", metavar="IOU", min=0.0, max=1.0,
        help="Footprint overlap (intersection over union) at which two detections are the same one.")] = 0.1,
    as_json: JsonOpt = False,
    junit: JunitOpt = None,
) -> None:
    """Compare two runs of the same site: pixels that changed state and detections added, removed, retyped or moved.

    Exit 0 when the differences are within the tolerances, 1 when not, 2 when a folder is not a run.

    Example: changedet compare runs/v1/site1 runs/v2/site1 --max-pixels-changed 0.001 --junit compare.xml
    """
    from .compare import Tolerance, compare_runs, format_table, load_run
    from .junit import write_junit

    with _errors():
        for name, value in (("--max-pixels-changed", max_pixels_changed), ("--max-moved-m", max_moved_m),
                            ("--min-iou", min_iou)):
            if value != value:  # nan
                _fail(f"{name} nan: give a number", 2)
        tol = Tolerance(max_pixels_changed, max_detections_changed, max_moved_m, min_iou)
        cmp = compare_runs(load_run(run_a), load_run(run_b), tol)
        if junit is not None:
            write_junit(junit, f"changedet compare {run_a.name}", cmp.checks)
        if as_json:
            typer.echo(json.dumps({"run_a": str(run_a), "run_b": str(run_b), **cmp.to_json()}, ensure_ascii=False))
        elif not _state["quiet"]:
            from rich.console import Console

            Console(soft_wrap=False).print(format_table(cmp, str(run_a), str(run_b)))
        _gate("compare", cmp.checks)


@app.command()
def batch(
    manifest: Annotated[Path, typer.Argument(help="YAML manifest: sites with name, before, after, optional config.")],
    out: Annotated[str, typer.Option("--out", "-o", metavar=OUT_METAVAR, help="Output folder; each site goes to OUT/<name>/.")],
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    vector_format: VectorFormatOpt = None,
    as_json: JsonOpt = False,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Sites at once on a local dask cluster "
                                         "of N processes (default 1: one after another, without dask).")] = 1,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Run the sites on an existing dask "
                                                     "cluster, e.g. tcp://10.0.0.5:8786 (its workers must see "
                                                     "the manifest's files and --out at the same paths).")] = None,
) -> None:
    """Run every site of a manifest; failures are recorded and the rest go on (exit 1 if any failed).

    Example: changedet batch sites.yaml --out runs/ --workers 4
    """
    with _errors():
        if workers > 1 and scheduler is None:
            from .cluster import prestart

            prestart()  # the workers' imports (~2 s of a core) beside this process's own, from here on
        from .batch import run_batch
        from .config import _read_yaml

        out_dir = _out_path(out, "the batch's output folder")
        base = _read_yaml(config) if config else {}

        def said(name: str, status: str) -> None:
            if not _state["quiet"]:
                typer.echo(f"{name}: {status}", err=as_json)

        if scheduler is not None and workers != 1:
            _fail(f"--workers {workers} with --scheduler: the cluster's workers run the sites; leave --workers out", 2)
        if scheduler is not None and not scheduler.strip():
            _fail("--scheduler '': is empty; give the scheduler's address, e.g. tcp://10.0.0.5:8786", 2)
        parallel = workers > 1 or scheduler is not None
        sets = [*(set_ or []), *([f"output.vector_format={vector_format.value}"] if vector_format else [])]
        with _progress() as progress, _site_counts(parallel) as counts:
            result = run_batch(manifest, out_dir, base, sets=sets, preset=preset,
                               progress=None if parallel else progress, site_callback=said, workers=workers,
                               scheduler=scheduler, counts=counts)
        if as_json:
            typer.echo(json.dumps(result, ensure_ascii=False))
        elif not _state["quiet"]:
            typer.echo(f"{result['n_ok']} ok, {result['n_skipped']} skipped, {result['n_failed']} failed "
                       f"-> {out_dir / 'batch_summary.json'}")
        if result["n_failed"]:
            raise typer.Exit(1)


@app.command()
def train(
    manifest: Annotated[Path, typer.Argument(help="YAML manifest of labelled pairs (before, after, label raster or GeoJSON).")],
    out: Annotated[str, typer.Option("--out", "-o", metavar=OUT_METAVAR, help="Model file to write (.npz); its card goes beside it as .card.json.")],
    augment: Annotated[Optional[int], typer.Option("--augment", help="Views per pair, 1-8 (rotations and flips; default 2).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Passes over the samples (default 30).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed of sampling and training (default 0).")] = None,
) -> None:
    """Train the learned head on labelled pairs and write a model file for detect --model.

    Example: changedet train labels.yaml --out models/my_site.npz
    """
    from .learned.training import check_options, load_manifest
    from .learned.training import train as train_head

    with _errors():
        out_file = _out_path(out, "the model file to write (.npz)")
        given = {k: v for k, v in (("augment", augment), ("epochs", epochs), ("seed", seed)) if v is not None}
        check_options(given, "--")
        if not out.endswith(".npz"):
            _fail(f"--out {out}: a model file ends in .npz", 2)
        pairs, options = load_manifest(manifest)
        options.update(given)
        with _progress() as progress:
            hd, digest = train_head(pairs, out_file, options, progress=progress)
        if not _state["quiet"]:
            tr = hd.card["training"]
            typer.echo(f"{len(pairs)} pairs, {tr['samples']} samples, {tr['seconds']:.0f} s, threshold "
                       f"{hd.threshold:.3f} -> {out_file} (sha256 {digest[:12]})")


@app.command()
def presets() -> None:
    """List the shipped configuration presets."""
    for name in list_presets():
        typer.echo(name)


def _check_site(site: str) -> None:
    """``--site`` is printed and written to summary.json: one printable line of sensible length."""
    if not site.strip() or len(site) > 200 or any(unicodedata.category(c).startswith("C") for c in site):
        _fail(f"--site {shown(site)}: give a name of 1 to 200 printable characters (no newlines or "
              "control characters)", 2)


def _usage_error(exc: _click_exceptions.UsageError) -> None:
    """Print a usage error (typer's own: missing option, bad value, ...) as one line."""
    names, ctx = [], exc.ctx
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    command = " ".join(["changedet", *reversed(names), "--help"])
    typer.echo(f"changedet: error: {_one_line(exc.format_message())} (see '{command}')", err=True)


def main(args: list[str] | None = None) -> None:
    """Console-script (and ``python -m changedet``) entry point.

    The command runs with click's standalone mode off, so that typer's own usage errors
    (a missing option, a value that is not a number, an unknown option) come back here and
    are printed as one line, as every other error is; help, ``--version`` and exit codes are
    unchanged.
    """
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:  # no arguments at all: the help
        if exc.format_message().strip():  # typer with rich has printed it already
            exc.show()
        code = exc.exit_code
    except _click_exceptions.UsageError as exc:
        _usage_error(exc)
        code = 2
    except _click_exceptions.ClickException as exc:
        typer.echo(f"changedet: error: {_one_line(exc.format_message())}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("changedet: error: aborted", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
