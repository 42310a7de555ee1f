"""Relative radiometric normalization of ``after`` to ``before``.

A per-band linear map ``before ~ gain * after + offset`` is fitted on pixels
that did not change: start from all valid pixels, fit a reduced-major-axis line
per band (symmetric in the two dates, so noise in both does not bias the
gain), drop pixels whose joint residual is beyond ``reject_sigma`` robust
sigmas, and refit. This is a lightweight relative of iteratively reweighted
MAD (Canty & Nielsen 2008) and pseudo-invariant-feature regression
(Schott et al. 1988).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import robust_sigma
from .config import NormalizeConfig


@dataclass(frozen=True)
class RadiometricFit:
    """Per-band ``gain`` and ``offset`` mapping after onto before."""

    method: str
    gains: tuple[float, ...]
    offsets: tuple[float, ...]
    n_pixels: int
    n_sample: int

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "gains": [round(g, 6) for g in self.gains],
            "offsets": [round(o, 4) for o in self.offsets],
            "n_pixels_used": self.n_pixels,
            "n_pixels_sampled": self.n_sample,
        }


def identity_fit(n_bands: int, n_sample: int = 0) -> RadiometricFit:
    """No normalization."""
    return RadiometricFit("none", (1.0,) * n_bands, (0.0,) * n_bands, 0, n_sample)


def _rma(b: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    sa, sb = float(a.std()), float(b.std())
    if sa <= 0 or sb <= 0:
        return 1.0, float(b.mean() - a.mean())
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 2 else 1.0
    gain = sb / sa * (1.0 if corr >= 0 else -1.0)
    return gain, float(b.mean() - gain * a.mean())


def fit_linear(before: np.ndarray, after: np.ndarray, params: NormalizeConfig) -> RadiometricFit:
    """Fit per-band gain and offset from samples of no-change pixels.

    Parameters
    ----------
    before, after : (bands, n) float arrays of co-located valid samples.
    params : iterations and rejection level.

    Returns
    -------
    RadiometricFit with ``before ~ gain * after + offset`` per band.
    """
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"expected two (bands, n) arrays of one shape, got {before.shape} and {after.shape}")
    n_bands, n = before.shape
    if params.method == "none" or n < 16:
        return identity_fit(n_bands, n)
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
    return RadiometricFit("linear-rma", tuple(float(g) for g in gains), tuple(float(o) for o in offsets),
                          int(keep.sum()), int(n))


def apply(after: np.ndarray, fit: RadiometricFit) -> np.ndarray:
    """Map (bands, h, w) ``after`` onto ``before``'s radiometry."""
    g = np.asarray(fit.gains, dtype=np.float32)[:, None, None]
    o = np.asarray(fit.offsets, dtype=np.float32)[:, None, None]
    return after * g + o
