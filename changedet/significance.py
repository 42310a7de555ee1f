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

from . import parallel, scratch, windowed
from .arrays import Box
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
    return _normal_table(np.bincount(q[sample], minlength=256))[q]


def _normal_table(counts: np.ndarray) -> np.ndarray:
    """The normal score (float32) of each of the 256 levels, from the levels' counts over the sample."""
    hist = np.asarray(counts).astype(np.float64)
    total = max(hist.sum(), 1.0)
    mid = (np.cumsum(hist) - hist / 2) / total
    return ndtri(np.clip(mid, 1e-6, 1 - 1e-6)).astype(np.float32)


def correlation_length(q: np.ndarray, sample: np.ndarray, window_px: int = 1024) -> float:
    """Lag (pixels) at which the autocorrelation of ``q``'s normal scores over ``sample`` falls to 0.5.

    Horizontal and vertical lags on every :data:`CORR_STRIDE`-th row and column, pooled; linear
    interpolation between the lags tried (1, 2, 4, ... :data:`MAX_LAG_PX`). 1 when too few pixels.
    ``q`` and ``sample`` may be memory maps or lazy views (:class:`changedet.windowed.Where`): only
    those rows and columns are kept, read a strip at a time. ``sample`` must not hold on nodata.
    """
    table = _normal_table(_sample_hist(q, sample, window_px)[0])
    lines = _sampled_lines(q, sample, table, window_px)
    prev_lag, prev_c = 0, 1.0
    lag = 1
    while lag <= MAX_LAG_PX:
        c = _lag_correlation(lines, lag)
        if c is None:
            return float(max(prev_lag, 1))
        if c < 0.5:
            return float(max(1.0, prev_lag + (lag - prev_lag) * (prev_c - 0.5) / max(prev_c - c, 1e-9)))
        prev_lag, prev_c = lag, c
        lag *= 2
    return float(MAX_LAG_PX)


#: a sampled line's value where the pixel is not in the sample (a level the score never takes there)
_OUT = NODATA


