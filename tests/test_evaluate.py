import json

import numpy as np
import pytest
import rasterio

from changedet.errors import InputError
from changedet.evaluate import evaluate, load_truth, object_scores, pixel_scores


def test_pixel_scores_known_answer():
    pred = np.array([[1, 1, 0, 0]], bool)
    truth = np.array([[1, 0, 1, 0]], bool)
    s = pixel_scores(pred, truth)
    assert (s.tp, s.fp, s.fn, s.tn) == (1, 1, 1, 1)
    assert s.precision == s.recall == s.f1 == 0.5 and s.iou == pytest.approx(1 / 3)
    valid = np.array([[1, 0, 1, 1]], bool)
    assert pixel_scores(pred, truth, valid).fp == 0


def test_pixel_scores_empty_conventions():
    z = np.zeros((3, 3), bool)
    s = pixel_scores(z, z)
    assert s.precision == s.recall == s.f1 == 1.0
    t = z.copy()
    t[1, 1] = True
    s = pixel_scores(z, t)
    assert s.precision == 1.0 and s.recall == 0.0 and s.f1 == 0.0


def test_object_scores_recall_type_precision_departed():
    truth = np.zeros((10, 10), int)
    truth[1:3, 1:3] = 1  # hut, found and typed right
    truth[5:7, 1:3] = 2  # vessel departed, found as departed vessel
    truth[5:7, 6:8] = 3  # trench, missed
    pred = np.zeros((10, 10), int)
    pred[1:3, 1:4] = 1
    pred[5:7, 1:3] = 2
    pred[8:10, 8:10] = 3  # false alarm
    tobj = [{"id": 1, "class": "hut", "event": "appeared", "length_m": 2, "width_m": 2},
            {"id": 2, "class": "vessel", "event": "departed"},
            {"id": 3, "class": "trench", "event": "appeared"}]
    pobj = [{"class": "hut", "event": "appeared", "length_m": 3, "width_m": 2},
            {"class": "vessel", "event": "departed"}, {"class": "other", "event": "changed"}]
    s = object_scores(pred, pobj, truth, tobj)
    assert s.per_class["hut"]["recall"] == 1 and s.per_class["hut"]["type_accuracy"] == 1
    assert s.per_class["trench"]["recall"] == 0 and s.per_class["trench"]["type_accuracy"] is None
    assert s.precision == pytest.approx(2 / 3)
    assert (s.departed_truth, s.departed_recognized) == (1, 1)
    assert s.size_errors["hut"]["median_rel_error_length"] == pytest.approx(0.5)


def _tif(path, arr, **kw):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype=arr.dtype, **kw) as ds:
        ds.write(arr, 1)


def test_load_truth_from_a_label_png(tmp_path):
    import cv2

    lab = np.zeros((8, 8), np.uint8)
    lab[2:4, 2:4] = 255
    cv2.imwrite(str(tmp_path / "l.png"), lab)
    truth, inst, objs, shift = load_truth(tmp_path / "l.png")
    assert truth.sum() == 4 and inst is None and objs is None and shift is None


def _write_run_and_truth(tmp_path, mask, summary, cls, truth_meta):
    """An output folder ``out`` (mask, summary) and a truth folder ``truth`` whose class pixels are instance 1."""
    (tmp_path / "out").mkdir()
    _tif(tmp_path / "out" / "change_mask.tif", mask, nodata=255)
    (tmp_path / "out" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "truth").mkdir()
    _tif(tmp_path / "truth" / "truth_class.tif", cls)
    _tif(tmp_path / "truth" / "truth_instances.tif", (cls > 0).astype(np.uint16))
    (tmp_path / "truth" / "truth.json").write_text(json.dumps(truth_meta))


def test_evaluate_an_output_folder(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 1
    mask[7, :] = 255
    cls = np.zeros((8, 8), np.uint8)
    cls[2:4, 2:5] = 3
    _write_run_and_truth(tmp_path, mask, {"registration": {"shift_px": [1.0, 0.0]}, "detections": [
        {"bbox_px": [2, 2, 3, 3], "class": "hut", "event": "appeared"}]},
        cls, {"shift_px": [1.0, 0.5], "objects": [{"id": 1, "class": "hut", "event": "appeared"}]})
    ev = evaluate(tmp_path / "out", tmp_path / "truth")
    assert (ev.pixel.tp, ev.pixel.fn, ev.pixel.fp) == (4, 2, 0)
    assert ev.objects.per_class["hut"]["type_accuracy"] == 1.0
    assert ev.shift_error_px == pytest.approx(0.5)


def test_evaluate_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="change_mask.tif"):
        evaluate(tmp_path, tmp_path)


