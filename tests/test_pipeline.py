"""End-to-end: detect on the sample sites and on fresh synth scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from changedet.config import Config, build_config
from changedet.evaluate import evaluate
from changedet.pipeline import OUTPUT_FILES, detect_pair, summary_schema

from .conftest import SAMPLE_TILES, SITES


@pytest.mark.parametrize("site", SITES)
def test_all_contract_files_are_written(sample_runs, site):
    out = sample_runs[site]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name,dtype,nodata", [("change_mask.tif", "uint8", 255), ("change_class.tif", "uint8", 255),
                                               ("change_score.tif", "float32", None)])
def test_rasters_are_valid_cogs_on_the_reference_grid(sample_runs, site, name, dtype, nodata):
    from rio_cogeo.cogeo import cog_validate

    path = sample_runs[site] / name
    is_valid, errors, _ = cog_validate(str(path), quiet=True)
    assert is_valid, errors
    with rasterio.open(path) as ds, rasterio.open(SAMPLE_TILES / site / "before.tif") as ref:
        assert ds.dtypes[0] == dtype and ds.count == 1
        assert ds.crs == ref.crs and ds.transform.almost_equals(ref.transform) and ds.shape == ref.shape
        if nodata is not None:
            assert ds.nodata == nodata
        else:
            assert np.isnan(ds.nodata)
        data = ds.read(1)
    if name == "change_mask.tif":
        assert set(np.unique(data)) <= {0, 1, 255}
    elif name == "change_class.tif":
        assert set(np.unique(data)) <= {0, 1, 2, 3, 4, 255}
    else:
        finite = data[np.isfinite(data)]
        assert finite.min() >= 0 and finite.max() <= 1


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name,legend", [("change_class.tif", "CLASS_LEGEND"), ("change_mask.tif", "MASK_LEGEND")])
def test_categorical_rasters_carry_legend_colours_names_and_tags(sample_runs, site, name, legend):
    from changedet import categories

    leg = getattr(categories, legend)
    with rasterio.open(sample_runs[site] / name) as ds:
        assert ds.colormap(1) == {c.code: (*c.rgb, 255) for c in leg.categories}
        assert ds.descriptions == (leg.description,)
        tags = ds.tags(1)
    assert all(tags[f"CLASS_{c.code}"].startswith(f"{c.name}:") for c in leg.categories)
    assert tags["NODATA"].startswith("255:")
    pam = (sample_runs[site] / f"{name}.aux.xml").read_text()
    assert all(f"<Category>{c.name}</Category>" in pam for c in leg.categories)
    assert "<GDALRasterAttributeTable" in pam


@pytest.mark.parametrize("site", SITES)
def test_score_raster_is_described(sample_runs, site):
    with rasterio.open(sample_runs[site] / "change_score.tif") as ds:
        assert ds.descriptions == ("change score",)
        tags = ds.tags(1)
    assert tags["UNITS"].startswith("dimensionless") and tags["NODATA"].startswith("NaN")


@pytest.mark.parametrize("site", SITES)
def test_geojson_is_lonlat_inside_the_footprint(sample_runs, site):
    fc = json.loads((sample_runs[site] / "detections.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    with rasterio.open(SAMPLE_TILES / site / "before.tif") as ref:
        w, s, e, n = transform_bounds(ref.crs, "EPSG:4326", *ref.bounds)
    assert fc["features"], "every sample site has changes"
    for feat in fc["features"]:
        assert feat["geometry"]["type"] in ("Polygon", "MultiPolygon")
        polys = feat["geometry"]["coordinates"]
        for lon, lat in (polys if feat["geometry"]["type"] == "MultiPolygon" else [polys])[0][0]:
            assert w - 1e-7 <= lon <= e + 1e-7 and s - 1e-7 <= lat <= n + 1e-7
        lon, lat = feat["properties"]["centroid_x"], feat["properties"]["centroid_y"]
        assert w <= lon <= e and s <= lat <= n


@pytest.mark.parametrize("site", SITES)
def test_summary_validates_against_the_shipped_schema(sample_runs, site):
    import jsonschema

    summary = json.loads((sample_runs[site] / "summary.json").read_text())
    jsonschema.validate(summary, summary_schema())
    assert summary["config"] == Config().record()
    assert sum(summary["counts"].values()) == len(summary["detections"])


@pytest.mark.parametrize("site", SITES)
def test_shift_recovered_within_a_tenth_of_a_pixel(sample_runs, site):
    summary = json.loads((sample_runs[site] / "summary.json").read_text())
    truth = json.loads((SAMPLE_TILES / site / "truth.json").read_text())
    dx, dy = summary["registration"]["shift_px"]
    tx, ty = truth["shift_px"]
    assert np.hypot(dx - tx, dy - ty) <= 0.1


@pytest.mark.parametrize("site", SITES)
def test_sample_sites_are_detected_by_the_classical_pipeline(classical_runs, site):
    ev = evaluate(classical_runs[site], SAMPLE_TILES / site)
    assert ev.pixel.f1 >= 0.80
    assert all(v["recall"] == 1.0 for v in ev.objects.per_class.values() if v["n_truth"])


def test_two_runs_are_byte_identical(small_scene, tmp_path):
    a = detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / "a")
    b = detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / "b")
    # item.json: its datetime is the run's clock when, as here, the inputs carry no date; report.html and
    # quicklook.png: titled with the site's name, which differs here
    for name in (n for n in OUTPUT_FILES if n not in ("summary.json", "quicklook.png", "report.html", "item.json")):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name
    strip = lambda s: {k: v for k, v in s.items() if k not in ("created", "timings_s", "site", "files")}  # noqa: E731
    assert strip(a.summary) == strip(b.summary)
    # the quick-look's title, the report and the STAC Item's id are the site's name, which differs here
    files = lambda s: {k: v for k, v in s["files"].items() if k not in ("quicklook.png", "report.html", "item.json")}  # noqa: E731
    assert files(a.summary) == files(b.summary)


def test_windowed_processing_equals_one_window(small_scene, tmp_path):
    """Windows with a halo give the whole-array result, up to float32 rounding in OpenCV's SIMD paths
    (about 1e-5 relative), which may flip a pixel sitting exactly on the threshold, or a quantised
    classical score by one level (the guide of the probability's edge refinement: a few 1e-3)."""
    small = build_config({"processing": {"window_px": 64}})
    big = build_config({"processing": {"window_px": 1024}})
    a = detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / "a", small)
    b = detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / "b", big)
    with rasterio.open(a.out_dir / "change_score.tif") as sa, rasterio.open(b.out_dir / "change_score.tif") as sb:
        sa_, sb_ = sa.read(1), sb.read(1)
        assert (np.isnan(sa_) == np.isnan(sb_)).all()
        diff = np.abs(np.nan_to_num(sa_) - np.nan_to_num(sb_))
        assert (diff > 1e-3).mean() < 1e-3 and diff.max() < 0.02
    with rasterio.open(a.out_dir / "change_mask.tif") as ma, rasterio.open(b.out_dir / "change_mask.tif") as mb:
        assert (ma.read(1) != mb.read(1)).mean() < 1e-4


