"""A false-alarm budget per km²: an a-contrario test of each changed region.

The threshold decides pixels; this module decides regions. A region is kept when the expected
number of regions at least as extreme, under the pair's own no-change statistics, is at most
``decide.false_alarms_per_km2`` per square kilometre (Desolneux, Moisan and Morel's *number of false
alarms*, per unit area), so the expected number of false detections stays bounded per km² whatever
the scene's size.

- **How extreme**: a region's *mass*, the sum over its pixels of the surprise ``-ln S(t)`` of their
  scores, where ``S(t) = P(score >= t)`` under no change. A large weak region and a small strong
  one both reach a high mass; a blob of noise that just clears the threshold does not.
- **How often the null does it**: by simulation. A field with the score's no-change distribution
  ``S`` and correlation length ``ell`` (Gaussian noise blurred to the same autocorrelation, mapped
  onto ``S`` by its ranks; ``ell`` measured on normal scores) is cut by the very decision the
  pipeline made (same thresholds, hysteresis, clean-up). The rate per km² of its regions with at
  least a region's mass is that region's number of false alarms per km²; beyond the heaviest
  simulated regions the rate falls exponentially, as fitted on the heaviest ones.
- **The null, from the pair itself**: the score's distribution over the observable pixels, counted
  up to where it falls to :data:`TAIL_FROM` (or to :data:`TOP_SHARE` of the decision's low
  threshold) and extrapolated above, as a Gaussian tail in the logit of the score (the normal
  score ``Phi^-1(1 - S)`` linear in ``logit(t)``, fitted from the median up): above the decision
  the null cannot be told from the change. Measured first on every pixel (changes included: a
  heavier tail than the truth, so a conservative test), then once more without the regions that
  passed and their surroundings (:data:`HALO_ELL` correlation lengths). ``ell`` is measured away
  from the changed regions (they are wider than the noise).

On a Gaussian noise field seen through a logistic (tests/test_significance.py) the kept regions
stay within about 2x of the budget at 1 to 100 per km²; with change present the null is
overestimated and the test keeps fewer regions than the budget allows (figures in the README).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.special import ndtr, ndtri

from .threshold import LEVELS, NODATA

#: the correlation length is searched up to this lag (pixels)
MAX_LAG_PX = 64
#: rows and columns sampled for the autocorrelation: one in this many
CORR_STRIDE = 4
#: the correlation length is measured on observable pixels farther than this from every changed pixel
HALO_PX = 2
#: measurements of the null: the first on every pixel, each next without the regions found significant
ROUNDS = 2
#: and without their surroundings up to this many correlation lengths
HALO_ELL = 2.0
#: the null is counted down to this survival, extrapolated beyond
TAIL_FROM = 0.02
#: and fitted over at least this many levels
MIN_FIT_LEVELS = 8
#: levels fewer null pixels reach are extrapolated, not counted
MIN_TAIL_PX = 200
#: the null is counted up to this share of the decision's low threshold, extrapolated beyond
TOP_SHARE = 0.8
#: the extrapolated tail's normal score rises at least this much per unit of logit
MIN_SLOPE = 0.1
#: the simulated null field: at least this many pixels (and as many as the scene, up to the cap)
SIM_MIN_PX = 1 << 20
SIM_MAX_PX = 1 << 22
#: the rate beyond the heaviest simulated regions is fitted on this many of them
TAIL_REGIONS = 20
SEED = 20261203


@dataclass(frozen=True)
class Budget:
    """What the test saw and did, for ``summary.json``."""

    per_km2: float  # the budget epsilon; 0 = off
    correlation_px: float  # correlation length of the score (pixels)
    null_px: int  # pixels the no-change statistics were measured on
    simulated_km2: float  # area of the simulated null field
    simulated_regions: int  # regions the decision cut from it
    tail_level: float  # score above which the null is extrapolated
    tail_slope: float  # its normal score rises this much per unit of logit
    tested: int  # changed regions tested
    rejected: int  # of which not significant
    rejected_m2: float  # their area

    def to_json(self) -> dict[str, object]:
        return {"false_alarms_per_km2": self.per_km2, "correlation_px": round(self.correlation_px, 3),
                "null_px": self.null_px, "simulated_km2": round(self.simulated_km2, 6),
                "simulated_regions": self.simulated_regions, "tail_level": round(self.tail_level, 4),
                "tail_slope": round(self.tail_slope, 4), "regions_tested": self.tested,
                "regions_rejected": self.rejected, "rejected_m2": round(self.rejected_m2, 3)}


@dataclass(frozen=True)
class RegionTest:
    """Every changed region's number of false alarms per km², and the null it was measured on."""

    labels: np.ndarray  # (h, w) int32, 8-connected changed regions, 0 elsewhere
    nfa_per_km2: np.ndarray  # (n,) per label; inf for the background
    area_px: np.ndarray  # (n,) pixels per label
    correlation_px: float
    null_px: int
    simulated_km2: float
    simulated_regions: int
    tail_level: float  # score above which the null is extrapolated
    tail_slope: float  # its normal score rises this much per unit of logit


