"""Co-register a pair: the registration stage's functions driven by chip-wise reads.

Registration never reads whole full-resolution bands: a decimated read for the
coarse search, then chips (a grid of ``grid`` x ``grid``, and for the local field
a denser grid of smaller chips), each read through the current model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from . import observability, parallel
from . import registration as R
from .arrays import band_roles, luminance
from .config import ObserveConfig, RegisterConfig
from .io import Box, PairSource
from .learned import features as lfeatures

ProgressFn = Callable[[str, int, int], None]
#: a decimated read of both dates: before, its validity, after, its validity, the decimation factor
Decimated = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


def rgb_bands(pair: PairSource) -> tuple[int, int, int]:
    """Red, green and blue among the bands the run reads (:func:`changedet.learned.features.rgb_of`)."""
    ds, idx = pair.before, pair.before_bands
    desc = tuple(ds.descriptions[i - 1] for i in idx)
    interp = tuple(ds.colorinterp[i - 1].name for i in idx)
    return lfeatures.rgb_of(desc, interp)


def observability_scale(pair: PairSource, before_samples: np.ndarray) -> observability.Scale:
    """The scene's band scale for the observability tests, with the bands' roles and clipping level."""
    n = pair.n_bands
    rgb = rgb_bands(pair) if n >= 3 else None
    # only 8-bit data has a known clipping level; 16-bit sensors clip at 2^11, 2^12 or not at all.
    # Each date has its own: a uint8 before and a uint16 after clip differently.
    levels = tuple(255.0 if np.dtype(ds.dtypes[bands[0] - 1]) == np.uint8 else None
                   for ds, bands in ((pair.before, pair.before_bands), (pair.after, pair.after_bands)))
    return observability.Scale.fit(before_samples, rgb, band_roles(n).nir, levels)


def read_registered(pair: PairSource, reg: R.Registration, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Before, after resampled through ``reg``, and their joint validity, for one box of the grid."""
    b, vb = pair.read_before(box)
    sbox = R.source_box(reg.matrix, box, field_=reg.field)
    a_raw, va_raw = pair.read_after(sbox)
    a, va = R.resample(a_raw, va_raw, sbox, reg.matrix, box, reg.field, reg.field_step_px)
    return b, a, vb & va


def saturation_level(ds: Any, bands: list[int]) -> float | None:
    """The value an integer image clips at (its dtype's maximum); None for float data.

    Each date has its own: a uint8 ``before`` and a uint16 ``after`` clip at 255 and 65535.
    """
    dtype = np.dtype(ds.dtypes[bands[0] - 1])
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else None


