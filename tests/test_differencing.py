import numpy as np

from changedet import differencing as D
from changedet.arrays import crop
from changedet.config import MeasureConfig


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
