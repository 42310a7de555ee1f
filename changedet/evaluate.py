"""Score an output folder against ground truth.

Pixel scores compare ``change_mask.tif`` with the truth (nodata excluded).
Object scores match connected predicted regions (as typed in ``summary.json``)
with truth instances: a truth object is *detected* when a predicted pixel
overlaps it, *typed correctly* when the predicted object overlapping it most
has its class, and a predicted object is a true positive when it overlaps any
truth object.

Truth folders from ``synth --weather`` mark cloud, cloud shadow and thick haze
255 in ``truth_class.tif``: those pixels are left out of the pixel scores like
the output's nodata, and truth objects recorded ``"observable": false`` (wholly
under them) are left out of object recall.

Conventions for empty sets: precision is 1 when nothing was predicted, recall
is 1 when there is nothing to find; F1 and IoU are then 1 when both are empty.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio

from .errors import InputError
from .junit import Check

CLASSES = ("trench", "hut", "vessel", "other")
CODE_TO_CLASS = {1: "other", 2: "trench", 3: "hut", 4: "vessel"}


@dataclass(frozen=True)
class PixelScores:
    """Confusion counts and scores of a binary change map."""

    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float
    iou: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("precision", "recall", "f1", "iou"):
            d[k] = round(d[k], 4)
        return d


@dataclass(frozen=True)
class ObjectScores:
    """Per-class recall and type accuracy, overall object precision, departed vessels found.

    ``size_errors`` holds the median relative length and width error of correctly typed
    objects per class; ``size_pairs`` the underlying truth/predicted sizes, for pooling
    over many scenes (not written by :meth:`to_json`).
    """

    per_class: dict[str, dict[str, Any]]
    n_pred: int
    precision: float
    departed_truth: int
    departed_recognized: int
    size_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    size_pairs: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"per_class": self.per_class, "n_pred": self.n_pred, "precision": round(self.precision, 4),
                "departed_truth": self.departed_truth, "departed_recognized": self.departed_recognized,
                "size_errors": self.size_errors}


@dataclass(frozen=True)
class Evaluation:
    """Everything ``changedet eval`` reports."""

    pixel: PixelScores
    objects: ObjectScores | None
    shift_error_px: float | None

    def to_json(self) -> dict[str, Any]:
        return {"pixel": self.pixel.to_json(), "objects": self.objects.to_json() if self.objects else None,
                "shift_error_px": None if self.shift_error_px is None else round(self.shift_error_px, 4)}


def pixel_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> PixelScores:
    """Precision, recall, F1 and IoU of boolean maps over ``valid`` pixels."""
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth shapes differ: {pred.shape} vs {truth.shape}")
    if valid is None:
        valid = np.ones(pred.shape, bool)
    p, t = pred.astype(bool) & valid, truth.astype(bool) & valid
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(np.count_nonzero(valid)) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return PixelScores(tp, fp, fn, tn, precision, recall, f1, iou)


def object_scores(pred_labels: np.ndarray, pred_objects: list[dict[str, Any]], truth_instances: np.ndarray,
                  truth_objects: list[dict[str, Any]], min_overlap_px: int = 1) -> ObjectScores:
    """Object recall, type accuracy and precision.

    Parameters
    ----------
    pred_labels : (h, w) int, label ``k + 1`` is ``pred_objects[k]``, 0 none.
    pred_objects : dicts with at least ``class`` and ``event``.
    truth_instances : (h, w) int, truth object ids, 0 none.
    truth_objects : dicts with ``id``, ``class``, ``event`` and optionally ``length_m``/``width_m``.
    """
    per_class = {c: {"n_truth": 0, "detected": 0, "typed_correctly": 0} for c in CLASSES}
    rel_err: dict[str, list[tuple[float, float]]] = {c: [] for c in CLASSES}
    pairs: dict[str, list[dict[str, float]]] = {c: [] for c in CLASSES}
    departed_truth = departed_ok = 0
    hit_pred = np.zeros(len(pred_objects) + 1, bool)
    for obj in truth_objects:
        cls = obj["class"]
        entry = per_class.setdefault(cls, {"n_truth": 0, "detected": 0, "typed_correctly": 0})
        entry["n_truth"] += 1
        inside = pred_labels[truth_instances == obj["id"]]
        labs, counts = np.unique(inside[inside > 0], return_counts=True)
        if obj.get("event") == "departed":
            departed_truth += 1
        if counts.sum() < min_overlap_px:
            continue
        entry["detected"] += 1
        best = pred_objects[int(labs[np.argmax(counts)]) - 1]
        if best["class"] == cls:
            entry["typed_correctly"] += 1
            if obj.get("length_m") and best.get("length_m") is not None:
                pairs[cls].append({"id": obj["id"], "length_m": obj["length_m"], "width_m": obj["width_m"],
                                   "pred_length_m": best["length_m"], "pred_width_m": best["width_m"]})
                rel_err[cls].append((abs(best["length_m"] - obj["length_m"]) / obj["length_m"],
                                     abs(best["width_m"] - obj["width_m"]) / obj["width_m"]))
        if obj.get("event") == "departed" and best.get("event") == "departed":
            departed_ok += 1
    overlapped = np.unique(pred_labels[(truth_instances > 0) & (pred_labels > 0)])
    hit_pred[overlapped] = True
    n_pred = len(pred_objects)
    for entry in per_class.values():
        n, d = entry["n_truth"], entry["detected"]
        entry["recall"] = round(d / n, 4) if n else None
        entry["type_accuracy"] = round(entry["typed_correctly"] / d, 4) if d else None
    sizes = {c: {"median_rel_error_length": round(float(np.median([e[0] for e in v])), 4),
                 "median_rel_error_width": round(float(np.median([e[1] for e in v])), 4), "n": len(v)}
             for c, v in rel_err.items() if v}
    precision = float(hit_pred[1:].sum() / n_pred) if n_pred else 1.0
    return ObjectScores(per_class, n_pred, precision, departed_truth, departed_ok, sizes,
                        {c: v for c, v in pairs.items() if v})


def read_band(path: Path, fix: str = "give a label image or a synth truth folder") -> np.ndarray:
    """Band 1 of a raster; one that GDAL cannot read is an :class:`InputError` naming it and ``fix``."""
    try:
        with rasterio.open(path) as ds:
            return ds.read(1)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{path}: not a raster GDAL can read; {fix}") from None


def load_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]] | None, list[float] | None]:
    """Read a truth folder from ``synth`` or a plain label image.

    Returns
    -------
    (truth bool (h, w), instances or None, objects or None, shift [dx, dy] or None)
    """
    path = Path(path)
    if path.is_dir():
        cls_path = path / "truth_class.tif"
        if not cls_path.is_file():
            raise InputError(f"{path}: no truth_class.tif; give a folder written by changedet synth or a label image")
        cls = read_band(cls_path)
        truth = (cls > 0) & (cls != 255)
        inst_path, meta_path = path / "truth_instances.tif", path / "truth.json"
        instances = read_band(inst_path).astype(np.int64) if inst_path.is_file() else None
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return truth, instances, meta.get("objects"), meta.get("shift_px")
    if not path.is_file():
        raise InputError(f"{path}: no such truth file or folder; check the path")
    label = read_band(path)
    return (label > 127) if label.max() > 1 else (label > 0), None, None, None


def truth_ignored(path: str | Path) -> np.ndarray | None:
    """Pixels a synth truth folder marks not observable (255 in ``truth_class.tif``), or None.

    A plain label image has none: there 255 means change.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    ignored = read_band(path / "truth_class.tif") == 255
    return ignored if ignored.any() else None


