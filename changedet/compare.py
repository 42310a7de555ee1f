"""Compare two output folders of ``changedet detect``: what changed between run A and run B.

For a regression check in CI: the same inputs run by two versions (or configurations) of the
tool. Pixels that changed state in ``change_mask.tif`` and ``change_class.tif`` are counted;
detections are matched by the intersection over union of their footprints and reported as
added, removed, retyped (matched, another class) or moved (matched, centroid moved further than
a tolerance). :func:`compare_runs` works on loaded runs (:class:`Run`); only :func:`load_run`
reads files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .evaluate import read_band
from .junit import Check

#: the files a run folder must hold to be compared
RUN_FILES = ("summary.json", "change_mask.tif", "change_class.tif", "detections.geojson")
EARTH_RADIUS_M = 6_371_008.8
#: detections named in a check's message (all of them are in :meth:`Comparison.to_json`)
MAX_LISTED = 5


@dataclass(frozen=True)
class Run:
    """The parts of an output folder that :func:`compare_runs` looks at.

    ``mask`` and ``classes`` are (h, w) uint8; ``features`` the GeoJSON features of
    ``detections.geojson``; ``gsd_m`` the grid's pixel size; ``georeferenced`` whether
    geometry and centroids are longitude/latitude (else pixel coordinates).
    """

    path: Path
    mask: np.ndarray
    classes: np.ndarray
    features: list[dict[str, Any]]
    grid: dict[str, Any]
    gsd_m: float
    georeferenced: bool


@dataclass(frozen=True)
class Tolerance:
    """How much two runs may differ and still pass.

    ``max_pixels_changed`` is a fraction of the grid's pixels (0..1); ``max_detections_changed``
    the number of detections allowed in each of added / removed / retyped / moved;
    ``max_moved_m`` how far a matched detection's centroid may move before it counts as moved;
    ``min_iou`` the footprint overlap at which two detections are the same one.
    """

    max_pixels_changed: float = 0.0
    max_detections_changed: int = 0
    max_moved_m: float = 1.0
    min_iou: float = 0.1


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` found; ``checks`` holds one pass/fail :class:`Check` per measure."""

    n_pixels: int
    mask_pixels_changed: int
    class_pixels_changed: int
    n_a: int
    n_b: int
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    retyped: list[dict[str, Any]]
    moved: list[dict[str, Any]]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "pixels": {"n": self.n_pixels,
                       "mask_changed": self.mask_pixels_changed,
                       "mask_changed_fraction": _fraction(self.mask_pixels_changed, self.n_pixels),
                       "class_changed": self.class_pixels_changed,
                       "class_changed_fraction": _fraction(self.class_pixels_changed, self.n_pixels)},
            "detections": {"n_a": self.n_a, "n_b": self.n_b, "added": self.added, "removed": self.removed,
                           "retyped": self.retyped, "moved": self.moved},
            "checks": [{"name": c.name, "passed": c.passed, "message": c.message} for c in self.checks],
        }


def _fraction(n: int, total: int) -> float:
    return round(n / total, 8) if total else 0.0


