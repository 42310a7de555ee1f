import numpy as np
import pytest

from changedet import differencing as D
from changedet.arrays import crop
from changedet.config import DecideConfig, MeasureConfig


def pair(seed=0, change=True):
    rng = np.random.default_rng(seed)
    before = rng.uniform(200, 800, size=(3, 1, 1)) + rng.normal(0, 40, size=(3, 160, 160))
    before = before.astype(np.float32)
    after = before + rng.normal(0, 5, before.shape).astype(np.float32)
    if change:
        after[:, 60:80, 60:90] += 300
    return before, after


def test_score_separates_change_from_noise():
    b, a = pair()
    noise = D.fit_noise(b.reshape(3, -1), a.reshape(3, -1))
    s = D.change_score(b, a, np.ones(b.shape[1:], bool), noise, MeasureConfig())
    assert s[62:78, 62:88].min() > 0.6
    assert np.percentile(s[:40, :40], 99) < 0.3
    assert s.dtype == np.float32 and s.min() >= 0 and s.max() <= 1


def test_windowed_score_equals_whole_score():
    b, a = pair(1)
    cfg = MeasureConfig()
    noise = D.fit_noise(b.reshape(3, -1), a.reshape(3, -1))
    valid = np.ones(b.shape[1:], bool)
    whole = D.change_score(b, a, valid, noise, cfg)
    halo = D.halo_px(cfg)
    r, c, h, w = 40, 50, 64, 64
    win = D.change_score(b[:, r - halo:r + h + halo, c - halo:c + w + halo], a[:, r - halo:r + h + halo, c - halo:c + w + halo],
                         valid[r - halo:r + h + halo, c - halo:c + w + halo], noise, cfg)
    assert np.allclose(crop(win, halo), whole[r:r + h, c:c + w], atol=1e-5)


def test_invalid_pixels_do_not_raise_the_score_of_their_neighbours():
    b, a = pair(2, change=False)
    valid = np.ones(b.shape[1:], bool)
    valid[:, :20] = False
    a[:, :, :20] = 0  # what a read past the edge of after gives
    noise = D.fit_noise(b[:, :, 20:].reshape(3, -1), a[:, :, 20:].reshape(3, -1))
    s = D.change_score(b, a, valid, noise, MeasureConfig())
    assert s[:, 20:26].max() < 0.35
    assert (s[:, :20] == 0).all()


def test_brightness_weight_discounts_shadow_but_not_a_new_material():
    rng = np.random.default_rng(5)
    before = (np.array([300.0, 500.0, 400.0])[:, None, None] + rng.normal(0, 5, (3, 60, 60))).astype(np.float32)
    after = before + rng.normal(0, 5, before.shape).astype(np.float32)
    after[:, 10:30, 10:30] *= 0.5  # a shadow: same spectrum, half as bright
    after[:, 35:55, 35:55] += np.array([150.0, -250.0, -50.0], np.float32)[:, None, None]  # a new material
    noise = D.fit_noise(before.reshape(3, -1), after.reshape(3, -1))
    plain = D.cva_score(before, after, noise, 4.0)
    discounted = D.cva_score(before, after, noise, 4.0, brightness_weight=0.1)
    assert plain[12:28, 12:28].min() > 0.9
    assert discounted[12:28, 12:28].max() < 0.5
    assert discounted[37:53, 37:53].min() > 0.9
    one_band = D.cva_score(before[:1], after[:1], noise, 4.0, brightness_weight=0.1)
    assert one_band[12:28, 12:28].min() > 0.9  # with one band, brightness is all there is


def test_tolerance_absorbs_a_one_pixel_misalignment_of_edges():
    rng = np.random.default_rng(6)
    before = rng.uniform(0, 1000, (3, 80, 80)).astype(np.float32)
    before = np.stack([np.kron(b[::4, ::4], np.ones((4, 4), np.float32)) for b in before])  # blocky texture
    after = np.roll(before, 1, axis=2) + rng.normal(0, 3, before.shape).astype(np.float32)
    after[:, 40:60, 40:60] = 3000  # a real change
    noise = D.NoiseModel((3.0, 3.0, 3.0), 3.0)
    strict = D.cva_score(before, after, noise, 4.0)[2:-2, 2:-2]
    tolerant = D.cva_score(before, after, noise, 4.0, tolerance_px=1)[2:-2, 2:-2]
    assert (strict > 0.5).mean() > 0.1
    assert (tolerant[:30, :30] > 0.5).mean() < 0.01
    assert tolerant[40:56, 40:56].min() > 0.9


