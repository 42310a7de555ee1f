"""The learned stage: encoder features, the head and its model file, windowed inference, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from changedet import learned, synth, threshold
from changedet.cli import app
from changedet.errors import InputError
from changedet.learned import features as F
from changedet.learned import head as H
from changedet.learned import score as S
from changedet.learned import training as T

SAMPLES = Path(__file__).resolve().parents[1] / "sample_tiles"
runner = CliRunner()


def _random_head(seed: int = 0) -> H.Head:
    rng = np.random.default_rng(seed)
    sizes = (F.N_FEATURES, *H.LAYERS, 1)
    ws = tuple((rng.normal(0, 0.2, (a, b))).astype(np.float32) for a, b in zip(sizes, sizes[1:]))
    bs = tuple(np.zeros(b, np.float32) for b in sizes[1:])
    return H.Head(np.zeros(F.N_FEATURES, np.float32), np.ones(F.N_FEATURES, np.float32), ws, bs, 0.5)


def _windowed(before: np.ndarray, after: np.ndarray, valid: np.ndarray, stretch: F.Stretch, head: H.Head,
              window: int) -> np.ndarray:
    """What the pipeline does: windows on the grid, read with the halo (zeros and invalid past the edge)."""
    h, w = valid.shape
    out = np.zeros((h, w), np.float32)
    for r in range(0, h, window):
        for c in range(0, w, window):
            box = (r, c, min(window, h - r), min(window, w - c))
            pr, pc, ph, pw = F.padded_box(box)
            b = np.zeros((before.shape[0], ph, pw), np.float32)
            a, v = b.copy(), np.zeros((ph, pw), bool)
            r0, c0, r1, c1 = max(pr, 0), max(pc, 0), min(pr + ph, h), min(pc + pw, w)
            b[:, r0 - pr:r1 - pr, c0 - pc:c1 - pc] = before[:, r0:r1, c0:c1]
            a[:, r0 - pr:r1 - pr, c0 - pc:c1 - pc] = after[:, r0:r1, c0:c1]
            v[r0 - pr:r1 - pr, c0 - pc:c1 - pc] = valid[r0:r1, c0:c1]
            xb, xa = F.encoder_input(b, v, stretch), F.encoder_input(a, v, stretch)
            out[r:r + box[2], c:c + box[3]] = S.window_probability(xb, xa, v, head, (r - pr, c - pc, *box[2:]))
    return out


@settings(max_examples=4, deadline=None)
@given(h=st.integers(40, 300), w=st.integers(40, 300), window=st.sampled_from([128, 160, 256]),
       seed=st.integers(0, 1000))
def test_windowed_inference_equals_whole(h, w, window, seed):
    rng = np.random.default_rng(seed)
    before = rng.uniform(0, 255, (3, h, w)).astype(np.float32)
    after = before + rng.normal(0, 30, (3, h, w)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[: h // 5, : w // 4] = False
    stretch = F.Stretch((0, 1, 2), (0.0, 0.0, 0.0), (255.0, 255.0, 255.0))
    head = _random_head(seed)
    whole = S.whole_probability(before, after, valid, stretch, head)
    win = _windowed(before, after, valid, stretch, head, window)
    assert np.array_equal(threshold.quantize(win, valid), threshold.quantize(whole, valid))


def test_rgb_bands_follow_names_then_count():
    assert F.rgb_of(("red", "green", "blue", "nir")) == (0, 1, 2)
    assert F.rgb_of(("B02", "B03", "B04", "B08")) == (2, 1, 0)
    assert F.rgb_of((None,) * 4) == (2, 1, 0)  # B G R NIR, the usual 4-band order
    assert F.rgb_of((None,) * 3) == (0, 1, 2)
    assert F.rgb_of((None,)) == (0, 0, 0)


def test_head_learns_a_separable_rule_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (4000, F.N_FEATURES)).astype(np.float32)
    y = (x[:, 3] + 0.5 * x[:, 200] > 0.3).astype(np.float32)
    hd = H.fit(x, y, np.ones(len(y), np.float32), epochs=10, seed=0, batch=256)
    prob = hd.predict(x.T[:, :, None])[:, 0]
    thr, f1 = H.best_threshold(prob, y)
    assert f1 > 0.9
    again = H.fit(x, y, np.ones(len(y), np.float32), epochs=10, seed=0, batch=256)
    assert all(np.array_equal(a, b) for a, b in zip(hd.weights, again.weights)), "training is deterministic"
    hd = H.Head(hd.mean, hd.scale, hd.weights, hd.biases, thr, {"note": "test"})
    digest = H.save(hd, tmp_path / "m.npz")
    back = H.load(tmp_path / "m.npz")
    assert back.sha256 == digest and back.threshold == pytest.approx(thr)
    assert np.array_equal(back.predict(x[:50].T[:, :, None]), hd.predict(x[:50].T[:, :, None]))
    card = json.loads((tmp_path / "m.card.json").read_text())
    assert card["model_sha256"] == digest and card["note"] == "test"


def test_model_file_with_pickled_objects_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, format=np.array(H.FORMAT), w0=np.array([object()], dtype=object))
    with pytest.raises(InputError, match="bad.npz"):
        H.load(bad)
    (tmp_path / "text.npz").write_text("not a model")
    with pytest.raises(InputError, match="text.npz"):
        H.load(tmp_path / "text.npz")


def test_shipped_model_loads_with_its_card():
    hd = learned.load_model(None)
    assert hd.weights[0].shape[0] == F.N_FEATURES
    assert 0.05 <= hd.threshold <= 0.95
    assert hd.card["encoder"]["sha256"] == T.sha256(str(F.ENCODER_PATH)), "the card names the shipped encoder"
    card = json.loads(H.card_path_of(learned.DEFAULT_MODEL).read_text())
    assert card["model_sha256"] == hd.sha256
    assert card["pairs"], "the card lists the training pairs"


def _manifest(tmp_path: Path, n: int = 2) -> Path:
    pairs = []
    for i in range(n):
        site = tmp_path / f"scene{i}"
        synth.write_scene(synth.make_scene(("camp", "trenches")[i % 2], seed=300 + i, size=160,
                                           shift_px=(0.0, 0.0)), site)
        pairs.append({"before": f"scene{i}/before.tif", "after": f"scene{i}/after.tif",
                      "label": f"scene{i}/truth_class.tif", "group": f"s{i}"})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"pairs": pairs, "augment": 1, "epochs": 3}))
    return path


def test_train_cli_writes_a_model_that_detect_uses(tmp_path):
    manifest = _manifest(tmp_path)
    res = runner.invoke(app, ["-q", "train", str(manifest), "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "m.card.json").read_text())
    assert len(card["pairs"]) == 2
    with open(tmp_path / "scene0" / "before.tif", "rb") as f:
        import hashlib

        assert card["pairs"][0]["before"][0]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    out = tmp_path / "run"
    res = runner.invoke(app, ["-q", "detect", str(SAMPLES / "camp" / "before.tif"), str(SAMPLES / "camp" / "after.tif"),
                              "--out", str(out), "--model", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["sha256"] == card["model_sha256"]
    assert summary["threshold"]["method"] == "model"


def test_polygon_labels_train_like_rasters(tmp_path):
    scene = synth.make_scene("camp", seed=5, size=160, shift_px=(0.0, 0.0))
    synth.write_scene(scene, tmp_path / "s")
    with rasterio.open(tmp_path / "s" / "before.tif") as ds:
        tr, crs = ds.transform, ds.crs
    from rasterio.features import shapes
    from rasterio.warp import transform_geom

    geoms = [transform_geom(crs, "EPSG:4326", g) for g, v in shapes((scene.truth_class > 0).astype(np.uint8),
                                                                   transform=tr) if v == 1]
    gj = tmp_path / "s" / "change.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": g} for g in geoms]}))
    pair = T.LabelledPair((str(tmp_path / "s" / "before.tif"),), (str(tmp_path / "s" / "after.tif"),), str(gj), "s")
    truth = T.read_pair(pair).truth > 0.5
    agree = (truth == (scene.truth_class > 0)).mean()
    assert agree > 0.995


def test_bad_manifest_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("pairs: [{before: a.tif}]\n")
    res = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 2
    assert "m.yaml" in res.output and "before, after and label" in res.output
    assert not (tmp_path / "m.npz").exists()


def test_detect_with_a_missing_model_is_exit_2(tmp_path):
    res = runner.invoke(app, ["detect", str(SAMPLES / "camp" / "before.tif"), str(SAMPLES / "camp" / "after.tif"),
                              "--out", str(tmp_path / "o"), "--model", str(tmp_path / "none.npz")])
    assert res.exit_code == 2 and "none.npz" in res.output
    assert not (tmp_path / "o").exists()


def test_model_disabled_gives_the_classical_run(tmp_path):
    res = runner.invoke(app, ["-q", "detect", str(SAMPLES / "port" / "before.tif"), str(SAMPLES / "port" / "after.tif"),
                              "--out", str(tmp_path / "o"), "--set", "model.enabled=false"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["model"] == {"enabled": False}
    assert summary["threshold"]["method"] != "model"


def test_training_reads_non_finite_values_as_nodata(tmp_path):
    """NaN and ±Inf in a training image are invalid and never reach the features as values."""
    rng = np.random.default_rng(4)
    img = rng.random((3, 40, 40)).astype(np.float32)
    img[1, 5:9, 5:9] = np.nan
    img[:, 20, 20] = np.inf
    path = tmp_path / "f.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=3, dtype="float32") as dst:
        dst.write(img)
    data, valid, *_ = T.read_stack((str(path),))
    assert np.isfinite(data).all()
    assert not valid[5:9, 5:9].any() and not valid[20, 20]
    assert valid.sum() == 40 * 40 - 16 - 1


def test_feature_rows_equal_the_rows_of_the_whole_features():
    # bilinear upsampling of a band of tap rows (with a row of margin) gives the same numbers as
    # upsampling the whole tap, and the head then sees the same blocks of pixels
    from changedet.learned import features as F

    rng = np.random.default_rng(0)
    parts = tuple((rng.standard_normal((c, 88 // f, 60 // f)).astype(np.float32), f)
                  for c, f in ((3, 1), (5, 2), (4, 4)))
    taps = F.PairTaps(parts, (88, 60))
    whole = taps.rows(0, 88)
    for r0, r1 in ((0, 1), (0, 7), (3, 4), (5, 46), (45, 88), (87, 88), (13, 61)):
        assert taps.rows(r0, r1).tobytes() == whole[:, r0:r1].tobytes()
    hd = learned.load_model(None)
    x = rng.standard_normal((F.N_FEATURES, 130, 200)).astype(np.float32)
    assert hd.predict(x).tobytes() == hd.predict_rows(lambda a, b: np.ascontiguousarray(x[:, a:b]), 130, 200).tobytes()


def _random_taps(rng: np.random.Generator, h: int, w: int) -> F.PairTaps:
    """Taps of a (4h, 4w) read box as :func:`~changedet.learned.features.pair_taps` lays them out."""
    parts = []
    for c, f in zip(F.TAP_CHANNELS, (1, 2, 4)):
        parts += [(np.abs(rng.standard_normal((c, h // f, w // f))).astype(np.float32), f),
                  (rng.standard_normal((c, h // f, w // f)).astype(np.float32), f)]
    return F.PairTaps(tuple(parts), (h, w))


def test_head_on_the_taps_equals_the_head_on_the_features():
    # the first layer at each tap's own stride, then upsampled, is the first layer on the upsampled
    # features (bilinear weights sum to one): the same probability up to rounding
    rng = np.random.default_rng(3)
    taps = _random_taps(rng, 64, 88)
    hd = learned.load_model(None)
    on_features = hd.predict(taps.rows(0, 64))
    on_taps = hd.predict_taps(taps)
    assert on_taps.shape == (64, 88)
    assert np.abs(on_taps - on_features).max() < 1e-5
    assert np.abs(on_taps - 0.5).max() > 0.1  # not a constant: the comparison can fail
    # any block of the grid gives the numbers of the whole, whatever the band of rows, up to the
    # last bits of float64 (BLAS sums a single row in another order than a block of rows)
    for cells, band in (((0, 0, 64, 88), 100), ((5, 7, 6, 8), 16384), ((13, 30, 51, 81), 37), ((0, 84, 64, 88), 1)):
        g0, k0, g1, k1 = cells
        assert np.abs(hd.predict_taps(taps, cells, band) - on_taps[g0:g1, k0:k1]).max() < 1e-12


def test_head_on_the_taps_around_a_block_equals_the_head_on_the_whole_taps():
    # the taps around a block (one coarsest cell more on each side, each tap cut on its own grid)
    # give the head the same rows to upsample: the numbers of the whole taps, and nothing of the
    # whole is needed outside them. Up to the last bits of float64: the first layer's products have
    # as many rows as the taps, and BLAS may sum a row differently in a matrix of another height
    # (OpenBLAS 0.3.31 on AMD EPYC: 4e-16 at 6 % of the cells of the first block)
    rng = np.random.default_rng(6)
    taps = _random_taps(rng, 96, 112)
    hd = _random_head(7)
    assert np.abs(hd.predict_taps(taps) - 0.5).max() > 0.05  # not a constant: the comparisons can fail
    for cells in ((47, 47, 73, 90), (0, 0, 10, 13), (5, 9, 96, 112), (40, 3, 41, 4), (0, 0, 96, 112)):
        sub = taps.around(cells)
        assert sub.shape[0] < 96 or cells[0] < 8 or cells[2] > 88
        on_whole = hd.predict_taps(taps, cells)
        assert np.abs(hd.predict_taps(sub, cells) - on_whole).max() < 1e-12
        assert sub.around(cells).shape == sub.shape and sub.around(cells).origin == sub.origin
    with pytest.raises(ValueError, match="not within"):
        taps.around((40, 3, 97, 4))
    fb = tuple(rng.standard_normal((c, 96 // f, 112 // f)).astype(np.float32) for c, f in zip(F.TAP_CHANNELS, (1, 2, 4)))
    fa = tuple(rng.standard_normal(t.shape).astype(np.float32) for t in fb)
    cells = (47, 47, 73, 90)
    cut, whole = hd.predict_taps(F.taps_of(fb, fa, cells), cells), hd.predict_taps(F.taps_of(fb, fa), cells)
    assert np.abs(cut - whole).max() < 1e-12


def test_window_probability_is_the_crop_of_the_read_box():
    rng = np.random.default_rng(4)
    h, w = 224, 288
    xb = rng.normal(0, 0.5, (3, h, w)).astype(np.float32)
    xa = (xb + rng.normal(0, 0.3, (3, h, w))).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[:40, :30] = False
    head = _random_head(5)
    whole = S.upsample(head.predict_taps(S.pair_taps(xb, xa)).astype(np.float32))  # the head on every cell
    whole[~valid] = 0.0
    for r, c, bh, bw in ((0, 0, h, w), (16, 32, 100, 77), (200, 4, 24, 3), (0, 280, 224, 8)):
        part = S.window_probability(xb, xa, valid, head, (r, c, bh, bw))
        crop = whole[r:r + bh, c:c + bw]
        assert np.abs(part - crop).max() < 1e-6
        assert np.array_equal(threshold.quantize(part, valid[r:r + bh, c:c + bw]),
                              threshold.quantize(crop, valid[r:r + bh, c:c + bw]))
    with pytest.raises(ValueError, match="grid"):
        S.window_probability(xb, xa, valid, head, (2, 0, 8, 8))
