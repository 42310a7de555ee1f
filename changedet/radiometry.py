"""Relative radiometric normalization of ``after`` to ``before``.

A per-band linear map ``before ~ gain * after + offset`` is fitted on pixels
that did not change: start from all valid pixels, fit a reduced-major-axis line
per band (symmetric in the two dates, so noise in both does not bias the
gain), drop pixels whose joint residual is beyond ``reject_sigma`` robust
sigmas, and refit. This is a lightweight relative of iteratively reweighted
MAD (Canty & Nielsen 2008) and pseudo-invariant-feature regression
(Schott et al. 1988).

Vegetation changes with the season on its own (greener, browner, more or
less NIR), so with ``by_vegetation`` and three or more bands two such fits are
fitted jointly: per band, gain and offset vary linearly with a vegetation
weight ``w`` (``before ~ (g0 + (g1 - g0) w) after + o0 + (o1 - o0) w``, robust
least squares with the same rejection), as linear mixing of a vegetation and a
bare spectrum in each pixel suggests. ``w`` ramps from 0 to 1 between the 5th
and 95th percentile of the vegetation index of ``before`` (green NDVI
``(NIR - G) / (NIR + G)`` with a NIR band, excess green ``(2G - R - B) / (R + G + B)``
with three; both independent of RGB/BGR order).

``histogram`` instead matches each band's distribution of ``after`` to that of
``before`` (quantile mapping on the sampled pixels): it follows non-linear
differences (a different sensor response, gamma) but also absorbs part of a
large real change, so the robust linear fit stays the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import band_roles, robust_sigma
from .config import NormalizeConfig


@dataclass(frozen=True)
class RadiometricFit:
    """Per-band ``gain`` and ``offset`` mapping after onto before."""

    method: str
    gains: tuple[float, ...]
    offsets: tuple[float, ...]
    n_pixels: int
    n_sample: int
    #: histogram matching: per band, quantiles of after and the before values they map to
    quantiles_after: tuple[tuple[float, ...], ...] = ()
    quantiles_before: tuple[tuple[float, ...], ...] = ()
    #: by vegetation: gains/offsets above hold at vegetation weight 0 (bare), these at weight 1
    veg_gains: tuple[float, ...] = ()
    veg_offsets: tuple[float, ...] = ()
    veg_index_range: tuple[float, float] = (0.0, 0.0)  # index where the blend starts and ends

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "method": self.method,
            "gains": [round(g, 6) for g in self.gains],
            "offsets": [round(o, 4) for o in self.offsets],
            "n_pixels_used": self.n_pixels,
            "n_pixels_sampled": self.n_sample,
        }
        if self.quantiles_after:
            out["n_quantiles"] = len(self.quantiles_after[0])
        if self.veg_gains:
            out["vegetation"] = {"gains": [round(g, 6) for g in self.veg_gains],
                                 "offsets": [round(o, 4) for o in self.veg_offsets],
                                 "index_range": [round(v, 4) for v in self.veg_index_range]}
        return out


def identity_fit(n_bands: int, n_sample: int = 0) -> RadiometricFit:
    """No normalization."""
    return RadiometricFit("none", (1.0,) * n_bands, (0.0,) * n_bands, 0, n_sample)


def _rma(b: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    sa, sb = float(a.std()), float(b.std())
    if sa <= 0 or sb <= 0:
        return 1.0, float(b.mean() - a.mean())
    # RMA slope with a positive sign: sensors, sun and haze never invert a band; an anti-correlated
    # band is change, which the residual test then finds
    gain = sb / sa
    return gain, float(b.mean() - gain * a.mean())


def vegetation_index(img: np.ndarray) -> np.ndarray | None:
    """Green NDVI with a NIR band (4, 5 or 13 bands), excess green with 3 bands, else None.

    Parameters
    ----------
    img : (bands, ...) array; band roles from :func:`changedet.arrays.band_roles`.
    """
    roles = band_roles(img.shape[0])
    x = np.asarray(img, dtype=np.float32)
    if roles.green is not None and roles.nir is not None:
        g, n = x[roles.green], x[roles.nir]
        return (n - g) / np.maximum(np.abs(n + g), np.float32(1e-6))
    if img.shape[0] == 3:  # excess green: symmetric in the other two bands, so RGB or BGR alike
        return (2 * x[1] - x[0] - x[2]) / np.maximum(np.abs(x.sum(axis=0)), np.float32(1e-6))
    return None


def _robust_line(before: np.ndarray, after: np.ndarray, params: NormalizeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-band RMA lines, refitted without pixels whose joint residual is large; (gains, offsets, keep)."""
    n_bands, n = before.shape
    keep = np.ones(n, dtype=bool)
    gains = np.ones(n_bands)
    offsets = np.zeros(n_bands)
    for _ in range(params.iterations):
        for i in range(n_bands):
            gains[i], offsets[i] = _rma(before[i, keep], after[i, keep])
        resid = before - (gains[:, None] * after + offsets[:, None])
        sig = np.array([max(robust_sigma(r[keep]), 1e-6) for r in resid])
        z2 = np.mean((resid / sig[:, None]) ** 2, axis=0)
        new_keep = z2 <= params.reject_sigma**2
        if new_keep.sum() < 16 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return gains, offsets, keep