def _sampled_lines(q: np.ndarray, sample: np.ndarray, table: np.ndarray,
                   window_px: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every :data:`CORR_STRIDE`-th row, and column (transposed), of ``q``'s levels where ``sample``
    holds, :data:`_OUT` elsewhere: one byte per sampled pixel (the normal scores are looked up from
    ``table`` when a lag is measured). ``sample`` never holds on nodata.

    The columns are stored transposed (C order), so that a lag along a column, like one along a
    row, reads contiguous bytes (through a transposed view, the lags of a 10980² scene took a
    third more time).
    """
    h, w = q.shape
    cols = np.empty((len(range(0, w, CORR_STRIDE)), h), np.uint8)

    def one(strip: tuple[int, int]) -> np.ndarray:
        r0, r1 = strip
        first = r0 + (-r0) % CORR_STRIDE
        part = np.where(np.asarray(sample[r0:r1]).astype(bool), np.asarray(q[r0:r1]), np.uint8(_OUT))
        scratch.release(q)
        cols[:, r0:r1] = part[:, ::CORR_STRIDE].T
        return part[first - r0::CORR_STRIDE]

    rows = list(parallel.map_windows(one, list(windowed.strips(q.shape, window_px))))
    return [(table, np.concatenate(rows)), (table, cols)]


def _lag_correlation(lines: list[tuple[np.ndarray, np.ndarray]], lag: int) -> float | None:
    """Pearson correlation of the normal scores ``lag`` apart along the sampled lines (pooled).

    Sums in float64 over blocks of lines (two passes: means, then centred products), so the
    working set is a block, not every pair of pixels.
    """
    blocks = []
    for table, lq in lines:
        if lq.shape[1] <= lag:
            continue
        step = max(1, (1 << 20) // max(1, lq.shape[1]))
        for i in range(0, lq.shape[0], step):
            blocks.append((table, lq[i:i + step]))
    if not blocks:
        return None

    wide = {id(table): table.astype(np.float64) for table, _ in lines}  # float32 -> float64 is exact

    def levels(lq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The levels of the pairs of a block of lines, in row-major order: on the flat block (a
        pair does not reach past its line's end), as 1-d selections are the fastest numpy has."""
        rows, cols = lq.shape
        flat = np.ascontiguousarray(lq).reshape(-1)
        seen = flat != _OUT
        both = np.zeros(rows * cols, bool)
        np.logical_and(seen[:-lag], seen[lag:], out=both[:-lag])
        both.reshape(rows, cols)[:, cols - lag:] = False
        both = both[:-lag]
        return flat[:-lag][both], flat[lag:][both]

    def look_up(t64: np.ndarray, lev: np.ndarray) -> np.ndarray:
        """``t64[lev]`` (float64): OpenCV's table look-up, three times numpy's on a uint8 index."""
        if not lev.size:
            return np.zeros(0)
        return cv2.LUT(lev.reshape(-1, 1), t64.reshape(1, -1)).reshape(-1)

    def pairs(table: np.ndarray, lq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        la, lb = levels(lq)
        t64 = wide[id(table)]
        return look_up(t64, la), look_up(t64, lb)

    # each block's sums are made on the window threads and added up here, in block order, so the
    # result does not depend on the thread count: numpy's sums are its own, and OpenBLAS's dot product
    # splits a vector by its own thread count, not by the thread that calls it
    def moments(blk: tuple[np.ndarray, np.ndarray]) -> tuple[int, float, float, float, float, float, float] | None:
        table, lq = blk
        la, lb = levels(lq)
        if not la.size:
            return None
        t64 = wide[id(table)]
        # the extremes from the levels present (exact: a minimum of the same values)
        ta, tb = t64[np.bincount(la, minlength=256) > 0], t64[np.bincount(lb, minlength=256) > 0]
        return (la.size, float(look_up(t64, la).sum()), float(look_up(t64, lb).sum()), float(ta.min()), float(ta.max()),
                float(tb.min()), float(tb.max()))

    n, sa, sb = 0, 0.0, 0.0
    lo_a = lo_b = np.inf
    hi_a = hi_b = -np.inf
    for m in parallel.map_windows(moments, blocks):
        if m is not None:
            n += m[0]
            sa += m[1]
            sb += m[2]
            lo_a, hi_a = min(lo_a, m[3]), max(hi_a, m[4])
            lo_b, hi_b = min(lo_b, m[5]), max(hi_b, m[6])
    if n < 100 or lo_a == hi_a or lo_b == hi_b:
        return None
    ma, mb = sa / n, sb / n

    def products(blk: tuple[np.ndarray, np.ndarray]) -> tuple[float, float, float]:
        a, b = pairs(*blk)  # new arrays: centred in place
        a -= ma
        b -= mb
        return float(a @ a), float(b @ b), float(a @ b)

    saa = sbb = sab = 0.0
    for aa, bb, ab in parallel.map_windows(products, blocks):
        saa += aa
        sbb += bb
        sab += ab
    return float(np.clip(sab / np.sqrt(saa * sbb), -1.0, 1.0))


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
    return null_survival_of(np.bincount(q[sample], minlength=256), top)


def null_survival_of(counts: np.ndarray, top: int) -> tuple[np.ndarray, int, float]:
    """:func:`null_survival` from the counts of each level over the sample (256 or more)."""
    hist = np.asarray(counts)[: LEVELS + 1].astype(np.float64)
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
                  progress: Callable[[str, int, int], None] | None = None, *, window_px: int = 1024,
                  scr: scratch.Scratch = scratch.IN_MEMORY) -> RegionTest:
    """The a-contrario test of every changed region of ``mask`` (0/1/255) on the decision score ``q``.

    ``q`` is quantised (255 nodata); ``observable`` is where change can be seen; ``low`` is the
    decision's low (hysteresis) threshold as a 0..1 score and ``decide`` the decision itself
    (quantised score -> 0/1 mask), applied to the simulated null. The null is measured on every
    observable pixel, then (:data:`ROUNDS`) again without the regions significant at ``per_km2``.
    ``progress(stage, done, total)``, when given, hears of each round (stage ``significance``).

    The scene is gone through by windows of ``window_px`` (the label image and the samples from
    ``scr``; ``mask``, ``q`` and ``observable`` may be memory maps or lazy views), so the working
    set is a window, the changed pixels and the simulated field, whatever the scene's size.
    """
    report = progress or (lambda stage, done, total: None)
    report("significance", 0, ROUNDS)
    labels, stats = windowed.label(mask, window_px, scr, value=1)
    n = len(stats)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    valid = scr.zeros(q.shape, np.uint8)  # observable and not nodata
    changed = windowed.equals(mask, 1)

    def mark_valid(box: Box) -> None:
        r, c, h, w = box
        part = windowed.near_box(changed, HALO_PX, box)
        ok = np.asarray(observable[r:r + h, c:c + w]) & (np.asarray(q[r:r + h, c:c + w]) != NODATA)
        valid[r:r + h, c:c + w] = ok.astype(np.uint8) + (ok & ~part)  # 1 valid, 2 also far from every change

    for _ in windowed.map_boxes(mark_valid, q.shape, window_px):
        scratch.release(valid, q)
    side = int(np.ceil(np.sqrt(np.clip(q.size, SIM_MIN_PX, SIM_MAX_PX))))
    sim_km2 = side * side * gsd_m * gsd_m / 1e6
    # the null's correlation away from the changes (which are wider)
    ell = correlation_length(q, windowed.equals(valid, 2), window_px)
    ranks = null_field((side, side), ell)
    lab_px, q_px = windowed.label_pixels(labels, window_px, q)  # the changed pixels: their masses
    sample: np.ndarray | windowed.Where = windowed.Where(valid, lambda v: v > 0)
    null_px = 0
    for round_ in range(ROUNDS):
        hist, null_px = _sample_hist(q, sample, window_px)
        surv, t_n, slope = null_survival_of(hist, int(TOP_SHARE * low * LEVELS))
        info = surprise(surv)
        sim_q = levels_of(ranks, surv)
        m, sim_labels = cv2.connectedComponents((decide(sim_q) == 1).astype(np.uint8), connectivity=8,
                                                ltype=cv2.CV_32S)
        sim_mass = region_mass(sim_q, sim_labels, m, info)[1:]
        del sim_labels, sim_q
        nfa = rate_per_km2(windowed.label_sums(lab_px, info[q_px], n), sim_mass, sim_km2)
        nfa[0] = np.inf
        significant = nfa <= per_km2
        if round_ + 1 == ROUNDS or not np.any(significant):
            report("significance", ROUNDS, ROUNDS)
            break
        report("significance", round_ + 1, ROUNDS)
        # the regions found significant are change: measure the null again without them
        sig = significant.astype(np.uint8)
        away = scr.zeros(q.shape, np.uint8)
        found = windowed.Where(labels, lambda lab: sig[lab])

        def mark_away(box: Box) -> None:
            r, c, h, w = box
            part = windowed.near_box(found, HALO_ELL * ell, box)
            away[r:r + h, c:c + w] = (np.asarray(valid[r:r + h, c:c + w]) > 0) & ~part

        for _ in windowed.map_boxes(mark_away, q.shape, window_px):
            scratch.release(away, valid)
        sample = away
    return RegionTest(labels, nfa, area, ell, null_px, sim_km2, int(sim_mass.size), t_n / LEVELS, slope)


def _sample_hist(q: np.ndarray, sample: np.ndarray | windowed.Where, window_px: int) -> tuple[np.ndarray, int]:
    """Counts of each level of ``q`` over ``sample`` (256), and the sample's size."""

    def count(rows: tuple[int, int]) -> tuple[np.ndarray, int]:
        ok = np.asarray(sample[rows[0]:rows[1]]).astype(bool)
        found = np.bincount(np.asarray(q[rows[0]:rows[1]])[ok], minlength=256)
        scratch.release(q)
        return found, int(np.count_nonzero(ok))

    counts = np.zeros(256, np.int64)
    n = 0
    for found, k in parallel.map_windows(count, list(windowed.strips(q.shape, window_px))):
        counts += found  # integers: the sum does not depend on the order
        n += k
    return counts, n


def keep_significant(mask: np.ndarray, q: np.ndarray, observable: np.ndarray, gsd_m: float, per_km2: float,
                     low: float, decide: Callable[[np.ndarray], np.ndarray],
                     progress: Callable[[str, int, int], None] | None = None, *, window_px: int = 1024,
                     scr: scratch.Scratch = scratch.IN_MEMORY) -> tuple[np.ndarray, Budget]:
    """``mask`` (0/1/255) without its changed regions whose false alarms per km² exceed ``per_km2``.

    ``per_km2`` 0 switches the test off (every region kept). ``progress``, ``window_px`` and ``scr``
    as in :func:`judge_regions`; the result is a new array from ``scr``.
    """
    if per_km2 <= 0 or not _any_equal(mask, 1, window_px):
        return mask, Budget(per_km2, 0.0, 0, 0.0, 0, 1.0, 0.0, 0, 0, 0.0)
    t = judge_regions(mask, q, observable, gsd_m, low, decide, per_km2, progress, window_px=window_px, scr=scr)
    reject = t.nfa_per_km2 > per_km2
    reject[0] = False
    out = scr.copy(mask)
    for (r, c, h, w), part in windowed.apply(t.labels, reject, window_px):
        if part.any():
            out[r:r + h, c:c + w][part] = 0
        scratch.release(out)
    budget = Budget(per_km2, t.correlation_px, t.null_px, t.simulated_km2, t.simulated_regions, t.tail_level, t.tail_slope,
                    len(t.area_px) - 1, int(reject.sum()), float(t.area_px[reject].sum()) * gsd_m * gsd_m)
    return out, budget


def _any_equal(arr: np.ndarray, value: int, window_px: int) -> bool:
    for r0, r1 in windowed.strips(arr.shape, window_px):
        found = bool(np.any(np.asarray(arr[r0:r1]) == value))
        scratch.release(arr)
        if found:
            return True
    return False