def load_run(path: str | Path) -> Run:
    """Read the compared parts of an output folder of ``changedet detect``."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; give an output folder of changedet detect")
    missing = [n for n in RUN_FILES if not (path / n).is_file()]
    if missing:
        raise InputError(f"{path}: not a changedet run (no {', '.join(missing)}); give an output folder of "
                         "changedet detect")
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        features = json.loads((path / "detections.geojson").read_text(encoding="utf-8"))["features"]
        grid = summary["grid"]
        gsd_m = float(grid.get("gsd_m") or abs(grid["transform"][0]))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: summary.json or detections.geojson is not a changedet record ({exc}); "
                         "run changedet detect again") from None
    fix = "give a folder written by changedet detect"
    mask, classes = read_band(path / "change_mask.tif", fix), read_band(path / "change_class.tif", fix)
    if mask.shape != classes.shape:
        raise InputError(f"{path}: change_mask.tif and change_class.tif differ in size; run changedet detect again")
    georef = bool(grid.get("georeferenced", grid.get("crs") is not None))
    return Run(path, mask, classes, features, grid, gsd_m, georef)


def centroid_distance_m(a: list[float], b: list[float], georeferenced: bool, gsd_m: float) -> float:
    """Distance between two centroids: great-circle metres for [lon, lat], else pixels × ``gsd_m``."""
    if not georeferenced:
        return math.hypot(a[0] - b[0], a[1] - b[1]) * gsd_m
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def match_detections(a: list[dict[str, Any]], b: list[dict[str, Any]], min_iou: float) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, iou)`` of features of ``a`` and ``b`` that are the same detection.

    Greedy on footprint IoU, highest first (ties by index): each feature is matched at most once,
    and only at ``iou >= min_iou``. IoU is computed in the features' own coordinates; over a
    site's extent longitude/latitude is close enough to affine for a ratio of areas.
    """
    from shapely.geometry import shape
    from shapely.strtree import STRtree

    ga = [shape(f["geometry"]) for f in a]
    gb = [shape(f["geometry"]) for f in b]
    if not ga or not gb:
        return []
    tree = STRtree(gb)
    candidates = []
    for i, g in enumerate(ga):
        for j in tree.query(g):
            j = int(j)
            union = g.union(gb[j]).area
            iou = g.intersection(gb[j]).area / union if union > 0 else 0.0
            if iou >= min_iou:
                candidates.append((-iou, i, j))
    candidates.sort()
    used_a, used_b, pairs = set(), set(), []
    for neg, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j, -neg))
    return sorted(pairs)


_BBOX_KEYS = ("bbox_col0", "bbox_row0", "bbox_col1", "bbox_row1")


def _brief(f: dict[str, Any]) -> dict[str, Any]:
    """A feature's identity and place; scalar properties (schema 1.2 on) or the lists of older runs."""
    p = f.get("properties", {})
    centroid = p.get("centroid")
    if p.get("centroid_x") is not None and p.get("centroid_y") is not None:
        centroid = [p["centroid_x"], p["centroid_y"]]
    bbox = p.get("bbox_px")
    if all(p.get(k) is not None for k in _BBOX_KEYS):
        bbox = [p[k] for k in _BBOX_KEYS]
    return {"id": p.get("id", f.get("id")), "class": p.get("class"), "event": p.get("event"),
            "area_m2": p.get("area_m2"), "centroid": centroid, "bbox_px": bbox}


def describe(d: dict[str, Any]) -> str:
    """A detection in a few words: ``#3 hut appeared, 24 m² at px [10, 20, 14, 25]``."""
    area = "" if d.get("area_m2") is None else f", {d['area_m2']:.0f} m²"
    where = "" if d.get("bbox_px") is None else f" at px {d['bbox_px']}"
    return f"#{d['id']} {d['class']} {d['event']}{area}{where}"


def compare_runs(a: Run, b: Run, tol: Tolerance = Tolerance()) -> Comparison:
    """Compare run ``b`` with run ``a`` (the reference) and check the differences against ``tol``."""
    if a.mask.shape != b.mask.shape or a.grid.get("transform") != b.grid.get("transform") \
            or a.grid.get("crs") != b.grid.get("crs"):
        raise InputError(f"{b.path}: its grid differs from {a.path}'s ({b.mask.shape[1]}x{b.mask.shape[0]} vs "
                         f"{a.mask.shape[1]}x{a.mask.shape[0]}, or another transform/CRS); compare runs of the "
                         "same site")
    n_pixels = int(a.mask.size)
    mask_changed = int(np.count_nonzero(a.mask != b.mask))
    class_changed = int(np.count_nonzero(a.classes != b.classes))
    pairs = match_detections(a.features, b.features, tol.min_iou)
    matched_a, matched_b = {i for i, _, _ in pairs}, {j for _, j, _ in pairs}
    removed = [_brief(f) for i, f in enumerate(a.features) if i not in matched_a]
    added = [_brief(f) for j, f in enumerate(b.features) if j not in matched_b]
    retyped, moved = [], []
    for i, j, iou in pairs:
        da, db = _brief(a.features[i]), _brief(b.features[j])
        if da["class"] != db["class"]:
            retyped.append({"a": da, "b": db, "iou": round(iou, 4)})
        if da["centroid"] is not None and db["centroid"] is not None:
            dist = centroid_distance_m(da["centroid"], db["centroid"], a.georeferenced, a.gsd_m)
            if dist > tol.max_moved_m:
                moved.append({"a": da, "b": db, "iou": round(iou, 4), "moved_m": round(dist, 3)})
    checks = _checks(n_pixels, mask_changed, class_changed, added, removed, retyped, moved, tol)
    return Comparison(n_pixels, mask_changed, class_changed, len(a.features), len(b.features),
                      added, removed, retyped, moved, checks)