def test_windowed_score_equals_whole_score_with_tolerance_and_brightness_weight():
    b, a = pair(7)
    cfg = MeasureConfig(tolerance_px=2, brightness_weight=0.3)
    noise = D.fit_noise(b.reshape(3, -1), a.reshape(3, -1))
    valid = np.ones(b.shape[1:], bool)
    whole = D.change_score(b, a, valid, noise, cfg)
    halo = D.halo_px(cfg)
    r, c, h, w = 40, 50, 64, 64
    win = D.change_score(b[:, r - halo:r + h + halo, c - halo:c + w + halo],
                         a[:, r - halo:r + h + halo, c - halo:c + w + halo],
                         valid[r - halo:r + h + halo, c - halo:c + w + halo], noise, cfg)
    assert np.allclose(crop(win, halo), whole[r:r + h, c:c + w], atol=1e-5)


def test_tolerance_keeps_the_full_width_of_a_new_thin_object():
    """A new 3 px wide line must not be eroded: its edge pixels match the ground one way only."""
    rng = np.random.default_rng(10)
    before = (np.array([400.0, 500.0, 300.0])[:, None, None] + rng.normal(0, 3, (3, 40, 40))).astype(np.float32)
    after = before + rng.normal(0, 3, before.shape).astype(np.float32)
    after[:, 5:35, 18:21] -= 200  # a dark trench, 3 px wide
    noise = D.NoiseModel((4.2, 4.2, 4.2), 4.2)
    score = D.cva_score(before, after, noise, 4.0, tolerance_px=1)
    assert score[8:32, 18:21].min() > 0.9
    assert score[8:32, :16].max() < 0.5 and score[8:32, 23:].max() < 0.5


# --------------------------------------------------------------------------- line evidence