def _predicted_objects(mask: np.ndarray, summary: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Label the mask's regions by detection: each region is attached to the summary detection whose
    bounding box (or, for a line merged from fragments, one of whose ``parts_bbox_px``) is its own."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8), connectivity=8,
                                                           ltype=cv2.CV_32S)
    dets = summary.get("detections", [])
    by_box: dict[tuple[int, ...], int] = {}
    for k, d in enumerate(dets):
        for box in d.get("parts_bbox_px") or [d["bbox_px"]]:
            by_box[tuple(box)] = k
    objs: list[dict[str, Any]] = list(dets)
    lut = np.zeros(n, np.int32)
    for lab in range(1, n):
        x, y, w, h, _ = (int(v) for v in stats[lab])
        k = by_box.get((x, y, x + w - 1, y + h - 1))
        if k is None:  # a region no detection describes (beyond max_objects)
            objs.append({"class": "other", "event": "changed"})
            k = len(objs) - 1
        lut[lab] = k + 1
    return lut[labels], objs


def evaluate(out_dir: str | Path, truth_path: str | Path) -> Evaluation:
    """Score ``changedet detect``'s output folder against a truth folder or label image."""
    out_dir = Path(out_dir)
    mask_path, summary_path = out_dir / "change_mask.tif", out_dir / "summary.json"
    for p in (mask_path, summary_path):
        if not p.is_file():
            raise InputError(f"{p}: missing; run changedet detect into {out_dir} first")
    mask = read_band(mask_path)
    summary = json.loads(summary_path.read_text())
    truth, instances, truth_objects, truth_shift = load_truth(truth_path)
    if truth.shape != mask.shape:
        raise InputError(f"{truth_path}: truth is {truth.shape[1]}x{truth.shape[0]} but {mask_path} is "
                         f"{mask.shape[1]}x{mask.shape[0]}; give the truth of the same grid")
    valid = mask != 255
    ignored = truth_ignored(truth_path)
    if ignored is not None:
        valid &= ~ignored
    pix = pixel_scores(mask == 1, truth, valid)
    objs = None
    if instances is not None and truth_objects is not None:
        labels, preds = _predicted_objects(mask, summary)
        objs = object_scores(labels, preds, instances, [o for o in truth_objects if o.get("observable", True)])
    shift_err = None
    if truth_shift is not None and "registration" in summary:
        dx, dy = summary["registration"]["shift_px"]
        shift_err = float(np.hypot(dx - truth_shift[0], dy - truth_shift[1]))
    return Evaluation(pix, objs, shift_err)