def test_a_line_merged_from_fragments_counts_once(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[4:6, 1:8] = 1
    mask[4:6, 11:19] = 1  # one trench cut by a road at columns 8-10
    cls = np.zeros((10, 20), np.uint8)
    cls[4:6, 1:19] = 2
    _write_run_and_truth(tmp_path, mask, {"detections": [
        {"bbox_px": [1, 4, 18, 5], "class": "trench", "event": "appeared",
         "parts_bbox_px": [[1, 4, 7, 5], [11, 4, 18, 5]]}]},
        cls, {"objects": [{"id": 1, "class": "trench", "event": "appeared"}]})
    objs = evaluate(tmp_path / "out", tmp_path / "truth").objects
    assert objs.n_pred == 1 and objs.precision == 1.0
    assert objs.per_class["trench"]["typed_correctly"] == 1


def test_weather_pixels_and_unobservable_objects_are_left_out(tmp_path):
    """synth --weather truth: 255 in truth_class is neither change nor no change; hidden objects are not missed."""
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, :] = 1  # a false alarm on a cloud
    mask[4:6, 4:6] = 1
    cls = np.zeros((8, 8), np.uint8)
    cls[4:6, 4:6] = 3
    cls[0:3, :] = 255
    inst = np.zeros((8, 8), np.uint16)
    inst[4:6, 4:6] = 1
    inst[0, 0] = 2  # a hut wholly under the cloud
    _write_run_and_truth(tmp_path, mask, {"detections": [
        {"bbox_px": [0, 0, 7, 1], "class": "other", "event": "appeared"},
        {"bbox_px": [4, 4, 5, 5], "class": "hut", "event": "appeared"}]}, cls,
        {"objects": [{"id": 1, "class": "hut", "event": "appeared", "observable": True},
                     {"id": 2, "class": "hut", "event": "appeared", "observable": False}]})
    _tif(tmp_path / "truth" / "truth_instances.tif", inst)
    ev = evaluate(tmp_path / "out", tmp_path / "truth")
    assert (ev.pixel.tp, ev.pixel.fp, ev.pixel.fn) == (4, 0, 0)
    assert ev.objects.per_class["hut"]["n_truth"] == 1 and ev.objects.per_class["hut"]["recall"] == 1.0
    truth, *_ = load_truth(tmp_path / "truth")
    assert truth.sum() == 4


def test_parse_bounds_names_and_numbers():
    from changedet.evaluate import METRICS, parse_bounds

    assert parse_bounds("f1=0.8, recall=0.9") == {"f1": 0.8, "recall": 0.9}
    with pytest.raises(ValueError) as err:
        parse_bounds("f1=0.8,fscore=0.5")
    assert "'fscore'" in str(err.value) and all(m in str(err.value) for m in METRICS)
    for bad in ("f1", "f1=", "f1=high", "f1=1.5", "f1=nan", ",", ""):
        with pytest.raises(ValueError):
            parse_bounds(bad)


def test_check_bounds_pass_and_fail(tmp_path):
    from changedet.evaluate import check_bounds, metrics

    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 1
    cls = np.zeros((8, 8), np.uint8)
    cls[2:4, 2:6] = 3  # half the hut found: recall 0.5, precision 1
    _write_run_and_truth(tmp_path, mask, {"detections": [{"bbox_px": [2, 2, 3, 3], "class": "hut", "event": "appeared"}]},
                         cls, {"objects": [{"id": 1, "class": "hut", "event": "appeared"}]})
    ev = evaluate(tmp_path / "out", tmp_path / "truth")
    assert metrics(ev)["recall"] == 0.5 and metrics(ev)["object_recall"] == 1.0
    checks = check_bounds(ev, {"precision": 1.0, "recall": 0.6, "object_recall": 1.0})
    assert [(c.name, c.passed) for c in checks] == [("precision", True), ("recall", False), ("object_recall", True)]
    assert checks[1].message == "recall 0.5000 < 0.6"
    no_objects = type(ev)(ev.pixel, None, None)
    with pytest.raises(ValueError, match="type_accuracy"):
        check_bounds(no_objects, {"type_accuracy": 0.5})
