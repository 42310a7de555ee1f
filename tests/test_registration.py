import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from changedet import registration as R


def textured(seed: int, shape=(192, 192)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((shape[0] + 64, shape[1] + 64))
    for s in (1, 2, 4, 8):
        img += ndimage.gaussian_filter(rng.normal(size=img.shape), s) * s
    return ndimage.gaussian_filter(img, 0.7)


def displaced(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """An 'after' with after(x + dx, y + dy) = img(x, y), cropped like the reference."""
    return ndimage.shift(img, (dy, dx), order=5, mode="reflect")[32:-32, 32:-32]


@settings(max_examples=25, deadline=None)
@given(dx=st.floats(-2.5, 2.5), dy=st.floats(-2.5, 2.5), seed=st.integers(0, 5),
       gain=st.floats(0.7, 1.3), offset=st.floats(-20, 20))
def test_known_subpixel_shift_is_recovered(dx, dy, seed, gain, offset):
    img = textured(seed)
    ref = img[32:-32, 32:-32]
    tgt = displaced(img, dx, dy) * gain + offset
    noise = np.random.default_rng(seed).normal(0, 0.01 * tgt.std(), tgt.shape)
    ox, oy = R.phase_shift(ref, tgt + noise, 100)
    ex, ey, _ = R.refine_lk(ref, tgt + noise, ox, oy)
    assert abs(ex - dx) < 0.1 and abs(ey - dy) < 0.1


def test_phase_shift_sign_convention():
    img = textured(1)
    ref = img[32:-32, 32:-32]
    tgt = img[32 + 3:-32 + 3, 32 + 5:-32 + 5]  # tgt(x) = img(x + 5): a feature sits 5 px to the left
    dx, dy = R.phase_shift(ref, tgt, 10)
    assert (round(dx), round(dy)) == (-5, -3)


def test_resample_applies_the_convention():
    img = textured(2).astype(np.float32)
    ref = img[32:-32, 32:-32]
    tgt = displaced(img, 1.25, -0.5).astype(np.float32)
    box = (10, 10, 100, 120)
    src_box = R.source_box(R.translation(1.25, -0.5), box)
    r0, c0, h, w = src_box
    src = tgt[None, r0:r0 + h, c0:c0 + w]
    out, valid = R.resample(src, np.ones((h, w), bool), src_box, R.translation(1.25, -0.5), box)
    expect = ref[10:110, 10:130]
    assert valid.all()
    assert np.abs(out[0] - expect).mean() < 0.02 * expect.std()


def test_consensus_rejects_outlier_chips():
    good = [R.ChipVector(i, i, 1.5 + 0.01 * (i % 3), -0.7, 0.9) for i in range(8)]
    bad = [R.ChipVector(0, 0, 9.0, 4.0, 0.8), R.ChipVector(0, 0, -6.0, 2.0, 0.5)]
    reg = R.consensus(good + bad)
    assert reg.shift_px == pytest.approx((1.51, -0.7), abs=0.01)
    assert reg.n_tiepoints == 8
    assert 0.6 < reg.confidence < 0.8


def test_consensus_of_unrelated_chips_has_low_confidence():
    rng = np.random.default_rng(0)
    chips = [R.ChipVector(0, 0, *rng.uniform(-20, 20, 2), 0.15) for _ in range(16)]
    assert R.consensus(chips).confidence < 0.3


def test_chip_boxes_stay_inside_small_images():
    boxes = R.chip_boxes((100, 300), 256, 5)
    assert boxes and all(r >= 0 and c >= 0 and r + h <= 100 and c + w <= 300 for r, c, h, w in boxes)