def format_table(ev: Evaluation) -> str:
    """A plain-text report for people."""
    p = ev.pixel
    lines = [f"pixels   precision {p.precision:.3f}  recall {p.recall:.3f}  F1 {p.f1:.3f}  IoU {p.iou:.3f}  "
             f"(tp {p.tp}, fp {p.fp}, fn {p.fn})"]
    if ev.objects:
        lines.append(f"{'class':<8} {'truth':>5} {'found':>5} {'recall':>7} {'typed ok':>9} {'type acc':>9}")
        for cls, e in ev.objects.per_class.items():
            if not e["n_truth"]:
                continue
            acc = "-" if e["type_accuracy"] is None else f"{e['type_accuracy']:.3f}"
            lines.append(f"{cls:<8} {e['n_truth']:>5} {e['detected']:>5} {e['recall']:>7.3f} "
                         f"{e['typed_correctly']:>9} {acc:>9}")
        lines.append(f"objects  predicted {ev.objects.n_pred}, precision {ev.objects.precision:.3f}; departed "
                     f"recognized {ev.objects.departed_recognized}/{ev.objects.departed_truth}")
    if ev.shift_error_px is not None:
        lines.append(f"registration error {ev.shift_error_px:.3f} px")
    return "\n".join(lines)


#: metrics ``eval --fail-under`` can bound, and what each one is
METRICS = {
    "precision": "pixel precision",
    "recall": "pixel recall",
    "f1": "pixel F1",
    "iou": "pixel IoU",
    "object_precision": "share of predicted objects that overlap a truth object",
    "object_recall": "share of truth objects detected (all classes)",
    "type_accuracy": "share of detected truth objects typed correctly",
}


def metrics(ev: Evaluation) -> dict[str, float]:
    """The scalar scores of ``ev`` by name (:data:`METRICS`); object scores only with a synth truth folder."""
    p = ev.pixel
    out = {"precision": p.precision, "recall": p.recall, "f1": p.f1, "iou": p.iou}
    if ev.objects is not None:
        n = sum(e["n_truth"] for e in ev.objects.per_class.values())
        d = sum(e["detected"] for e in ev.objects.per_class.values())
        t = sum(e["typed_correctly"] for e in ev.objects.per_class.values())
        out["object_precision"] = ev.objects.precision
        out["object_recall"] = d / n if n else 1.0
        out["type_accuracy"] = t / d if d else 1.0
    return out


def parse_bounds(text: str) -> dict[str, float]:
    """``"f1=0.8,recall=0.9"`` as ``{"f1": 0.8, "recall": 0.9}``.

    Raises
    ------
    ValueError
        An unknown metric (the message lists the valid names) or a bound that is not a number in 0..1.
    """
    bounds: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        try:
            bound = float(value) if sep else math.nan
        except ValueError:
            bound = math.nan
        if not 0.0 <= bound <= 1.0:  # nan fails this too
            raise ValueError(f"{part!r}: give NAME=NUMBER with a number from 0 to 1, e.g. f1=0.8")
        bounds[name] = bound
    if not bounds:
        raise ValueError("no bounds given; write e.g. f1=0.8,recall=0.9")
    return bounds


def check_bounds(ev: Evaluation, bounds: dict[str, float]) -> list[Check]:
    """One :class:`~changedet.junit.Check` per bound: passed when the metric is at least the bound.

    Raises
    ------
    ValueError
        A bound names an object metric but the truth had no objects (a plain label image).
    """
    have = metrics(ev)
    missing = [m for m in bounds if m not in have]
    if missing:
        raise ValueError(f"{', '.join(missing)} need object truth; give a truth folder written by changedet synth")
    checks = []
    for name, bound in bounds.items():
        value = have[name]
        ok = value >= bound
        checks.append(Check(name, ok, f"{name} {value:.4f} {'>=' if ok else '<'} {bound:g}"))
    return checks
