"""The trained head: a small per-pixel network on the Siamese features, and its model file.

The head is a multilayer perceptron (``N_FEATURES`` -> 64 -> 32 -> 1, ReLU, sigmoid) applied at
every pixel of the stride-4 grid; the stride-16 features it sees carry about 170 px of context.
It is trained with numpy (Adam on a class-weighted cross-entropy), so training needs neither torch
nor a GPU and is deterministic for a given seed.

Model file: a ``.npz`` of plain arrays (loaded with ``allow_pickle=False``, so it can hold no
code) with the weights, the feature standardisation, the decision threshold and the model card
as a JSON string. The card is also written beside it as ``<name>.card.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputError
from ..io import as_write_error, write_error, write_fault
from .features import N_FEATURES, PairTaps

FORMAT = "changedet-head/1"
LAYERS = (64, 32)


@dataclass(frozen=True)
class Head:
    """Weights of the head, its threshold and card."""

    mean: np.ndarray
    scale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    threshold: float
    card: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n, N_FEATURES) -> (n,) logits, in float64.

        Double precision keeps a pixel's result independent of how many rows share the matrix
        product (BLAS kernels differ by block size in their last bits): windowed equals whole.
        """
        h = (x.astype(np.float64) - self.mean) * self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.astype(np.float64) + b
            if i < len(self.weights) - 1:
                np.maximum(h, 0, out=h)
        return h[:, 0]

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """(N_FEATURES, h, w) features -> (h, w) float32 probability of relevant change."""
        c, h, w = feats.shape
        return self.predict_rows(lambda r0, r1: feats[:, r0:r1], h, w)

    def predict_rows(self, rows: Callable[[int, int], np.ndarray], h: int, w: int) -> np.ndarray:
        """:meth:`predict` on features made a few rows at a time: ``rows(r0, r1)`` gives rows
        ``r0:r1`` of the (N_FEATURES, h, w) features.

        Pixels go through the network in the same blocks of 16384 (row-major), laid out in memory
        the same way, whichever way the features come, so the numbers are the same.
        """
        out = np.empty(h * w, np.float64)
        step = 16384
        for i in range(0, h * w, step):  # bounded memory whatever the window
            j = min(i + step, h * w)
            r0, r1 = i // w, -(-j // w)
            band = rows(r0, r1)
            x = band.reshape(band.shape[0], (r1 - r0) * w).T[i - r0 * w:j - r0 * w]
            out[i:j] = _sigmoid64(self.logits(x))
        return out.reshape(h, w)

    def predict_taps(self, taps: PairTaps, cells: tuple[int, int, int, int] | None = None,
                     band_px: int = 16384) -> np.ndarray:
        """:meth:`predict` on the encoder's taps of a read box, float64 on the head's grid.

        ``cells`` (row0, col0, row1, col1 of the read box's grid) limits it to a block of the grid
        (default: all the taps hold), e.g. a window without its halo; taps made around it
        (:meth:`PairTaps.around`) give the same numbers and spare the rest of the read box. The first layer runs on each tap at its own stride
        (:meth:`PairTaps.first_layer`), the rest per cell, in bands of whole rows of about
        ``band_px`` cells (bounded memory). The numbers equal :meth:`predict` on the features, and
        those of any other block, up to float64 rounding (BLAS sums one row in another order than
        many): about 1e-16, far below the 1/254 of a quantised level.
        """
        mean, scale = self.mean.astype(np.float64), self.scale.astype(np.float64)
        w0 = self.weights[0].astype(np.float64)
        first = taps.first_layer(scale[:, None] * w0, self.biases[0].astype(np.float64) - (mean * scale) @ w0)
        o0, o1 = taps.origin
        g0, k0, g1, k1 = cells or (o0, o1, o0 + taps.shape[0], o1 + taps.shape[1])
        g0, k0, g1, k1 = g0 - o0, k0 - o1, g1 - o0, k1 - o1
        w = k1 - k0
        out = np.empty((g1 - g0, w), np.float64)
        step = max(1, band_px // max(1, w))
        for r0 in range(g0, g1, step):
            r1 = min(g1, r0 + step)
            x = first.rows(r0, r1, k0, k1)
            for wi, bi in zip(self.weights[1:], self.biases[1:]):
                np.maximum(x, 0, out=x)
                x = x @ wi.astype(np.float64) + bi
            out[r0 - g0:r1 - g0] = _sigmoid64(x[:, 0]).reshape(r1 - r0, w)
        return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))).astype(np.float32)


def _sigmoid64(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


# --------------------------------------------------------------------------- model files


def save(head: Head, path: Path) -> str:
    """Write the model file and ``<stem>.card.json`` beside it; returns the model file's SHA-256."""
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT), "mean": head.mean, "scale": head.scale,
                                     "threshold": np.array(head.threshold, np.float64),
                                     "card": np.array(json.dumps(head.card, sort_keys=True))}
    for i, (w, b) in enumerate(zip(head.weights, head.biases)):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    path = Path(path)
    check_model_path(path)
    card_path = card_path_of(path)
    tmp, card_tmp = path.with_name(f".{path.name}.tmp"), card_path.with_name(f".{card_path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        card_tmp.write_text(json.dumps({**head.card, "model_file": path.name, "model_sha256": digest},
                                       indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)  # both complete before either is moved into place
        card_tmp.replace(card_path)
    except Exception as exc:
        for t in (tmp, card_tmp):
            t.unlink(missing_ok=True)
        err = as_write_error(exc, path.parent, path.parent)
        if err is None:
            raise
        raise err from exc
    return digest