def test_pair_without_change_stays_empty(small_scene, tmp_path):
    res = detect_pair(small_scene / "before.tif", small_scene / "before.tif", tmp_path / "same")
    assert res.summary["changed_fraction"] < 0.001
    assert res.summary["registration"]["shift_px"] == pytest.approx([0, 0], abs=0.01)


def test_unrelated_scenes_warn_about_registration(tmp_path):
    """Two different sites on one grid: registration must say it cannot be trusted."""
    with rasterio.open(SAMPLE_TILES / "camp" / "before.tif") as ref, \
            rasterio.open(SAMPLE_TILES / "port" / "after.tif") as other:
        profile = ref.profile
        data = other.read(window=rasterio.windows.Window(0, 0, ref.width, ref.height), boundless=True)
        profile.update(count=data.shape[0], dtype=data.dtype.name)
        with rasterio.open(tmp_path / "other.tif", "w", **profile) as dst:
            dst.write(data)
    res = detect_pair(SAMPLE_TILES / "camp" / "before.tif", tmp_path / "other.tif", tmp_path / "x")
    assert res.summary["registration"]["confidence"] < 0.3
    assert any("registration confidence" in w for w in res.summary["warnings"])


def _radiometric_twin(before: np.ndarray, seed: int) -> np.ndarray:
    """``before`` with only radiometric change: per-band gain 0.7..1.3, offset, noise and a seasonal tint
    on vegetation (NDVI from red and NIR), as a different pass, season or sensor would give."""
    rng = np.random.default_rng(seed)
    x = before.astype(np.float64)
    red, nir = x[2], x[3]
    veg = np.clip((nir - red) / np.maximum(nir + red, 1) * 2, 0, 1)
    tint = rng.uniform(-0.12, 0.12)
    x[1] *= 1 + 0.5 * tint * veg
    x[3] *= 1 + tint * veg
    x[0] *= 1 - 0.3 * tint * veg
    gains = rng.uniform(0.7, 1.3, size=(x.shape[0], 1, 1))
    offsets = rng.uniform(-0.02, 0.02, size=(x.shape[0], 1, 1)) * x.mean()
    x = x * gains + offsets + rng.normal(0, 0.005 * x.mean(), x.shape)
    return np.clip(np.rint(x), 0, np.iinfo(before.dtype).max).astype(before.dtype)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pure_radiometric_change_flags_almost_nothing(tmp_path, seed):
    """Issue 4, criterion 4: no real change, only gain/offset/noise/season: under 0.1 % flagged."""
    from changedet import synth

    scene = synth.make_scene("trenches", seed=200 + seed, size=256)
    folder = tmp_path / "scene"
    synth.write_scene(scene, folder)
    with rasterio.open(folder / "before.tif") as src:
        profile, before = src.profile, src.read()
    with rasterio.open(folder / "twin.tif", "w", **profile) as dst:
        dst.write(_radiometric_twin(before, seed))
    res = detect_pair(folder / "before.tif", folder / "twin.tif", tmp_path / "out")
    assert res.summary["changed_fraction"] < 0.001
    assert res.summary["detections"] == []