def normal_scores(q: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """``q``'s levels as the standard normal quantiles of their mid-ranks over ``sample`` (float32).

    The simulated null is a Gaussian field mapped onto the score's distribution: its correlation is
    that of the score's normal scores, not of the score itself.
    """
    hist = np.bincount(q[sample], minlength=256).astype(np.float64)
    total = max(hist.sum(), 1.0)
    mid = (np.cumsum(hist) - hist / 2) / total
    return ndtri(np.clip(mid, 1e-6, 1 - 1e-6)).astype(np.float32)[q]


def correlation_length(q: np.ndarray, sample: np.ndarray) -> float:
    """Lag (pixels) at which the autocorrelation of ``q``'s normal scores over ``sample`` falls to 0.5.

    Horizontal and vertical lags on every :data:`CORR_STRIDE`-th row and column, pooled; linear
    interpolation between the lags tried (1, 2, 4, ... :data:`MAX_LAG_PX`). 1 when too few pixels.
    """
    z = normal_scores(q, sample)
    prev_lag, prev_c = 0, 1.0
    lag = 1
    while lag <= MAX_LAG_PX:
        c = _lag_correlation(z, sample, lag)
        if c is None:
            return float(max(prev_lag, 1))
        if c < 0.5:
            return float(max(1.0, prev_lag + (lag - prev_lag) * (prev_c - 0.5) / max(prev_c - c, 1e-9)))
        prev_lag, prev_c = lag, c
        lag *= 2
    return float(MAX_LAG_PX)


def _lag_correlation(z: np.ndarray, sample: np.ndarray, lag: int) -> float | None:
    a_parts, b_parts = [], []
    for img, ok in ((z[::CORR_STRIDE], sample[::CORR_STRIDE]), (z[:, ::CORR_STRIDE].T, sample[:, ::CORR_STRIDE].T)):
        if img.shape[1] <= lag:
            continue
        both = ok[:, :-lag] & ok[:, lag:]
        a_parts.append(img[:, :-lag][both])
        b_parts.append(img[:, lag:][both])
    if not a_parts:
        return None
    a = np.concatenate(a_parts).astype(np.float64)
    b = np.concatenate(b_parts).astype(np.float64)
    if a.size < 100 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _logit(level: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(level, np.float64), 0.5, LEVELS - 0.5) / LEVELS
    return np.log(p / (1 - p))


def null_survival(q: np.ndarray, sample: np.ndarray, top: int) -> tuple[np.ndarray, int, float]:
    """``S[t] = P(q >= t)`` of the no-change score, levels 0..254; where its tail starts; the tail's slope.

    Empirical over the ``sample`` pixels up to ``t1``: the lowest of ``top`` (below the decision's
    low threshold), the level where ``S`` falls to :data:`TAIL_FROM` (above it change mixes in)
    and the highest level at least :data:`MIN_TAIL_PX` pixels reach. Beyond, the tail is
    extrapolated as a Gaussian one in the logit of the score: the normal score
    ``z(t) = Phi^-1(1 - S(t))`` is fitted as a straight line in ``logit(t)`` from the median (or
    :data:`MIN_FIT_LEVELS` levels below ``t1`` when the median is an atom at 0) to ``t1`` (exact for a smooth Gaussian noise seen
    through a logistic, as the score's ``z² / (z² + k²)`` is). Returns the survival, ``t1`` and the
    slope of ``z`` per unit of logit.
    """
    hist = np.bincount(q[sample], minlength=256)[: LEVELS + 1].astype(np.float64)
    if hist.sum() == 0:
        return np.ones(LEVELS + 1), 0, 0.0
    at_or_above = np.cumsum(hist[::-1])[::-1]
    surv = at_or_above / at_or_above[0]
    supported = np.nonzero(at_or_above >= MIN_TAIL_PX)[0]
    t1 = int(min(top, supported.max() if supported.size else 0, np.searchsorted(-surv, -TAIL_FROM)))
    t0 = int(np.searchsorted(-surv, -0.5))
    levels = np.arange(min(t0, max(t1 - MIN_FIT_LEVELS, 0)), t1 + 1)
    levels = levels[(surv[levels] > 0) & (surv[levels] < 1)]
    slope = MIN_SLOPE
    if levels.size >= 2:
        slope = max(float(np.polyfit(_logit(levels), ndtri(1 - surv[levels]), 1)[0]), MIN_SLOPE)
    out = surv.copy()
    if t1 < LEVELS:
        z1 = ndtri(1 - surv[t1]) if 0 < surv[t1] < 1 else 0.0
        beyond = np.arange(t1 + 1, LEVELS + 1)
        out[beyond] = ndtr(-(z1 + slope * (_logit(beyond) - _logit(t1))))
    return out, t1, slope


def surprise(surv: np.ndarray) -> np.ndarray:
    """``-ln S`` per level, 0 for nodata (index 255); a level the null never reached counts as the rarest seen."""
    rarest = surv[surv > 0].min() if np.any(surv > 0) else 1.0
    out = np.zeros(256)
    out[: LEVELS + 1] = -np.log(np.maximum(surv, rarest))
    return out


def region_mass(q: np.ndarray, labels: np.ndarray, n: int, info: np.ndarray) -> np.ndarray:
    """Sum of ``info[q]`` over each labelled region (index 0: the background)."""
    return np.bincount(labels.ravel(), weights=info[q].ravel(), minlength=n)


def null_field(shape: tuple[int, int], ell: float, seed: int = SEED) -> np.ndarray:
    """Ranks (0..1, float32) of Gaussian noise blurred to an autocorrelation of one half at ``ell`` px.

    White noise blurred by a Gaussian of sigma ``s`` has autocorrelation ``exp(-lag² / 4s²)``: one half
    at ``2 s sqrt(ln 2)``.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape, dtype=np.float32)
    sigma = ell / (2.0 * np.sqrt(np.log(2.0)))
    if sigma > 0.3:
        z = cv2.GaussianBlur(z, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    order = np.argsort(z, axis=None, kind="stable")
    ranks = np.empty(z.size, dtype=np.float32)
    ranks[order] = (np.arange(z.size, dtype=np.float32) + 0.5) / z.size
    return ranks.reshape(shape)


def levels_of(ranks: np.ndarray, surv: np.ndarray) -> np.ndarray:
    """The null's score levels (uint8) at the given ranks: the level whose survival brackets ``1 - rank``."""
    cdf_below = 1.0 - surv  # P(q < t)
    return (np.searchsorted(cdf_below, ranks, side="right") - 1).clip(0, LEVELS).astype(np.uint8)


def rate_per_km2(masses: np.ndarray, sim_masses: np.ndarray, sim_km2: float) -> np.ndarray:
    """Simulated regions per km² with at least each of ``masses``; exponential beyond the heaviest."""
    sims = np.sort(sim_masses)
    if sims.size == 0:
        return np.full(masses.shape, 0.5 / sim_km2)
    count = sims.size - np.searchsorted(sims, masses, side="left")
    rate = count / sim_km2
    k = min(TAIL_REGIONS, sims.size)
    top = sims[-k:]
    base = top[0]
    scale = max(float(np.mean(top - base)), 1e-6)
    beyond = masses > base
    rate[beyond] = (k / sim_km2) * np.exp(-(masses[beyond] - base) / scale)
    return rate


def judge_regions(mask: np.ndarray, q: np.ndarray, observable: np.ndarray, gsd_m: float, low: float,
                 decide: Callable[[np.ndarray], np.ndarray], per_km2: float,
                 progress: Callable[[str, int, int], None] | None = None) -> RegionTest:
    """The a-contrario test of every changed region of ``mask`` (0/1/255) on the decision score ``q``.

    ``q`` is quantised (255 nodata); ``observable`` is where change can be seen; ``low`` is the
    decision's low (hysteresis) threshold as a 0..1 score and ``decide`` the decision itself
    (quantised score -> 0/1 mask), applied to the simulated null. The null is measured on every
    observable pixel, then (:data:`ROUNDS`) again without the regions significant at ``per_km2``.
    ``progress(stage, done, total)``, when given, hears of each round (stage ``significance``).
    """
    report = progress or (lambda stage, done, total: None)
    report("significance", 0, ROUNDS)
    changed = (mask == 1).astype(np.uint8)
    n, labels = cv2.connectedComponents(changed, connectivity=8, ltype=cv2.CV_32S)
    area = np.bincount(labels.ravel(), minlength=n)
    valid = observable & (q != NODATA)
    side = int(np.ceil(np.sqrt(np.clip(q.size, SIM_MIN_PX, SIM_MAX_PX))))
    sim_km2 = side * side * gsd_m * gsd_m / 1e6
    far = valid & (cv2.distanceTransform(1 - changed, cv2.DIST_L2, 3) > HALO_PX)
    # the null's correlation away from the changes (which are wider)
    ell = correlation_length(q, far)
    ranks = null_field((side, side), ell)
    sample = valid
    for round_ in range(ROUNDS):
        surv, t_n, slope = null_survival(q, sample, int(TOP_SHARE * low * LEVELS))
        info = surprise(surv)
        sim_q = levels_of(ranks, surv)
        m, sim_labels = cv2.connectedComponents((decide(sim_q) == 1).astype(np.uint8), connectivity=8,
                                                ltype=cv2.CV_32S)
        sim_mass = region_mass(sim_q, sim_labels, m, info)[1:]
        nfa = rate_per_km2(region_mass(q, labels, n, info), sim_mass, sim_km2)
        nfa[0] = np.inf
        significant = nfa <= per_km2
        if round_ + 1 == ROUNDS or not np.any(significant):
            report("significance", ROUNDS, ROUNDS)
            break
        report("significance", round_ + 1, ROUNDS)
        # the regions found significant are change: measure the null again without them
        away = cv2.distanceTransform(1 - significant[labels].astype(np.uint8), cv2.DIST_L2, 3)
        sample = valid & (away > HALO_ELL * ell)
    return RegionTest(labels, nfa, area, ell, int(np.count_nonzero(sample)), sim_km2, int(sim_mass.size),
                      t_n / LEVELS, slope)


def keep_significant(mask: np.ndarray, q: np.ndarray, observable: np.ndarray, gsd_m: float, per_km2: float,
                     low: float, decide: Callable[[np.ndarray], np.ndarray],
                     progress: Callable[[str, int, int], None] | None = None) -> tuple[np.ndarray, Budget]:
    """``mask`` (0/1/255) without its changed regions whose false alarms per km² exceed ``per_km2``.

    ``per_km2`` 0 switches the test off (every region kept). ``progress`` as in :func:`judge_regions`.
    """
    if per_km2 <= 0 or not np.any(mask == 1):
        return mask, Budget(per_km2, 0.0, 0, 0.0, 0, 1.0, 0.0, 0, 0, 0.0)
    t = judge_regions(mask, q, observable, gsd_m, low, decide, per_km2, progress)
    reject = t.nfa_per_km2 > per_km2
    reject[0] = False
    out = mask.copy()
    out[reject[t.labels]] = 0
    budget = Budget(per_km2, t.correlation_px, t.null_px, t.simulated_km2, t.simulated_regions, t.tail_level, t.tail_slope,
                    len(t.area_px) - 1, int(reject.sum()), float(t.area_px[reject].sum()) * gsd_m * gsd_m)
    return out, budget