def check_model_path(path: Path) -> None:
    """Raise :class:`OutputError` when a model file cannot be written at ``path`` (before any training)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a model file name ending in .npz")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"{folder}: is a file, not a folder; choose another --out")
            code = write_fault(folder)
            if code is not None:
                raise write_error(folder, code)
            break


def card_path_of(path: Path) -> Path:
    """``model.npz`` -> ``model.card.json``."""
    return Path(path).with_name(Path(path).stem + ".card.json")


def load(path: str | Path) -> Head:
    """Read a model file written by :func:`save`; a bad file is an :class:`InputError` naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the model file ({exc.strerror}); check the path") from None
    try:
        import io

        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != FORMAT:
                raise ValueError("not a changedet model")
            n = sum(1 for k in z.files if k.startswith("w"))
            weights = tuple(z[f"w{i}"].astype(np.float32) for i in range(n))
            biases = tuple(z[f"b{i}"].astype(np.float32) for i in range(n))
            mean, scale = z["mean"].astype(np.float32), z["scale"].astype(np.float32)
            threshold, card = float(z["threshold"]), json.loads(str(z["card"]))
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a changedet model file ({exc}); train one with 'changedet train'") from None
    if mean.shape != (N_FEATURES,) or weights[0].shape[0] != N_FEATURES or weights[-1].shape[1] != 1:
        raise InputError(f"{path}: the model expects {weights[0].shape[0]} features, this changedet makes "
                         f"{N_FEATURES}; retrain it with this version")
    return Head(mean, scale, weights, biases, threshold, card, hashlib.sha256(raw).hexdigest())


# --------------------------------------------------------------------------- training


ProgressFn = Callable[[str, int, int], None]


def fit(x: np.ndarray, y: np.ndarray, weight: np.ndarray, *, epochs: int = 30, seed: int = 0,
        lr: float = 2e-3, l2: float = 1e-4, batch: int = 2048, progress: ProgressFn | None = None) -> Head:
    """Train the head on samples ``x`` (n, N_FEATURES), soft targets ``y`` in 0..1, sample weights.

    Adam on the weighted binary cross-entropy, L2 on the weights, a fixed seed: the same samples
    give the same head. The threshold is left at 0.5; :func:`best_threshold` sets it.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    mean = x.mean(axis=0)
    scale = (1.0 / np.maximum(x.std(axis=0), 1e-6)).astype(np.float32)
    xs = (x - mean) * scale
    sizes = (x.shape[1], *LAYERS, 1)
    ws = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
    bs = [np.zeros(b, np.float32) for b in sizes[1:]]
    params = ws + bs
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    wn = (weight / weight.mean()).astype(np.float32)
    n = len(xs)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        rate = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))  # cosine decay
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            grads = _grads(ws, bs, xs[idx], y[idx], wn[idx], l2)
            step += 1
            for p, g, mm, vv in zip(params, grads, m, v):
                mm *= 0.9
                mm += 0.1 * g
                vv *= 0.999
                vv += 0.001 * g * g
                p -= rate * (mm / (1 - 0.9 ** step)) / (np.sqrt(vv / (1 - 0.999 ** step)) + 1e-8)
        if progress:
            progress("train", epoch + 1, epochs)
    return Head(mean.astype(np.float32), scale, tuple(ws), tuple(bs), 0.5)


def _grads(ws: list[np.ndarray], bs: list[np.ndarray], x: np.ndarray, y: np.ndarray, w: np.ndarray,
           l2: float) -> list[np.ndarray]:
    acts = [x]
    h = x
    for i, (wi, bi) in enumerate(zip(ws, bs)):
        h = h @ wi + bi
        if i < len(ws) - 1:
            h = np.maximum(h, 0)
        acts.append(h)
    p = _sigmoid(acts[-1][:, 0])
    d = ((p - y) * w / len(x)).astype(np.float32)[:, None]
    gw, gb = [None] * len(ws), [None] * len(ws)
    for i in range(len(ws) - 1, -1, -1):
        gw[i] = acts[i].T @ d + l2 * ws[i]
        gb[i] = d.sum(axis=0)
        if i > 0:
            d = (d @ ws[i].T) * (acts[i] > 0)
    return [g for g in gw] + [g for g in gb]  # type: ignore[misc]


def best_threshold(prob: np.ndarray, truth: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    """The probability threshold with the highest (weighted) F1, and that F1."""
    weight = np.ones_like(prob) if weight is None else weight
    order = np.argsort(-prob, kind="stable")
    tp = np.cumsum((truth[order] * weight[order]).astype(np.float64))
    fp = np.cumsum(((1 - truth[order]) * weight[order]).astype(np.float64))
    pos = tp[-1]
    if pos <= 0:
        return 0.5, 0.0
    f1 = 2 * tp / (tp + fp + pos)
    k = int(np.argmax(f1))
    return float(np.clip(prob[order][k], 0.05, 0.95)), float(f1[k])
