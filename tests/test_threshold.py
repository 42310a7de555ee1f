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


# --- by windows: the same decision as whole arrays

import cv2  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from changedet import scratch  # noqa: E402


def _whole_cut(q: np.ndarray, thr: T.Threshold, params: DecideConfig, gsd_m: float) -> np.ndarray:
    """The decision on whole arrays, as it was written before it went by windows."""
    valid = q != T.NODATA
    low = ((q > thr.low * T.LEVELS) & valid).astype(np.uint8)
    n, labels = cv2.connectedComponents(low, connectivity=8, ltype=cv2.CV_32S)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[(q > thr.high * T.LEVELS) & valid])] = True
    keep[0] = False
    out = keep[labels].astype(np.uint8)
    if params.open_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, T._disk(params.open_px))
    if params.close_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, T._disk(params.close_px))
    max_px = int(params.fill_holes_m2 / gsd_m ** 2)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((out == 0).astype(np.uint8), connectivity=4,
                                                          ltype=cv2.CV_32S)
    h, w = out.shape
    x, y, bw, bh = (stats[:, i] for i in range(4))
    small = (stats[:, 4] <= max_px) & ~((x == 0) | (y == 0) | (x + bw == w) | (y + bh == h))
    small[0] = False
    out = (out.astype(bool) | small[labels]).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8, ltype=cv2.CV_32S)
    keep = stats[:, 4] >= int(np.ceil(params.min_area_m2 / gsd_m ** 2))
    keep[0] = False
    return keep[labels].astype(np.uint8)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(8, 140), w=st.integers(8, 140), window=st.sampled_from([8, 30, 64]),
       open_px=st.integers(0, 2), close_px=st.integers(0, 2), seed=st.integers(0, 10_000))
def test_the_decision_by_windows_equals_the_whole_array_one(h, w, window, open_px, close_px, seed):
    rng = np.random.default_rng(seed)
    score = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    score = (score - score.min()) / max(float(score.max() - score.min()), 1e-6)
    valid = rng.random((h, w)) > 0.02
    q = T.quantize(score, valid)
    params = DecideConfig(open_px=open_px, close_px=close_px, fill_holes_m2=6.0, min_area_m2=5.0)
    thr = T.Threshold("model", 0.7, 0.7, 0.7 * params.hysteresis_low_ratio)
    want = _whole_cut(q, thr, params, 1.0)
    np.testing.assert_array_equal(T.cut(q, thr, params, 1.0, window), want)
    mask, _ = T.decide(q, params, 1.0, 0.7, window_px=window)
    np.testing.assert_array_equal(mask, np.where(valid, want, T.NODATA))


def test_the_decision_through_memory_maps(tmp_path):
    rng = np.random.default_rng(3)
    score = cv2.GaussianBlur(rng.random((300, 280)).astype(np.float32), (0, 0), 2.0)
    q = T.quantize((score - score.min()) / (score.max() - score.min()), np.ones(score.shape, bool))
    params = DecideConfig(min_area_m2=4.0, fill_holes_m2=4.0)
    whole, thr = T.decide(q, params, 1.0)
    mapped, thr2 = T.decide(q, params, 1.0, window_px=64, scr=scratch.Scratch(tmp_path, 0))
    assert scratch.is_mapped(mapped) and thr2 == thr
    np.testing.assert_array_equal(np.asarray(mapped), whole)
    assert 0 < (whole == 1).mean() < 1


@pytest.mark.parametrize("window", [16, 40])
def test_line_mask_by_windows_and_memory_maps_equals_one_window(tmp_path, window):
    r = np.full((120, 160), 0.5, np.float32)
    mask = np.zeros(r.shape, np.uint8)
    mask[20:34, 20:34] = 1  # a roof with lines along it
    r[17:19, 16:38] = 12.0
    r[26:28, 8:46] = 12.0
    mask[80:83, 20:50] = 1  # a trench crossing window seams, found in part by the pixel score
    r[80:83, 20:130] = 12.0
    r[50:100, 140:142] = 12.0  # and one in line evidence only
    r[100:102, 10:16] = 12.0  # a streak
    whole = T.line_mask(_line_levels(r), mask, DecideConfig(), 0.5, window_px=4096)
    got = T.line_mask(_line_levels(r), mask, DecideConfig(), 0.5, window_px=window, scr=scratch.Scratch(tmp_path, 0))
    assert scratch.is_mapped(got) and whole[80:83, 52:128].all() and whole[52:98, 140:142].all()
    np.testing.assert_array_equal(np.asarray(got), whole)


def test_the_decision_and_line_mask_on_window_threads_equal_one_thread(tmp_path):
    from changedet import parallel

    rng = np.random.default_rng(5)
    score = cv2.GaussianBlur(rng.random((260, 300)).astype(np.float32), (0, 0), 2.0)
    q = T.quantize((score - score.min()) / (score.max() - score.min()), rng.random(score.shape) > 0.01)
    params = DecideConfig(open_px=1, close_px=1, min_area_m2=4.0, fill_holes_m2=6.0)
    r = np.full(q.shape, 0.5, np.float32)
    r[80:83, 20:230] = 12.0  # a trench across many windows
    r[30:250, 140:142] = 12.0
    want, thr = T.decide(q, params, 1.0, 0.8, window_px=32)
    want_lines = T.line_mask(_line_levels(r), want, DecideConfig(), 0.5, window_px=32)
    with parallel.window_threads(2):
        got, thr2 = T.decide(q, params, 1.0, 0.8, window_px=32, scr=scratch.Scratch(tmp_path, 0))
        got_lines = T.line_mask(_line_levels(r), got, DecideConfig(), 0.5, window_px=32,
                                scr=scratch.Scratch(tmp_path, 0))
    assert thr2 == thr and 0 < (want == 1).mean() < 1 and want_lines.any()
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(got_lines), want_lines)
