"""The learned stage by bands of windows (encoder cut at stride 4) equals it window by window."""

from __future__ import annotations

import numpy as np
import pytest

from changedet.learned import bands as B
from changedet.learned import features as F
from changedet.learned import head as H
from changedet.learned import score as S

from .test_learned import _random_head


def _scene(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xb = rng.normal(0, 0.5, (3, h, w)).astype(np.float32)
    xa = (xb + rng.normal(0, 0.3, (3, h, w))).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[: h // 5, : w // 4] = False
    xb[:, ~valid] = 0.0
    xa[:, ~valid] = 0.0
    return xb, xa, valid


def _reader(xb: np.ndarray, xa: np.ndarray, valid: np.ndarray, calls: list[B.Box]) -> B.Inputs:
    """Boxes of the scene, 0 and invalid past its edge (what the pipeline's reading gives)."""
    h, w = valid.shape

    def inputs(box: B.Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append(box)
        r, c, bh, bw = box
        out = [np.zeros((3, bh, bw), np.float32), np.zeros((3, bh, bw), np.float32), np.zeros((bh, bw), bool)]
        r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + bh, h), min(c + bw, w)
        if r0 < r1 and c0 < c1:
            for o, a in zip(out, (xb, xa, valid)):
                o[..., r0 - r:r1 - r, c0 - c:c1 - c] = a[..., r0:r1, c0:c1]
        return out[0], out[1], out[2]

    return inputs


def _serial(fn, items):  # type: ignore[no-untyped-def]
    return map(fn, items)


def test_encoder_parts_compose_to_the_encoder():
    x = np.random.default_rng(1).normal(0, 0.5, (3, 96, 144)).astype(np.float32)
    whole = F.encode(x)
    parts = F.encode_from_s4(F.encode_s4(x))
    assert len(parts) == len(whole) == 3
    assert all(np.array_equal(a, b) for a, b in zip(parts, whole)), "the same graph: the same bits"


def test_stride4_tap_of_a_tile_is_the_crop_of_the_whole():
    x = np.random.default_rng(2).normal(0, 0.5, (3, 160, 192)).astype(np.float32)
    whole = F.encode_s4(x)
    m = F.S4_HALO_PX
    for r, c, h, w in ((32, 48, 64, 96), (16, 16, 128, 160), (64, 0, 32, 32)):
        r0, c0 = max(0, r - m), max(0, c - m)
        if r - m < 0 or c - m < 0 or r + h + m > 160 or c + w + m > 192:
            continue
        tile = F.encode_s4(x[:, r - m:r + h + m, c - m:c + w + m])
        q = m // F.HEAD_STRIDE
        got = tile[:, q:q + h // 4, q:q + w // 4]
        assert np.array_equal(got, whole[:, r // 4:(r + h) // 4, c // 4:(c + w) // 4])


@pytest.mark.parametrize("window, tile_px, drop, band_px, arena",
                         [(128, 160, (), 6144, True), (128, 96, (1, 4, 5), 6144, False), (160, 224, (0, 2), 320, True)])
def test_bands_equal_window_by_window(window, tile_px, drop, band_px, arena):
    h, w = 300, 420
    xb, xa, valid = _scene(window, h, w)
    head = _random_head(3)
    boxes = [(r, c, min(window, h - r), min(window, w - c)) for r in range(0, h, window) for c in range(0, w, window)]
    boxes = [b for i, b in enumerate(boxes) if i not in drop]  # a cascade's gaps
    calls: list[B.Box] = []
    inputs = _reader(xb, xa, valid, calls)
    pairs = list(B.window_probabilities(boxes, inputs, head, _serial, lambda p, v: (p.copy(), v.copy()),
                                        tile_px=tile_px, tile_rows=tile_px, band_px=band_px, arena=arena))
    got = dict(pairs)
    assert len(pairs) == len(got) == len(boxes) and set(got) == set(boxes)
    for box, (p, v) in got.items():
        pbox = F.padded_box(box)
        pb, pa, pv = inputs(pbox)
        r, c, bh, bw = box
        want = S.window_probability(pb, pa, pv, head, (r - pbox[0], c - pbox[1], bh, bw))
        assert p.shape == (bh, bw)
        assert np.array_equal(v, valid[r:r + bh, c:c + bw])
        assert np.array_equal(p, want), f"window {box}: max difference {np.abs(p - want).max()}"
    assert np.abs(got[boxes[-1]][0] - 0.5).max() > 0.05  # not a constant: the comparison can fail


def test_bands_make_each_tile_row_once():
    h, w, window, tile_px = 512, 256, 128, 128
    xb, xa, valid = _scene(0, h, w)
    boxes = [(r, c, window, window) for r in range(0, h, window) for c in range(0, w, window)]
    calls: list[B.Box] = []
    list(B.window_probabilities(boxes, _reader(xb, xa, valid, calls), _random_head(), _serial,
                                lambda p, v: None, tile_px=tile_px, tile_rows=tile_px))
    m = F.S4_HALO_PX
    made = sum((bh - 2 * m) * (bw - 2 * m) for _, _, bh, bw in calls)
    first, last = F.padded_box(boxes[0]), F.padded_box(boxes[-1])
    span = (last[0] + last[2] - first[0]) * (last[1] + last[3] - first[1])
    assert made == span, "every pixel of the read boxes' union once, shared rows carried over"


def test_tile_side_on_the_grid():
    with pytest.raises(ValueError, match="multiples of 16"):
        list(B.window_probabilities([(0, 0, 128, 128)], None, _random_head(), _serial,  # type: ignore[arg-type]
                                    lambda p, v: p, tile_px=100))


def test_workers_give_the_same_numbers():
    from changedet import parallel

    h, w, window = 400, 330, 128
    xb, xa, valid = _scene(7, h, w)
    head = _random_head(1)
    boxes = [(r, c, min(window, h - r), min(window, w - c)) for r in range(0, h, window) for c in range(0, w, window)]
    serial = list(B.window_probabilities(boxes, _reader(xb, xa, valid, []), head, _serial,
                                         lambda p, v: p.copy(), tile_px=112))
    pooled = list(B.window_probabilities(boxes, _reader(xb, xa, valid, []), head,
                                         lambda fn, items: parallel.ordered_map(fn, items, 2),
                                         lambda p, v: p.copy(), tile_px=112))
    assert [b for b, _ in serial] == [b for b, _ in pooled] and len(serial) == len(boxes)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(serial, pooled))


def test_a_window_is_two_jobs_after_its_tiles():
    band = B.S4Band(-192, 1024, 2, 1408)
    band.move_to(-192, 1408)
    boxes = [(0, 0, 1024, 1024), (0, 1024, 640, 640)]
    jobs = B._band_jobs(band, boxes, set(), 0, 256)
    kinds = [k for k, _, _ in jobs]
    assert kinds.count("before") == kinds.count("window") == 2 and kinds.count("tile") == 12
    for i, (kind, box, needs) in enumerate(jobs):
        if kind == "before":
            assert jobs[i + 1] == ("window", box, needs), "the after date's job right behind"
            made = {b for k, b, _ in jobs[:i] if k == "tile"}
            assert needs and set(needs) <= made, "every tile it reads made before"


def test_a_failing_encoder_is_raised_not_waited_for(monkeypatch):
    from changedet import parallel

    h, w, window = 256, 256, 128
    xb, xa, valid = _scene(3, h, w)
    boxes = [(r, c, window, window) for r in range(0, h, window) for c in range(0, w, window)]
    calls = []

    def failing(f4, threads=None, arena=False):  # type: ignore[no-untyped-def]
        calls.append(f4.shape)
        raise MemoryError("no room for the second part")

    monkeypatch.setattr(B, "encode_from_s4", failing)
    with pytest.raises(MemoryError, match="no room"):
        list(B.window_probabilities(boxes, _reader(xb, xa, valid, []), _random_head(),
                                    lambda fn, items: parallel.ordered_map(fn, items, 2), lambda p, v: p))
    assert calls


def test_shipped_parts_are_the_split_of_the_shipped_encoder(tmp_path):
    pytest.importorskip("onnx")
    import hashlib

    from changedet.learned import encoder_parts

    digests = encoder_parts.split(F.ENCODER_PATH, tmp_path)
    for path in (F.ENCODER_S4_PATH, F.ENCODER_FROM_S4_PATH):
        assert digests[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