def test_merged_fragments_are_one_polygon_and_bridges_stay_out_of_the_rasters(sample_runs):
    out = sample_runs["trenches"]
    summary = json.loads((out / "summary.json").read_text())
    merged = [d for d in summary["detections"] if d.get("parts_bbox_px")]
    assert merged, "the trenches site has trenches broken into pieces"
    feats = {f["id"]: f for f in json.loads((out / "detections.geojson").read_text())["features"]}
    with rasterio.open(out / "change_mask.tif") as m, rasterio.open(out / "change_class.tif") as c:
        mask, cls = m.read(1), c.read(1)
    assert ((cls > 0) & (cls < 255) & (mask != 1)).sum() == 0  # classes only where the mask changed
    for d in merged:
        assert feats[d["id"]]["geometry"]["type"] == "Polygon"  # joined by its bridges
        c0, r0, c1, r1 = d["bbox_px"]
        assert all(c0 <= p[0] <= p[2] <= c1 and r0 <= p[1] <= p[3] <= r1 for p in d["parts_bbox_px"])
        assert np.all(cls[r0:r1 + 1, c0:c1 + 1][mask[r0:r1 + 1, c0:c1 + 1] == 1] > 0)


def test_a_faint_trench_is_found_whole_by_its_line_evidence(tmp_path):
    """A trench whose pixels are lost in noise is found as one trench of about its length with line
    evidence, and hardly at all without it."""
    from rasterio.transform import from_origin

    from .test_differencing import faint_line_pair

    before, after, line = faint_line_pair(seed=5, size=256)
    profile = {"driver": "GTiff", "width": 256, "height": 256, "count": 4, "dtype": "float32",
               "crs": "EPSG:32636", "transform": from_origin(500000, 3500000, 0.5, 0.5)}
    for name, data in (("before.tif", before), ("after.tif", after)):
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(data)
    rows, cols = np.nonzero(line)
    classical = build_config(sets=["model.enabled=false"])  # line evidence of the classical score
    on = detect_pair(tmp_path / "before.tif", tmp_path / "after.tif", tmp_path / "on", classical)
    hits = [d for d in on.summary["detections"]
            if d["bbox_px"][0] <= cols.mean() <= d["bbox_px"][2] and d["bbox_px"][1] <= rows.mean() <= d["bbox_px"][3]]
    assert len(hits) == 1 and hits[0]["class"] == "trench"
    truth_m = 0.5 * sum(np.hypot(*np.subtract(p, q)) for p, q in zip([(20, 40), (60, 70), (90, 40)],
                                                                      [(60, 70), (90, 40), (130, 75)]))
    assert hits[0]["length_m"] == pytest.approx(truth_m, rel=0.15)
    with rasterio.open(tmp_path / "on" / "change_mask.tif") as m, rasterio.open(tmp_path / "on" / "change_score.tif") as s:
        changed = m.read(1) == 1
        assert changed[line].mean() > 0.5
        assert s.read(1)[changed & line].min() > 0.5  # the score raster explains the line's pixels
    off = detect_pair(tmp_path / "before.tif", tmp_path / "after.tif", tmp_path / "off",
                      build_config(sets=["model.enabled=false", "decide.line_min_ratio=0"]))
    with rasterio.open(tmp_path / "off" / "change_mask.tif") as src:
        assert (src.read(1)[line] == 1).mean() < 0.2


