"""The false-alarm budget: an a-contrario test of changed regions against the pair's own null."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet import significance as S
from changedet.threshold import LEVELS, NODATA, quantize

GSD = 1.0


def _null_score(size: int, sigma: float, seed: int) -> np.ndarray:
    """A smooth no-change score: blurred white noise, scaled so the bulk is low and the tail thin."""
    rng = np.random.default_rng(seed)
    z = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    z /= z.std()
    score = 1.0 / (1.0 + np.exp(-(z - 1.5) * 2.0))  # a logistic of a unit normal field
    return quantize(score, np.ones_like(score, bool))


def _threshold(q: np.ndarray, level: float) -> np.ndarray:
    return (q > level * LEVELS).astype(np.uint8)


def _cut(level: float):
    return lambda q: _threshold(q, level)


@pytest.mark.parametrize("sigma", [1.5, 3.0, 5.0])
def test_correlation_length_of_a_gaussian_blur(sigma):
    # white noise blurred by a Gaussian of sigma s has autocorrelation exp(-lag^2 / (4 s^2)):
    # it falls to one half at 2 s sqrt(ln 2)
    q = _null_score(512, sigma, 0)
    ell = S.correlation_length(q, np.ones_like(q, bool))
    expected = 2 * sigma * np.sqrt(np.log(2))
    assert expected * 0.8 < ell < expected * 1.3


def test_null_survival_is_the_empirical_one_and_the_simulated_null_has_its_levels():
    rng = np.random.default_rng(1)
    q = np.clip(rng.exponential(12.0, (400, 400)), 0, 254).astype(np.uint8)
    surv, top, decay = S.null_survival(q, np.ones_like(q, bool), 40)
    empirical = np.array([np.mean(q >= t) for t in range(LEVELS + 1)])
    assert top == 40 and np.allclose(surv[:41], empirical[:41])
    assert np.all(np.diff(surv) <= 1e-12) and surv[-1] > 0 and decay > 0
    sim = S.levels_of(S.null_field((400, 400), 3.0), surv)
    # the simulated field has the null's distribution, level by level
    for t in (5, 12, 24, 36):
        assert abs(np.mean(sim >= t) - surv[t]) < 0.01


def test_off_keeps_every_region():
    q = _null_score(256, 2.0, 2)
    mask = _threshold(q, 0.5)
    out, budget = S.keep_significant(mask, q, np.ones_like(q, bool), GSD, 0.0, 0.5, _cut(0.5))
    assert np.array_equal(out, mask)
    assert budget.rejected == 0


def _regions(mask: np.ndarray) -> int:
    return cv2.connectedComponents((mask == 1).astype(np.uint8), connectivity=8)[0] - 1


@pytest.mark.parametrize("size", [512, 1536])
def test_pure_noise_keeps_at_most_the_budget_whatever_the_scene_size(size):
    # a low threshold on a no-change score cuts many regions; the budget keeps few, per km², at any size
    q = _null_score(size, 2.0, size)
    mask = _threshold(q, 0.45)
    km2 = size * size * GSD * GSD / 1e6
    assert _regions(mask) > 20 * km2 * 10
    out, budget = S.keep_significant(mask, q, np.ones_like(q, bool), GSD, 10.0, 0.45, _cut(0.45))
    # within a few times the budget (the null's correlation is measured away from the regions,
    # a little short of the truth), not the hundreds the threshold alone keeps
    assert _regions(out) <= 4 * 10.0 * km2 + 3
    assert budget.tested == _regions(mask)


def test_a_strong_object_in_noise_is_kept_and_weak_blobs_are_not():
    q = _null_score(1024, 2.0, 3)
    q[500:530, 500:540] = LEVELS  # a 30 x 40 m object, changed with certainty
    mask = _threshold(q, 0.45)
    out, budget = S.keep_significant(mask, q, np.ones_like(q, bool), GSD, 1.0, 0.45, _cut(0.45))
    assert np.all(out[500:530, 500:540] == 1)
    assert budget.rejected > 0 and _regions(out) < _regions(mask)


@settings(max_examples=8, deadline=None)
@given(st.floats(0.1, 30.0), st.floats(1.0, 10.0), st.integers(0, 1000))
def test_a_larger_budget_keeps_a_superset(eps, factor, seed):
    q = _null_score(256, 2.0, seed)
    mask = _threshold(q, 0.5)
    observable = np.ones_like(q, bool)
    small, _ = S.keep_significant(mask, q, observable, GSD, eps, 0.5, _cut(0.5))
    large, _ = S.keep_significant(mask, q, observable, GSD, eps * factor, 0.5, _cut(0.5))
    assert np.all(large[small == 1] == 1)


def test_nodata_and_unobservable_pixels_are_left_alone():
    q = _null_score(256, 2.0, 4)
    q[:, :20] = NODATA
    mask = _threshold(q, 0.5)
    mask[:, :20] = NODATA
    observable = np.ones_like(q, bool)
    observable[:, :20] = False
    out, _ = S.keep_significant(mask, q, observable, GSD, 1.0, 0.5, _cut(0.5))
    assert np.all(out[:, :20] == NODATA)
    assert set(np.unique(out)) <= {0, 1, NODATA}


def _corrcoef_reference(q: np.ndarray, sample: np.ndarray, lag: int) -> float:
    """The lag correlation as one np.corrcoef over every pair (the whole-array way)."""
    z = S.normal_scores(q, sample)
    a_parts, b_parts = [], []
    for img, ok in ((z[::S.CORR_STRIDE], sample[::S.CORR_STRIDE]),
                    (z[:, ::S.CORR_STRIDE].T, sample[:, ::S.CORR_STRIDE].T)):
        both = ok[:, :-lag] & ok[:, lag:]
        a_parts.append(img[:, :-lag][both])
        b_parts.append(img[:, lag:][both])
    a, b = np.concatenate(a_parts).astype(np.float64), np.concatenate(b_parts).astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("lag", [1, 2, 8])
def test_lag_correlation_by_blocks_equals_one_corrcoef(lag):
    q = _null_score(301, 2.5, 7)
    sample = np.random.default_rng(7).random(q.shape) > 0.2
    table = S._normal_table(np.bincount(q[sample], minlength=256))
    lines = S._sampled_lines(q, sample, table, 64)
    assert S._lag_correlation(lines, lag) == pytest.approx(_corrcoef_reference(q, sample, lag), abs=1e-12)


def test_windows_and_memory_maps_decide_the_same_regions(tmp_path):
    from changedet import scratch

    q = _null_score(300, 2.0, 5)
    q[100:130, 40:80] = LEVELS
    q[:, :10] = NODATA
    mask = _threshold(q, 0.45)
    mask[:, :10] = NODATA
    observable = np.ones_like(q, bool)
    observable[250:, 250:] = False
    whole, b_whole = S.keep_significant(mask, q, observable, GSD, 5.0, 0.45, _cut(0.45))
    mapped, b_mapped = S.keep_significant(mask, q, observable, GSD, 5.0, 0.45, _cut(0.45), window_px=32,
                                          scr=scratch.Scratch(tmp_path, 0))
    assert scratch.is_mapped(mapped)
    np.testing.assert_array_equal(np.asarray(mapped), whole)
    assert b_mapped == b_whole and 0 < b_whole.rejected < b_whole.tested


def test_window_threads_decide_the_same_regions_with_the_same_figures(tmp_path):
    from changedet import parallel, scratch

    q = _null_score(300, 2.0, 9)
    q[100:130, 40:80] = LEVELS
    mask = _threshold(q, 0.45)
    observable = np.ones_like(q, bool)
    one, b_one = S.keep_significant(mask, q, observable, GSD, 5.0, 0.45, _cut(0.45), window_px=32)
    with parallel.window_threads(2):
        two, b_two = S.keep_significant(mask, q, observable, GSD, 5.0, 0.45, _cut(0.45), window_px=32,
                                        scr=scratch.Scratch(tmp_path, 0))
    np.testing.assert_array_equal(np.asarray(two), one)
    assert b_two == b_one and b_one.tested > 0  # the correlation length and the tail fit to the last bit
