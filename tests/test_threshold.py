import numpy as np

from changedet.config import DecideConfig
from changedet import threshold as T


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.1, 0.03, 9000), rng.normal(0.8, 0.05, 1000)])
    q = T.quantize(scores.reshape(100, 100), np.ones((100, 100), bool))
    t = T.otsu(T.histogram(q))
    assert 0.3 < t < 0.65


def test_no_change_stays_empty():
    rng = np.random.default_rng(1)
    score = np.clip(rng.normal(0.08, 0.03, (200, 200)), 0, 1)
    mask, thr = T.decide(T.quantize(score, np.ones(score.shape, bool)), DecideConfig(), 0.5)
    assert thr.high >= DecideConfig().min_score
    assert (mask == 1).mean() < 0.001


def test_hysteresis_keeps_weak_pixels_connected_to_strong_ones():
    score = np.zeros((20, 20))
    score[5, 2:10] = 0.5  # weak line
    score[5, 2] = 0.9  # one strong pixel on it
    score[15, 2:10] = 0.5  # weak line without a strong pixel
    q = T.quantize(score, np.ones(score.shape, bool))
    m = T.hysteresis(q, T.Threshold("x", 0.8, 0.8, 0.4))
    assert m[5, 2:10].all() and not m[15].any()


def test_clean_uses_square_metres_and_keeps_nodata():
    mask = np.zeros((60, 60), np.uint8)
    mask[5:8, 5:8] = 1  # 9 px
    mask[20:40, 20:40] = 1
    mask[30, 30] = 0  # a one-pixel hole
    cfg = DecideConfig(open_px=0, close_px=0, min_area_m2=10.0, fill_holes_m2=1.0)
    out = T.clean(mask, cfg, gsd_m=1.0)
    assert out[5:8, 5:8].sum() == 0 and out[30, 30] == 1
    out_coarse = T.clean(mask, cfg, gsd_m=2.0)  # 9 px = 36 m2 now survives
    assert out_coarse[5:8, 5:8].all()
    q = T.quantize(np.zeros((10, 10)), np.zeros((10, 10), bool))
    m, _ = T.decide(q, DecideConfig(), 1.0)
    assert (m == T.NODATA).all()


def test_kittler_illingworth_finds_a_small_wide_mode_next_to_a_large_narrow_one():
    """The usual change histogram: most pixels unchanged (narrow), a few changed (wide)."""
    rng = np.random.default_rng(2)
    scores = np.clip(np.concatenate([rng.normal(0.1, 0.02, 19_000), rng.normal(0.6, 0.12, 1000)]), 0, 1)
    q = T.quantize(scores.reshape(100, 200), np.ones((100, 200), bool))
    t = T.kittler_illingworth(T.histogram(q))
    assert 0.14 < t < 0.4
    mask, thr = T.decide(q, DecideConfig(method="kittler", min_score=0.0, open_px=0, close_px=0, min_area_m2=0,
                                         fill_holes_m2=0), 1.0)
    truth = np.zeros(20_000, bool)
    truth[19_000:] = True
    flagged = mask.ravel() == 1
    assert thr.method == "kittler"
    assert (flagged & truth).sum() / truth.sum() > 0.95 and (flagged & ~truth).sum() < 200


def test_kittler_illingworth_on_a_single_spike_falls_back_to_otsu():
    hist = np.zeros(T.LEVELS + 1)
    hist[20] = 1000
    assert T.kittler_illingworth(hist) == T.otsu(hist)
    assert T.kittler_illingworth(np.zeros(T.LEVELS + 1)) == 1.0


def _line_levels(r: np.ndarray) -> np.ndarray:
    """Line evidence in multiples of its 90th percentile -> quantised levels, as score_pass stores them."""
    return T.quantize(r / (1.0 + r), np.ones(r.shape, bool))


def test_line_mask_keeps_long_lines_and_drops_short_streaks():
    r = np.full((120, 160), 0.5, np.float32)
    r[40:42, 20:100] = 12.0  # 40 m at 0.5 m
    r[90:92, 30:42] = 12.0  # 6 m: as long as the segment, like a streak of noise
    mask = np.zeros(r.shape, np.uint8)
    out = T.line_mask(_line_levels(r), mask, DecideConfig(), 0.5)
    assert out[40:42, 22:98].all()
    assert not out[85:97].any()
    assert not out[:38].any() and not out[44:85].any()
    assert not T.line_mask(_line_levels(r), mask, DecideConfig(line_min_ratio=0), 0.5).any()


def test_line_mask_leaves_roofs_alone_and_joins_pieces_of_a_trench():
    r = np.full((120, 160), 0.5, np.float32)
    mask = np.zeros(r.shape, np.uint8)
    mask[20:34, 20:34] = 1  # a roof, with its outline and shadow as lines of evidence, and spikes
    r[17:19, 16:38] = 12.0
    r[35:37, 16:38] = 12.0
    r[26:28, 8:46] = 12.0
    mask[80:83, 20:50] = 1  # a piece of a trench the pixel score found ...
    r[80:83, 20:130] = 12.0  # ... and the rest of it, in line evidence only
    out = T.line_mask(_line_levels(r), mask, DecideConfig(), 0.5)
    assert not out[:60].any()
    assert out[80:83, 52:128].all()
    assert out[80:83, 20:50].all()  # the line overlaps its piece, which it will join
