import numpy as np
import pytest

from changedet.config import NormalizeConfig
from changedet.radiometry import apply, fit_histogram, fit_linear, fit_normalization


def test_gain_offset_recovered_despite_changed_pixels():
    rng = np.random.default_rng(0)
    before = rng.uniform(100, 2000, size=(3, 50_000))
    gains, offsets = np.array([1.2, 0.8, 1.05]), np.array([-30.0, 55.0, 0.0])
    after = (before - offsets[:, None]) / gains[:, None] + rng.normal(0, 3, before.shape)
    after[:, :5000] = rng.uniform(3000, 4000, size=(3, 5000))  # 10 % changed pixels
    fit = fit_linear(before, after, NormalizeConfig())
    assert np.allclose(fit.gains, gains, rtol=0.01)
    assert np.allclose(fit.offsets, offsets, atol=10)
    assert 40_000 <= fit.n_pixels <= 46_000
    mapped = apply(after[:, None, 5000:], fit)[:, 0]
    assert np.abs(mapped - before[:, 5000:]).mean() < 10


def test_method_none_is_identity():
    x = np.ones((2, 100))
    fit = fit_linear(x, x * 3, NormalizeConfig(method="none"))
    assert fit.gains == (1.0, 1.0) and fit.offsets == (0.0, 0.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        fit_linear(np.ones((2, 10)), np.ones((3, 10)), NormalizeConfig())


def test_histogram_matching_undoes_a_monotone_non_linear_response():
    rng = np.random.default_rng(3)
    before = rng.uniform(50, 1000, size=(2, 40_000))
    after = np.stack([np.sqrt(before[0]) * 10, (before[1] / 1000) ** 2 * 800 + 20])  # gamma-like responses
    fit = fit_histogram(before, after)
    assert fit.method == "histogram" and fit.n_pixels == 40_000
    mapped = apply(after[:, None, :], fit)[:, 0]
    assert np.abs(mapped - before).max() < 0.02 * 950  # within the spacing of the 257 quantiles
    assert fit.to_json()["n_quantiles"] == 257
    linear = fit_linear(before, after, NormalizeConfig())
    assert np.abs(apply(after[:, None, :], linear)[:, 0] - before).mean() > 5 * np.abs(mapped - before).mean()


def test_the_configured_method_is_used():
    rng = np.random.default_rng(4)
    before = rng.uniform(0, 100, size=(1, 1000))
    assert fit_normalization(before, before * 2, NormalizeConfig(method="histogram")).method == "histogram"
    assert fit_normalization(before, before * 2, NormalizeConfig()).method == "linear-rma"
    assert fit_normalization(before, before * 2, NormalizeConfig(method="none")).method == "none"


def _mixed_pixels(rng, n):
    """(4, n) B G R NIR reflectance-like pixels: a mix of bare soil and vegetation, and the mix fraction."""
    soil = np.array([0.12, 0.16, 0.2, 0.26])[:, None]
    grass = np.array([0.04, 0.09, 0.05, 0.42])[:, None]
    f = rng.uniform(0, 1, n)
    return (1 - f) * soil * rng.uniform(0.8, 1.2, n) + f * grass * rng.uniform(0.8, 1.2, n), f


def test_vegetation_tint_is_normalized_away():
    rng = np.random.default_rng(8)
    before, f = _mixed_pixels(rng, 30_000)
    after = before.copy()
    after[3] *= 1 + 0.15 * f  # greener: more NIR where there is vegetation
    after[1] *= 1 + 0.07 * f
    after = after * np.array([1.1, 0.9, 1.2, 0.8])[:, None] + 0.01
    after += rng.normal(0, 0.001, after.shape)
    plain = fit_linear(before, after, NormalizeConfig(by_vegetation=False))
    veg = fit_linear(before, after, NormalizeConfig())
    assert plain.method == "linear-rma" and veg.method == "linear-vegetation"
    assert "vegetation" in veg.to_json()
    resid = lambda fit: np.abs(apply(after[:, None], fit, before[:, None])[:, 0] - before)[3]  # noqa: E731
    assert np.percentile(resid(veg), 95) < 0.3 * np.percentile(resid(plain), 95)
    assert np.percentile(resid(veg), 95) < 0.01


def test_implausible_vegetation_gains_fall_back_to_the_plain_fit():
    """NIR four times as bright on full vegetation is not a season: the plain fit is kept."""
    rng = np.random.default_rng(9)
    before, f = _mixed_pixels(rng, 30_000)
    after = before.copy()
    after[3] *= 1 + 3.0 * f
    after += rng.normal(0, 0.001, after.shape)
    fit = fit_linear(before, after, NormalizeConfig())
    assert fit.method == "linear-rma" and fit.veg_gains == ()
    assert all(g > 0 for g in fit.gains)
