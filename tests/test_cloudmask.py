"""The optional ukis-csmask cloud/shadow detector: band choice, averaging, the error paths, and the
pipeline's use of it, with a stand-in for the CNN (the CNN itself: benchmarks/cloudmask.py)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from changedet import cloudmask
from changedet.cli import app

from .conftest import SAMPLE_TILES
from .test_cli import one_line_error

CAMP = SAMPLE_TILES / "camp"


@pytest.mark.parametrize("descriptions, expected", [
    ((None,) * 4, (0, 1, 2, 3)),  # 4 bands without descriptions: B02 B03 B04 B08, as for the rest of changedet
    ((None,) * 5, (0, 1, 2, 3)),  # 5 bands: which SWIR is the fifth is not known, so the 4-band model
    ((None,) * 13, (1, 2, 3, 7)),  # Sentinel-2 B01..B12 with B8A
    (("B02", "B03", "B04", "B08", "B11", "B12"), (0, 1, 2, 3, 4, 5)),
    (("B12", "B11", "B08", "B04", "B03", "B02"), (5, 4, 3, 2, 1, 0)),
    (("red", "green", "blue", "nir"), (2, 1, 0, 3)),
    (("B02", "B03", "B04", "B08", "B11"), (0, 1, 2, 3)),  # SWIR 2.2 µm missing: 4-band model
])
def test_model_bands(descriptions, expected):
    assert cloudmask.model_bands(cloudmask.band_names(descriptions)) == expected


@pytest.mark.parametrize("descriptions", [(None,) * 3, ("red", "green", "blue"), (None,), (None,) * 6])
def test_model_bands_refuses_without_nir(descriptions):
    with pytest.raises(ValueError, match="B02 B03 B04 B08"):
        cloudmask.model_bands(cloudmask.band_names(descriptions))


def test_reflectance_scale_and_offset():
    dn = np.array([1000, 3500], np.uint16)
    np.testing.assert_allclose(cloudmask.reflectance(dn, 10000), [0.1, 0.35], rtol=1e-6)
    np.testing.assert_allclose(cloudmask.reflectance(dn, 10000, -1000), [0.0, 0.25], rtol=1e-6)


def test_block_sums_by_window_equal_whole_scene():
    rng = np.random.default_rng(3)
    img = rng.random((4, 70, 47)).astype(np.float32)
    valid = rng.random((70, 47)) > 0.2
    factor, step = 3, 24
    whole_s, whole_n = cloudmask.block_sums(img, valid, factor)
    s = np.zeros_like(whole_s)
    n = np.zeros_like(whole_n)
    for r in range(0, 70, step):
        for c in range(0, 47, step):
            ws, wn = cloudmask.block_sums(img[:, r:r + step, c:c + step], valid[r:r + step, c:c + step], factor)
            s[:, r // factor:r // factor + ws.shape[1], c // factor:c // factor + ws.shape[2]] = ws
            n[r // factor:r // factor + wn.shape[0], c // factor:c // factor + wn.shape[1]] = wn
    np.testing.assert_allclose(s, whole_s)
    np.testing.assert_array_equal(n, whole_n)
    assert whole_n[0, 0] == valid[:3, :3].sum()
    np.testing.assert_allclose(whole_s[:, 0, 0], (img[:, :3, :3] * valid[:3, :3]).sum(axis=(1, 2)), rtol=1e-6)


def test_csmask_without_the_extra_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(cloudmask, "installed", lambda: False)
    res = CliRunner().invoke(app, ["detect", str(CAMP / "before.tif"), str(CAMP / "after.tif"), "--out",
                                   str(tmp_path / "o"), "--set", "observe.cloud_model=csmask"])
    one_line_error(res, "changedet[csmask]", "observe.cloud_model")
    assert not (tmp_path / "o").exists()


def test_csmask_on_bands_it_cannot_use_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(cloudmask, "installed", lambda: True)  # the band check comes before any model
    res = CliRunner().invoke(app, ["detect", str(CAMP / "before.tif"), str(CAMP / "after.tif"), "--out",
                                   str(tmp_path / "o"), "--set", "observe.cloud_model=csmask"])
    one_line_error(res, "before.tif", "B02 B03 B04 B08", "observe.cloud_model=classical")


class _StandInCSmask:
    """Stands in for ``ukis_csmask.mask.CSmask`` (the CNN is measured in benchmarks/cloudmask.py on
    real Sentinel-2): cloud where the visible bands are bright, shadow where NIR is dark."""

    calls: list[dict] = []

    def __init__(self, img, band_order, product_level, intra_op_num_threads=0):
        type(self).calls.append({"shape": img.shape, "band_order": list(band_order),
                                 "product_level": product_level, "max": float(img.max())})
        blue, nir = img[..., band_order.index("blue")], img[..., band_order.index("nir")]
        csm = np.zeros(img.shape[:2], np.uint8)
        csm[blue > 0.4] = cloudmask.CLOUD
        csm[nir < 0.03] = cloudmask.SHADOW
        self.csm = csm[..., None]


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("ukis_csmask")
    module.mask = types.ModuleType("ukis_csmask.mask")
    module.mask.CSmask = _StandInCSmask
    monkeypatch.setitem(sys.modules, "ukis_csmask", module)
    monkeypatch.setitem(sys.modules, "ukis_csmask.mask", module.mask)
    monkeypatch.setattr(cloudmask, "installed", lambda: True)
    _StandInCSmask.calls = []
    return _StandInCSmask


def test_cloud_shadow_feeds_the_model_reflectance_in_its_band_order_and_masks_invalid(stand_in):
    img = np.full((4, 40, 50), 0.1, np.float32)
    img[:, 5:15, 5:15] = 0.7  # bright: cloud
    img[3, 25:35, 30:40] = 0.01  # dark NIR: shadow
    valid = np.ones((40, 50), bool)
    valid[:, 45:] = False
    img[:, :, 45:] = 0.9  # bright but invalid: neither
    cs = cloudmask.cloud_shadow(img, valid, "l2a")
    assert stand_in.calls[0]["band_order"] == ["blue", "green", "red", "nir"]
    assert stand_in.calls[0]["product_level"] == "l2a"
    assert cs.cloud[5:15, 5:15].all() and cs.cloud.sum() == 100
    assert cs.shadow[25:35, 30:40].all() and cs.shadow.sum() == 100
    assert not (cs.cloud | cs.shadow)[:, 45:].any()


def _sentinel_pair(folder: Path) -> tuple[Path, Path]:
    """A 4-band 10 m pair (uint16 L1C numbers, B02 B03 B04 B08), a cloud and its shadow on the second date."""
    rng = np.random.default_rng(5)
    ground = 0.08 + 0.08 * rng.random((4, 300, 300))
    ground[3] += 0.15  # vegetated: NIR above the visible bands
    after = ground + 0.005 * rng.standard_normal(ground.shape)
    after[:, 40:100, 40:100] = 0.7  # the cloud
    after[3, 150:210, 160:220] = 0.01  # its shadow (dark in NIR)
    paths = []
    for name, img in (("before", ground), ("after", after)):
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=4, dtype="uint16",
                           crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000)) as ds:
            ds.write(np.clip(img * 10000, 1, 65535).astype(np.uint16))
            ds.descriptions = ("B02", "B03", "B04", "B08")
        paths.append(path)
    return paths[0], paths[1]


def test_csmask_clouds_and_shadows_become_not_observable(tmp_path, stand_in):
    before, after = _sentinel_pair(tmp_path)
    res = CliRunner().invoke(app, ["detect", str(before), str(after), "--out", str(tmp_path / "o"),
                                   "--set", "observe.cloud_model=csmask", "--set", "model.enabled=false"])
    assert res.exit_code == 0, res.output
    assert {c["product_level"] for c in stand_in.calls} == {"l1c"} and len(stand_in.calls) >= 2
    assert max(c["max"] for c in stand_in.calls) <= 1.0  # reflectance, not digital numbers
    with rasterio.open(tmp_path / "o" / "change_mask.tif") as ds:
        mask = ds.read(1)
    assert (mask[45:95, 45:95] == 255).all() and (mask[155:205, 165:215] == 255).all()
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    areas = summary["not_observable_m2"]
    assert areas["cloud"] >= 60 * 60 * 100 * 0.9 and areas["cloud_shadow"] >= 60 * 60 * 100 * 0.9
    assert summary["observability"]["shadow_offset_px"] == {"before": None, "after": None}