def faint_line_pair(seed=0, amplitude=15.0, size=160):
    """Four bands of smooth texture with pixel noise 10, and in ``after`` a zig-zag line 2 px wide whose
    visible bands brighten by ``amplitude`` and near-infrared darkens by four times that (fresh soil
    cut into vegetation): luminance darkens by a quarter of ``amplitude``, and the pixel score stays
    below any threshold."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.normal(0, 60, (size, size)).astype(np.float32), (0, 0), 4)
    clean = np.stack([500 + k * base for k in (1.0, 0.8, 1.2, 0.9)]).astype(np.float32)
    before = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    after = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    line = np.zeros((size, size), np.uint8)
    pts = np.array([[20, 40], [60, 70], [90, 40], [130, 75]], np.int32)
    cv2.polylines(line, [pts], False, 1, thickness=2)
    line = line.astype(bool)
    after[:3, line] += amplitude
    after[3, line] -= 4 * amplitude
    return before, after, line


def _calibrated(b, a):
    noise = D.fit_noise(b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1))
    sig, t90 = D.fit_line_noise([(b, a, np.ones(b.shape[1:], bool))], noise.lum_sigma, 11)
    return D.NoiseModel(noise.band_sigma, noise.lum_sigma, sig, t90)


def _far_from(mask, px):
    import cv2

    return ~cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


def test_line_evidence_finds_a_line_the_pixel_score_cannot():
    b, a, line = faint_line_pair()
    noise = _calibrated(b, a)
    valid = np.ones(b.shape[1:], bool)
    pixel = D.change_score(b, a, valid, noise, MeasureConfig())
    ln = D.line_score(b, a, valid, noise, 11)
    inner = line & (np.arange(160)[None, :] > 25) & (np.arange(160)[None, :] < 125)  # away from the ends
    assert np.median(pixel[inner]) < DecideConfig().min_score  # lost in pixel noise
    assert np.median(ln[inner]) > 0.8  # four times the pair's 90th percentile, twice no change's 99th
    far = _far_from(line, 8)
    far[:12], far[-12:], far[:, :12], far[:, -12:] = False, False, False, False
    assert np.percentile(ln[far], 99) < 0.75  # no change: about twice the 90th percentile at the 99th
    assert ln.dtype == np.float32 and ln.min() >= 0 and ln.max() <= 1


def test_no_line_evidence_at_a_broad_change_nor_at_an_unchanged_road_in_a_greener_field():
    rng = np.random.default_rng(3)
    b = (400 + rng.normal(0, 10, (3, 120, 160))).astype(np.float32)
    a = (b + rng.normal(0, 10, b.shape)).astype(np.float32)
    a[:, 30:90, 10:60] += 120  # a new clearing: its edges differ from one side only
    a[:, :, 90:] += 80  # a field that greened, with a road 2 px wide through it that did not change
    a[:, :, 124:126] -= 80
    sig, t90 = D.fit_line_noise([(b[:, :, 62:86], a[:, :, 62:86], np.ones((120, 24), bool))], 14.0, 11)
    noise = D.NoiseModel((14.0,) * 3, 14.0, sig, t90)
    ln = D.line_score(b, a, np.ones((120, 160), bool), noise, 11)
    clearing = np.zeros((120, 160), bool)
    clearing[25:95, 5:65] = True
    for r, c in ((30, 10), (30, 59), (89, 10), (89, 59)):  # a corner is a short wedge of line evidence
        clearing[r - 8:r + 9, c - 8:c + 9] = False
    # 99 % of the pixels stay below the level down to which line_mask grows a line
    grow = DecideConfig().line_min_ratio / 2
    assert np.percentile(ln[clearing], 99) < grow / (1 + grow)
    assert np.percentile(ln[15:105, 121:129], 99) < grow / (1 + grow)  # the road and beside it


def test_windowed_line_score_equals_whole_line_score():
    b, a, _ = faint_line_pair(2)
    noise = _calibrated(b, a)
    cfg = MeasureConfig()
    valid = np.ones(b.shape[1:], bool)
    whole = D.line_score(b, a, valid, noise, cfg.line_length_px)
    halo = D.halo_px(cfg)
    r, c, h, w = 50, 40, 60, 70
    win = D.line_score(b[:, r - halo:r + h + halo, c - halo:c + w + halo], a[:, r - halo:r + h + halo, c - halo:c + w + halo],
                       valid[r - halo:r + h + halo, c - halo:c + w + halo], noise, cfg.line_length_px)
    np.testing.assert_allclose(crop(win, halo), whole[r:r + h, c:c + w], atol=1e-5)


def test_line_evidence_off_without_calibration_or_length():
    b, a, _ = faint_line_pair(4)
    valid = np.ones(b.shape[1:], bool)
    assert not D.line_score(b, a, valid, D.NoiseModel((10.0,) * 4, 10.0), 11).any()
    assert not D.line_score(b, a, valid, _calibrated(b, a), 0).any()


@pytest.mark.parametrize("n_bands", [1, 2, 3, 4, 5])
def test_line_z2_is_the_squared_line_contrast_bit_for_bit(n_bands):
    """The grouped, in-place line_z2 gives what squaring line_contrast band by band gives."""
    rng = np.random.default_rng(n_bands)
    diff = rng.normal(0, 5, (n_bands, 83, 121)).astype(np.float32)
    diff[:, 30:33, :] += 20  # a line of change
    sig = np.linspace(2.0, 4.0, n_bands)
    want = np.zeros(diff.shape[1:], np.float32)
    for k in range(D.LINE_ORIENTATIONS):
        acc = np.zeros(diff.shape[1:], np.float32)
        for band, s in zip(diff, sig.astype(np.float32)):
            c = D.line_contrast(band, 11, k) / s
            acc += c * c
        np.maximum(want, acc / np.float32(n_bands), out=want)
    assert np.array_equal(D.line_z2(diff, sig, 11), want)


@pytest.mark.parametrize("tolerance_px", [1, 2])
@pytest.mark.parametrize("brightness_weight", [1.0, 0.3])
def test_tolerant_cva_both_ways_bit_for_bit(tolerance_px, brightness_weight):
    """Each offset's comparison serves both directions: the same numbers as two separate searches."""
    rng = np.random.default_rng(7)
    before = rng.normal(500, 80, (4, 47, 65)).astype(np.float32)
    after = (before + rng.normal(0, 20, before.shape)).astype(np.float32)
    after[:, 10:16, 20:27] += 300
    sigma = np.array([20.0, 25.0, 30.0, 35.0])
    want = np.maximum(D._tolerant_z2(before, after, sigma, brightness_weight, tolerance_px),
                      D._tolerant_z2(after, before, sigma, brightness_weight, tolerance_px))
    got = D._tolerant_z2_both(before, after, sigma, brightness_weight, tolerance_px)
    assert np.array_equal(got, want)