def _read_after_chip(pair: PairSource, box: Box, offset: tuple[int, int],
                     lin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chip of after at an integer offset, with the model's rotation/scale about the chip centre removed.

    Only the linear part is resampled, never a common fractional shift: interpolation
    kernels bias a uniform subpixel shift by a few hundredths of a pixel, while a
    rotation spreads their error over all phases.
    """
    r0, c0, h, w = box
    ox, oy = offset
    if np.allclose(lin, np.eye(2), atol=1e-9):
        return pair.read_after((r0 + oy, c0 + ox, h, w))
    m = 4 + int(np.ceil(max(h, w) * np.abs(lin - np.eye(2)).max()))
    big, vbig = pair.read_after((r0 + oy - m, c0 + ox - m, h + 2 * m, w + 2 * m))
    cl = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    local = np.column_stack([lin, cl + m - lin @ cl])
    return R.resample(big, vbig, (0, 0, h + 2 * m, w + 2 * m), local, (0, 0, h, w))


def measure_chips(pair: PairSource, matrix: np.ndarray, boxes: list[Box], params: RegisterConfig,
                  progress: ProgressFn, stage: str = "register",
                  trust_model: bool = False,
                  refine: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Displacement of every usable chip, read at the integer offset the model predicts.

    With ``trust_model`` the subpixel search starts at the model's prediction
    instead of a fresh phase correlation; without ``refine`` the phase-correlation
    peak alone is taken (a first look, a tenth of a pixel).

    Returns
    -------
    p : (n, 2) chip centres (x, y) on the grid.
    d : (n, 2) displacement (dx, dy) of each centre in after, pixels.
    ncc : (n,) correlation after correction.
    info : (n, 2, 2) how well each chip fixes each direction of its shift, on the grid
        (:func:`changedet.registration.shift_information` of the chip of before).
    """
    sat_level_b = saturation_level(pair.before, pair.before_bands)
    sat_level_a = saturation_level(pair.after, pair.after_bands)
    lin = matrix[:, :2] if trust_model else np.eye(2)

    def one(box: Box) -> tuple[np.ndarray, np.ndarray, float, np.ndarray] | None:
        r0, c0, h, w = box
        centre = np.array([c0 + (w - 1) / 2.0, r0 + (h - 1) / 2.0])
        pred = matrix @ np.append(centre, 1.0) - centre
        ox, oy = (int(v) for v in np.round(pred))
        b, vb = pair.read_before(box)
        a, va = _read_after_chip(pair, box, (ox, oy), lin)
        lb, la = luminance(b), luminance(a)
        if not (R.chip_is_usable(lb, vb, params.min_chip_std) and R.chip_is_usable(la, va, params.min_chip_std)):
            return None
        if sat_level_b is not None or sat_level_a is not None:
            sat_b = (b >= sat_level_b).any(axis=0) if sat_level_b is not None else np.zeros_like(vb)
            sat_a = (a >= sat_level_a).any(axis=0) if sat_level_a is not None else np.zeros_like(va)
            if not R.chip_is_clear(sat_b | sat_a):
                return None
            # clipped pixels (bright roofs, cloud cores) are left out, each image its own: one
            # mask shared by both would be a pattern at zero shift that phase correlation locks onto
            vb, va = vb & ~sat_b, va & ~sat_a
        init = tuple(np.linalg.solve(lin, pred - (ox, oy))) if trust_model else None
        dx, dy, score = R.measure_residual(lb, la, vb, va, params.upsample, init, refine=refine)
        return centre, np.array([ox, oy]) + lin @ (dx, dy), score, R.shift_information(lb, vb)

    ps, ds, cs, infos = [], [], [], []
    # the chips on the window threads (:func:`changedet.parallel.window_threads`), taken in order
    for i, got in enumerate(parallel.map_windows(one, boxes)):
        progress(stage, i + 1, len(boxes))
        if got is not None:
            ps.append(got[0])
            ds.append(got[1])
            cs.append(got[2])
            infos.append(got[3])
    return (np.array(ps, float).reshape(-1, 2), np.array(ds, float).reshape(-1, 2), np.array(cs, float),
            np.array(infos, float).reshape(-1, 2, 2))


def read_decimated_pair(pair: PairSource, max_px: int) -> Decimated:
    """Both dates decimated so that the long side is at most ``max_px``."""
    b, bv, factor = pair.read_decimated("before", max_px)
    a, av, _ = pair.read_decimated("after", max_px)
    return b, bv, a, av, factor


def coarse_shift(pair: PairSource, params: RegisterConfig,
                 decimated: Decimated | None = None) -> tuple[np.ndarray, list[str]]:
    """Whole-tile phase correlation on decimated images: an integer starting shift."""
    b, bv, a, av, factor = decimated or read_decimated_pair(pair, params.coarse_max_px)
    cdx, cdy = R.phase_shift(luminance(b), luminance(a), 10, bv, av)
    notes = []
    limit = R.coarse_limit_px(pair.shape, params)
    if np.hypot(cdx * factor, cdy * factor) > limit:
        notes.append(f"registration: coarse shift beyond {limit:.0f} px ignored")
        cdx = cdy = 0.0
    return R.translation(round(cdx * factor), round(cdy * factor)), notes


def _on_grid(img: np.ndarray, valid: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """``out(x, y) = img(x + dx, y + dy)`` for whole pixels; what falls outside is invalid."""
    out, vout = np.zeros_like(img), np.zeros_like(valid)
    h, w = valid.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[:, yd, xd] = img[:, ys, xs]
    vout[yd, xd] = valid[ys, xs]
    return out, vout


def weather_share(pair: PairSource, decimated: Decimated, matrix: np.ndarray, boxes: list[Box],
                  observe: ObserveConfig) -> np.ndarray:
    """Share of each chip under cloud, cloud shadow or thick haze on either date, from the decimated read.

    ``after`` is put on the grid by the coarse shift ``matrix`` (whole decimated pixels) first.
    """
    b, bv, a, av, factor = decimated
    a, av = _on_grid(a, av, int(round(matrix[0, 2] / factor)), int(round(matrix[1, 2] / factor)))
    valid = bv & av
    if valid.sum() < 64:
        return np.zeros(len(boxes))
    scale = observability_scale(pair, b[:, valid])
    hidden = R.hidden_by_weather(b, a, valid, scale, observe)
    return R.chip_hidden_share(hidden, boxes, factor)


def estimate_registration(pair: PairSource, params: RegisterConfig, progress: ProgressFn,
                          observe: ObserveConfig | None = None) -> R.Registration:
    """Coarse shift, two passes of chip tie points with a robust global fit, optional local field.

    Chips under cloud, cloud shadow or thick haze (``observe``'s tests on a decimated read) do not vote.
    """
    if not params.enabled:
        return R.identity()
    centre = ((pair.width - 1) / 2.0, (pair.height - 1) / 2.0)
    decimated = read_decimated_pair(pair, params.coarse_max_px)
    m0, notes = coarse_shift(pair, params, decimated)
    reg = R.Registration(m0, "translation", 0.0, float("nan"), 0, centre=centre)
    boxes = R.chip_boxes(pair.shape, params.chip_px, params.grid)
    if params.max_weather_frac < 1.0:
        share = weather_share(pair, decimated, m0, boxes, observe or ObserveConfig())
        keep = R.clear_chips(share, params.max_weather_frac)
        if not keep.all():
            notes.append(f"registration: {int((~keep).sum())} of {len(boxes)} chips left out, mostly covered by "
                         "something bright and white on one date only (cloud, haze, or new white roofs or ships)")
        boxes = [box for box, k in zip(boxes, keep) if k]
    for trust in (False, True):  # the second pass starts every chip at the first fit's prediction
        # the first pass only has to bring every chip into Lucas-Kanade's basin for the second
        p, d, ncc, info = measure_chips(pair, reg.matrix, boxes, params, progress, trust_model=trust, refine=trust)
        good = ncc >= 0.2
        if good.sum() == 0:
            return replace(reg, confidence=0.0, warnings=tuple(notes) + (
                "registration: no chip matched (no texture, nodata or saturation); no correction measured",))
        q = p + d
        m, inl, kind = R.fit_model(p[good], q[good], params.model, params.inlier_px, info[good])
        reg = replace(reg, matrix=m, method=kind)
    inliers = np.zeros(len(p), bool)
    inliers[np.flatnonzero(good)[inl]] = True
    held = np.zeros(len(p), bool)
    held[np.flatnonzero(good)[::4]] = True
    residual = R.holdout_residual(p[good], q[good], kind, params.inlier_px, info=info[good])
    chips = tuple(R.ChipVector(row=float(y), col=float(x), dx=float(dx), dy=float(dy), ncc=float(c))
                  for (x, y), (dx, dy), c in zip(p, d, ncc))
    reg = replace(reg, confidence=R.confidence_of(ncc, inliers, len(boxes)), residual_px=residual,
                  n_tiepoints=int(inliers.sum()), chips=chips, warnings=tuple(notes),
                  inliers=tuple(bool(v) for v in inliers), held_back=tuple(bool(v) for v in held))
    if params.local:
        reg = add_local_field(pair, reg, params, progress)
    return reg


def add_local_field(pair: PairSource, reg: R.Registration, params: RegisterConfig,
                    progress: ProgressFn) -> R.Registration:
    """Residual tie points on a denser grid -> outliers rejected -> a smooth displacement field."""
    boxes = R.chip_boxes(pair.shape, params.local_chip_px, params.local_grid)
    p, d, ncc, _ = measure_chips(pair, reg.matrix, boxes, params, progress, stage="local", trust_model=True)
    good = ncc >= 0.2
    r_after = d - (np.column_stack([p, np.ones(len(p))]) @ reg.matrix.T - p)  # what the global model misses
    if good.sum() >= 4:
        good[good] = R.reject_local_outliers(p[good], r_after[good])
    if good.sum() < 4:
        return replace(reg, warnings=reg.warnings + ("registration: too few local tie points; no local field",))
    # tie-point spacing: the kernel spans about one neighbour, so the field follows what the grid resolves
    spacing = max((max(pair.shape) - params.local_chip_px) / max(params.local_grid - 1, 1), 8.0)
    step = int(max(8, spacing // 4))
    field_ = R.fit_field(p[good], r_after[good], pair.shape, step, bandwidth_px=0.8 * spacing, prior=0.05)
    return replace(reg, field=field_, field_step_px=step, method=reg.method + "+local")