def _checks(n_pixels: int, mask_changed: int, class_changed: int, added: list[dict[str, Any]],
            removed: list[dict[str, Any]], retyped: list[dict[str, Any]], moved: list[dict[str, Any]],
            tol: Tolerance) -> list[Check]:
    checks = []
    for name, n in (("change_mask pixels", mask_changed), ("change_class pixels", class_changed)):
        frac = n / n_pixels if n_pixels else 0.0
        ok = frac <= tol.max_pixels_changed
        checks.append(Check(name, ok, f"{name}: {n} of {n_pixels} changed state (fraction {frac:.4g}, "
                                      f"allowed {tol.max_pixels_changed:.4g})"))
    for name, items, what in (("detections added", added, describe), ("detections removed", removed, describe),
                              ("detections retyped", retyped,
                               lambda r: f"{describe(r['a'])} -> {r['b']['class']}"),
                              ("detections moved", moved,
                               lambda r: f"{describe(r['a'])} moved {r['moved_m']:.2f} m")):
        ok = len(items) <= tol.max_detections_changed
        listed = "; ".join(what(x) for x in items[:MAX_LISTED])
        if len(items) > MAX_LISTED:
            listed += f"; and {len(items) - MAX_LISTED} more (see --json)"
        checks.append(Check(name, ok, f"{name}: {len(items)} (allowed {tol.max_detections_changed})"
                                      + (f": {listed}" if listed else "")))
    return checks


def format_table(cmp: Comparison, a: str, b: str) -> Any:
    """A rich table of the checks of a comparison, for people."""
    from rich.table import Table

    table = Table(title=f"changedet compare: {a} -> {b}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("details", overflow="fold")
    for c in cmp.checks:
        table.add_row(c.name, "[green]ok[/]" if c.passed else "[red]FAIL[/]", c.message.split(": ", 1)[1])
    return table


def clockless(path: Path) -> object:
    """A file of a run or a batch without the clock, for checking that two runs of the same inputs
    agree: the bytes of rasters and pictures; JSON without ``created``, ``timings_s``, a batch's
    ``seconds`` and ``out_dir``, the run-time ``datetime`` of undated inputs' ``item.json`` (and its
    entry in ``files``) and a collection's temporal extent; ``index.html`` without the batch's time."""
    path = Path(path)
    if path.name == "index.html":
        created = json.loads((path.parent / "batch_summary.json").read_text(encoding="utf-8"))["created"]
        return path.read_text(encoding="utf-8").replace(created, "")
    if path.suffix not in (".json", ".geojson"):
        return path.read_bytes()
    data = json.loads(path.read_text(encoding="utf-8"))
    if path.name == "summary.json":
        data.pop("created", None), data.pop("timings_s", None)
        data.get("files", {}).pop("item.json", None)
    if path.name == "item.json" and data["properties"].get("changedet:datetime_source") == "run":
        data["properties"].pop("datetime")
    if path.name == "collection.json":
        data["extent"]["temporal"].pop("interval")
    if path.name == "batch_summary.json":
        data.pop("created", None)
        for site in data["sites"]:
            site.pop("seconds", None), site.pop("out_dir", None)
    return data