def test_every_stage_reports_progress_to_its_end(small_scene, tmp_path):
    """normalize, decide and write (whole-image steps, no window loop) report progress too."""
    from changedet.config import build_config
    from changedet.pipeline import detect_pair

    calls: dict[str, list[tuple[int, int]]] = {}
    detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / "o",
                build_config(sets=["model.enabled=false"]), progress=lambda s, d, t: calls.setdefault(s, []).append((d, t)))
    for stage in ("normalize", "decide", "write"):  # announced at 0, then each step to the end
        done = [d for d, _ in calls[stage]]
        total = {t for _, t in calls[stage]}
        assert len(total) == 1 and done == list(range(total.pop() + 1)), (stage, calls[stage])
    sig = calls["significance"]  # the false-alarm test's rounds, within decide
    assert sig[0][0] == 0 and sig[-1][0] == sig[-1][1] > 0


def test_cascade_runs_the_model_only_near_candidates():
    from changedet.pipeline import CASCADE_MARGIN_PX, cascade_windows
    from changedet.threshold import LEVELS, NODATA

    q = np.zeros((512, 512), np.uint8)
    q[:, 500:] = NODATA
    q[10, 130] = LEVELS // 2  # a candidate in window (0, 128), within the margin of window (0, 0)
    q[400, 400] = LEVELS // 10  # below the level
    boxes = cascade_windows(q, 0.4, 128)
    assert 130 - 128 < CASCADE_MARGIN_PX
    assert boxes == [(0, 0, 128, 128), (0, 128, 128, 128)]
    assert cascade_windows(q, 0.6, 128) == []
    assert len(cascade_windows(q, 0.0, 128)) == 16
    q[:, :] = NODATA  # nodata is never a candidate
    assert cascade_windows(q, 0.1, 128) == []
@pytest.mark.parametrize("site", SITES)
def test_memory_maps_give_byte_identical_outputs(sample_runs, site, tmp_path):
    """processing.memory_budget_mb=0 holds every whole-scene array in a memory map: same files, same detections."""
    folder = SAMPLE_TILES / site
    mapped = detect_pair(folder / "before.tif", folder / "after.tif", tmp_path / site,
                         build_config(sets=["processing.memory_budget_mb=0"]), site=site)
    for name in ("change_mask.tif", "change_class.tif", "change_score.tif", "detections.geojson"):
        assert (mapped.out_dir / name).read_bytes() == (sample_runs[site] / name).read_bytes(), name
    shipped = json.loads((sample_runs[site] / "summary.json").read_text())
    assert mapped.summary["detections"] == shipped["detections"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [site], "no scratch left beside the output"
    assert not any(p.name.endswith(".scratch.bin") for p in mapped.out_dir.iterdir())


def test_crops_are_read_by_strips_then_columns():
    from changedet.pipeline import reading_order

    corners = [(700, 5), (10, 900), (600, 3), (20, 40), (10, 900)]
    assert reading_order(corners, 512) == [3, 1, 4, 2, 0]  # ties keep their order
    assert reading_order([], 512) == []


@pytest.mark.parametrize("site", ["camp"])
def test_timings_give_each_stage_its_cpu_seconds(sample_runs, site):
    timings = json.loads((sample_runs[site] / "summary.json").read_text())["timings_s"]
    stages = [k for k in timings if not k.endswith("_cpu")]
    assert {"load", "measure", "decide", "write"} <= set(stages)
    assert sorted(f"{k}_cpu" for k in stages) == sorted(k for k in timings if k.endswith("_cpu"))
    assert timings["measure_cpu"] > 0


def test_a_failed_run_stops_hashing_its_inputs(small_scene, tmp_path, monkeypatch):
    import hashlib
    import threading

    from changedet import pipeline, stac
    from changedet.errors import RegistrationError

    started, stops, real_hash = threading.Semaphore(0), [], stac.input_sha256

    def slow_hash(path, chunk=1 << 20, stop=None):  # reads on until the run lets it go
        stops.append(stop)
        started.release()
        stop.wait()
        return real_hash(path, chunk, stop)

    def failing_run(*args, **kwargs):
        for _ in range(2):
            assert started.acquire(timeout=60)  # both hashes are under way
        raise RegistrationError("before.tif: cannot be registered")

    monkeypatch.setattr(pipeline.stac, "input_sha256", slow_hash)
    monkeypatch.setattr(pipeline, "_run", failing_run)
    with pytest.raises(RegistrationError):
        detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / "out")
    assert len(stops) == 2 and all(s is not None and s.is_set() for s in stops)
    for t in [t for t in threading.enumerate() if t.name == "changedet-sha256"]:
        t.join(timeout=30)
        assert not t.is_alive()
    # and a stopped hash gives None without reading to the end
    done = threading.Event()
    done.set()
    assert real_hash(str(small_scene / "before.tif"), 1024, done) is None
    assert real_hash(str(small_scene / "before.tif"), 1024) == \
        hashlib.sha256((small_scene / "before.tif").read_bytes()).hexdigest()
