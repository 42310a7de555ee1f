"""The output contract of a series: presence.csv, tracks.geojson and series.json (built as data)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
from affine import Affine

from .. import __version__, vector
from .engine import CLASSES, Analysis, _largest, counts_per_date
from .stack import Stack

SCHEMA_VERSION = "1.0"
PRESENCE_COLUMNS = ("date", "observable_fraction", *CLASSES)


def presence_csv(dates: list[str], analysis: Analysis) -> str:
    """One row per date: ``date,observable_fraction,vessel,hut,trench,other,observable,n_objects``.

    Counts are empty where the date is not observable enough (unknown, not zero).
    """
    rows = [",".join((*PRESENCE_COLUMNS, "observable", "n_objects"))]
    for t, counts in enumerate(counts_per_date(analysis, len(dates))):
        frac = f"{analysis.observable_fraction[t]:.4f}"
        if counts is None:
            rows.append(",".join([dates[t], frac, "", "", "", "", "false", ""]))
        else:
            rows.append(",".join([dates[t], frac, *(str(counts[k]) for k in CLASSES), "true",
                                  str(sum(counts.values()))]))
    return "\n".join(rows) + "\n"


def track_records(dates: list[str], analysis: Analysis) -> list[dict[str, Any]]:
    """Per track: id, class, first and last seen, the dates present and unobserved, events."""
    out = []
    for k, tr in enumerate(analysis.tracks):
        out.append({
            "track_id": k + 1, "class": tr.cls, "confidence": round(float(tr.confidence), 4),
            "first_seen": dates[tr.first], "last_seen": dates[tr.last],
            "n_dates_present": len(tr.present), "dates_present": [dates[t] for t in tr.present],
            "dates_unobserved": [dates[t] for t in tr.unobserved],
            "events": [{"event": e, "date": dates[t]} for e, t in tr.events],
            **tr.extra,
        })
    return out


def track_features(records: list[dict[str, Any]], analysis: Analysis, stack: Stack) -> dict[str, Any]:
    """tracks.geojson: one feature per track, its footprint in EPSG:4326 (pixels when not georeferenced)."""
    feats = []
    for rec, (r0, c0, foot) in zip(records, analysis.footprints):
        obj = _largest(foot)
        geom = vector.region_polygon(obj, stack.transform @ Affine.translation(c0, r0))
        geom = vector.to_wgs84(geom, stack.crs) if stack.georeferenced else vector.pixel_polygon(geom)
        props = {k: rec[k] for k in ("track_id", "class", "first_seen", "last_seen", "n_dates_present",
                                     "dates_present", "events", "dates_unobserved", "confidence")}
        feats.append({"type": "Feature", "id": rec["track_id"], "geometry": geom, "properties": props})
    return vector.feature_collection(feats, stack.georeferenced)


def series_record(site: str, stack: Stack, ref: int, dates: list[str], analysis: Analysis,
                  tracks: list[dict[str, Any]], config: dict[str, Any], warns: list[str],
                  timings: dict[str, float]) -> dict[str, Any]:
    """series.json (validates against ``changedet/schema/series.schema.json``)."""
    counts = counts_per_date(analysis, len(dates))
    per_date = []
    for t, rec in enumerate(stack.records):
        per_date.append({"date": dates[t], "observable_fraction": analysis.observable_fraction[t],
                         "observable": bool(analysis.date_ok[t]), "counts": counts[t],
                         "registration": rec.to_json()})
    ok = [c for c in counts if c is not None]
    return {
        "schema_version": SCHEMA_VERSION,
        "changedet_version": __version__,
        "site": site,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{**r.image.to_json(), "sha256": r.sha256} for r in stack.records],
        "reference": {"date": dates[ref], "path": str(stack.records[ref].image.path)},
        "grid": {"crs": stack.crs.to_string() if stack.georeferenced and stack.crs else None,
                 "transform": [round(v, 10) for v in list(stack.transform)[:6]],
                 "width": stack.shape[1], "height": stack.shape[0], "gsd_m": round(stack.gsd_m, 6),
                 "georeferenced": stack.georeferenced},
        "config": config,
        "dates": per_date,
        "tracks": tracks,
        "totals": {
            "n_dates": len(dates),
            "n_observable_dates": int(np.count_nonzero(analysis.date_ok)),
            "n_tracks": len(tracks),
            **{f"dates_with_{k}": sum(1 for c in ok if c[k] > 0) for k in CLASSES},
            **{f"{k}_tracks": sum(1 for tr in tracks if tr["class"] == k) for k in CLASSES},
        },
        "processing": {"window_px": analysis.window_px, "n_candidates": analysis.n_candidates},
        "warnings": warns,
        "timings_s": timings,
    }