def _robust_mixture(before: np.ndarray, after: np.ndarray, w: np.ndarray, keep: np.ndarray,
                    params: NormalizeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per band, least squares of before on [after, after*w, 1, w], refitted without large residuals.

    Starts from ``keep`` (the no-change pixels of the plain fit). Returns gains and offsets at w = 0
    and at w = 1, and the final keep.
    """
    n_bands, n = before.shape
    coef = np.zeros((n_bands, 4))
    for _ in range(params.iterations):
        for i in range(n_bands):
            a = after[i, keep].astype(np.float64)
            design = np.column_stack([a, a * w[keep], np.ones_like(a), w[keep]])
            coef[i] = np.linalg.lstsq(design, before[i, keep].astype(np.float64), rcond=None)[0]
        pred = (coef[:, 0:1] + coef[:, 1:2] * w) * after + coef[:, 2:3] + coef[:, 3:4] * w
        resid = before - pred
        sig = np.array([max(robust_sigma(r[keep]), 1e-6) for r in resid])
        new_keep = np.mean((resid / sig[:, None]) ** 2, axis=0) <= params.reject_sigma**2
        if new_keep.sum() < 16 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef[:, 0], coef[:, 2], coef[:, 0] + coef[:, 1], coef[:, 2] + coef[:, 3], keep


def _veg_weight(vi: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((vi - np.float32(lo)) / np.float32(max(hi - lo, 1e-6)), 0.0, 1.0).astype(np.float32)


def fit_linear(before: np.ndarray, after: np.ndarray, params: NormalizeConfig) -> RadiometricFit:
    """Fit per-band gain and offset from samples of no-change pixels.

    Parameters
    ----------
    before, after : (bands, n) float arrays of co-located valid samples.
    params : iterations, rejection level, and whether to fit vegetation separately.

    Returns
    -------
    RadiometricFit with ``before ~ gain * after + offset`` per band; with ``by_vegetation`` (3+ bands,
    500+ samples, plausible gains) gain and offset vary linearly with the vegetation weight.
    """
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"expected two (bands, n) arrays of one shape, got {before.shape} and {after.shape}")
    n_bands, n = before.shape
    if params.method == "none" or n < 16:
        return identity_fit(n_bands, n)
    gains, offsets, keep = _robust_line(before, after, params)
    vi = vegetation_index(before) if params.by_vegetation else None
    if vi is not None and n >= 500:
        lo, hi = (float(v) for v in np.percentile(vi, [5, 95]))
        if hi - lo > 1e-3:
            g0, o0, g1, o1, k = _robust_mixture(before, after, _veg_weight(vi, lo, hi), keep, params)
            # a gain that changes sign or by more than 2x is not a season but a change of cover that
            # the model would explain away (a lawn gone brown): keep the plain fit then
            ratio = np.concatenate([g0, g1]) / np.concatenate([gains, gains])
            if np.all(np.isfinite(ratio)) and ratio.min() > 0.5 and ratio.max() < 2.0:
                return RadiometricFit("linear-vegetation", tuple(float(g) for g in g0), tuple(float(o) for o in o0),
                                      int(k.sum()), int(n), veg_gains=tuple(float(g) for g in g1),
                                      veg_offsets=tuple(float(o) for o in o1), veg_index_range=(lo, hi))
    return RadiometricFit("linear-rma", tuple(float(g) for g in gains), tuple(float(o) for o in offsets),
                          int(keep.sum()), int(n))


def fit_histogram(before: np.ndarray, after: np.ndarray, n_quantiles: int = 257) -> RadiometricFit:
    """Histogram matching per band from co-located samples.

    Parameters
    ----------
    before, after : (bands, n) float arrays of valid samples.
    n_quantiles : points of the piecewise-linear mapping.

    Returns
    -------
    RadiometricFit whose :func:`apply` maps each quantile of ``after`` onto the same quantile of
    ``before``; ``gains``/``offsets`` hold the straight line through the mapping, for the record.
    """
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"expected two (bands, n) arrays of one shape, got {before.shape} and {after.shape}")
    n_bands, n = before.shape
    if n < 16:
        return identity_fit(n_bands, n)
    qs = np.linspace(0.0, 1.0, n_quantiles)
    qa = np.quantile(after, qs, axis=1).T
    qb = np.quantile(before, qs, axis=1).T
    lines = [np.polyfit(qa[i], qb[i], 1) if np.ptp(qa[i]) > 0 else (1.0, float(qb[i].mean() - qa[i].mean()))
             for i in range(n_bands)]
    return RadiometricFit("histogram", tuple(float(g) for g, _ in lines), tuple(float(o) for _, o in lines), int(n),
                          int(n), tuple(tuple(float(v) for v in row) for row in qa),
                          tuple(tuple(float(v) for v in row) for row in qb))


def fit_normalization(before: np.ndarray, after: np.ndarray, params: NormalizeConfig) -> RadiometricFit:
    """The configured normalization (``linear``, ``histogram`` or ``none``) from (bands, n) samples."""
    if params.method == "histogram":
        return fit_histogram(before, after)
    return fit_linear(before, after, params)


def apply(after: np.ndarray, fit: RadiometricFit, before: np.ndarray | None = None) -> np.ndarray:
    """Map (bands, h, w) ``after`` onto ``before``'s radiometry.

    ``before`` (same shape) is needed by a fit by vegetation, whose gain and offset follow the
    vegetation index of ``before``; without it the bare (weight 0) line is used.
    """
    if fit.veg_gains and before is not None:
        vi = vegetation_index(before)
        if vi is not None:
            w = _veg_weight(vi, *fit.veg_index_range)[None]
            g0, o0 = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (fit.gains, fit.offsets))
            g1, o1 = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (fit.veg_gains, fit.veg_offsets))
            # ((1 - w) * (after * g0 + o0) + w * (after * g1 + o1)), in place: the same numbers
            bare = after * g0
            bare += o0
            bare *= 1 - w
            veg = after * g1
            veg += o1
            veg *= w
            bare += veg
            return bare.astype(np.float32, copy=False)
    if fit.quantiles_after:
        out = np.empty(after.shape, dtype=np.float32)
        for i in range(after.shape[0]):
            out[i] = np.interp(after[i], fit.quantiles_after[i], fit.quantiles_before[i])
        return out
    g = np.asarray(fit.gains, dtype=np.float32)[:, None, None]
    o = np.asarray(fit.offsets, dtype=np.float32)[:, None, None]
    return after * g + o
