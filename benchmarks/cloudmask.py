"""Classical against ukis-csmask clouds and shadows on the real Sentinel-2 data of ``../shared`` (issue 12).

Needs the optional extra (``pip install -e '.[csmask]'``). For every OSCD city (dev and train
folders) the 10 m bands B02 B03 B04 B08 of each date are stacked into a 4-band GeoTIFF, and for
the dev cities, which also have B11 and B12 (20 m, brought to the 10 m grid bilinearly), into a
6-band one with band descriptions. ``changedet detect --preset medium-10m`` then runs with
``observe.cloud_model`` classical and csmask (4 bands). Reported per date: the cloud and shadow
area (% of the scene, before the buffer) found by each detector, csmask's 6-band model beside
them where it applies; per pair: detections, detections per km² and the observable fraction.
The sen2ships ports (one L2A date each) get csmask alone: the classical detector is
bi-temporal. Pictures of both masks go to ``build/cloudmask/``.

    python benchmarks/cloudmask.py [--out build/cloudmask]
"""

from __future__ import annotations

import argparse
import glob
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling

from changedet import cloudmask, observability, pipeline
from changedet.config import build_config
from changedet.pipeline import detect_pair

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BANDS4 = ("B02", "B03", "B04", "B08")
BANDS6 = BANDS4 + ("B11", "B12")


def stack(files: list[str], out: Path, names: tuple[str, ...] | None) -> None:
    """The bands of ``files`` on the grid of the first, as one uint16 GeoTIFF."""
    with rasterio.open(files[0]) as ref:
        profile = {"driver": "GTiff", "width": ref.width, "height": ref.height, "count": len(files),
                   "dtype": "uint16", "crs": ref.crs, "transform": ref.transform, "compress": "deflate"}
        shape = ref.shape
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        for i, f in enumerate(files, 1):
            with rasterio.open(f) as src:
                dst.write(src.read(1, out_shape=shape, resampling=Resampling.bilinear), i)
            if names:
                dst.set_band_description(i, names[i - 1])


def oscd_pairs(build: Path) -> list[tuple[str, str, Path, bool]]:
    """(split, city, folder with before/after[6].tif, has 6 bands) for every OSCD city found."""
    out = []
    for split, root in (("dev", SHARED / "realdata" / "oscd"), ("train", SHARED / "traindata" / "oscd")):
        for city in sorted(p for p in root.glob("*") if p.is_dir()):
            folder = build / "oscd" / city.name
            six = True
            for d, name in (("imgs_1", "before"), ("imgs_2", "after")):
                def files(bands: tuple[str, ...]) -> list[str]:
                    return [sorted(glob.glob(str(city / d / f"*_{b}.tif")))[0] for b in bands]
                if not (folder / f"{name}.tif").exists():
                    stack(files(BANDS4), folder / f"{name}.tif", None)
                try:
                    if not (folder / f"{name}6.tif").exists():
                        stack(files(BANDS6), folder / f"{name}6.tif", BANDS6)
                except IndexError:
                    six = False
            out.append((split, city.name, folder, six))
    return out


class Spy:
    """Records per-date clouds and shadows of both detectors and the reason raster during a run."""

    def __init__(self) -> None:
        self.classical: list[tuple[np.ndarray, np.ndarray]] = []
        self.csmask: list[tuple[np.ndarray, np.ndarray]] = []
        self.reason: np.ndarray | None = None
        self._orig = (observability._classical_cloud_shadow, pipeline.csmask_pass, observability.resolve)

    def __enter__(self) -> Spy:
        c0, m0, r0 = self._orig

        def classical(*a, **k):  # type: ignore[no-untyped-def]
            cl, sh, off = c0(*a, **k)
            self.classical.append((cl, sh))
            return cl, sh, off

        def csm(*a, **k):  # type: ignore[no-untyped-def]
            both = m0(*a, **k)
            self.csmask.extend(both)
            return both

        def resolve(*a, **k):  # type: ignore[no-untyped-def]
            obs = r0(*a, **k)
            self.reason = obs.reason
            return obs

        observability._classical_cloud_shadow = classical
        pipeline.csmask_pass = csm
        observability.resolve = resolve
        return self

    def __exit__(self, *exc: object) -> None:
        observability._classical_cloud_shadow, pipeline.csmask_pass, observability.resolve = self._orig


def pct(mask: np.ndarray) -> float:
    return round(100.0 * float(mask.mean()), 2)


def csmask_direct(path: Path, level: str, gsd_m: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """csmask on one image alone, averaged to 30 m as the pipeline does; masks on the image grid."""
    with rasterio.open(path) as ds:
        img = ds.read().astype(np.float32)
        names = cloudmask.band_names(ds.descriptions)
    idx = cloudmask.model_bands(names)
    factor = max(1, int(round(30.0 / gsd_m)))
    x = cloudmask.reflectance(img[list(idx)], 10000)
    valid = (img > 0).any(axis=0)
    s, n = cloudmask.block_sums(x, valid, factor)
    cs = cloudmask.cloud_shadow((s / np.maximum(n, 1)).astype(np.float32), n > 0, level, threads=1)
    h, w = valid.shape
    return tuple(np.repeat(np.repeat(m, factor, 0), factor, 1)[:h, :w] for m in (cs.cloud, cs.shadow))  # type: ignore[return-value]


def rgb(path: Path, grid: dict | None = None, rgb_idx: tuple[int, int, int] = (2, 1, 0)) -> np.ndarray:
    """An RGB picture of ``path``, on the run's output ``grid`` (its summary's) when given."""
    with rasterio.open(path) as ds:
        if grid is None:
            img = ds.read([i + 1 for i in rgb_idx]).astype(np.float32)
        else:
            t = rasterio.Affine(*grid["transform"][:6])
            bounds = rasterio.transform.array_bounds(grid["height"], grid["width"], t)
            win = rasterio.windows.from_bounds(bounds[0], bounds[1], bounds[2], bounds[3], ds.transform)
            img = ds.read([i + 1 for i in rgb_idx], window=win, out_shape=(3, grid["height"], grid["width"]),
                          boundless=True).astype(np.float32)
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def overlay(base: np.ndarray, cloud: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    """Cloud outlined and tinted red, shadow blue, on a copy of ``base`` (RGB)."""
    out = base.astype(np.float32)
    for m, col in ((cloud, (255, 40, 40)), (shadow, (40, 120, 255))):
        out[m] = 0.55 * out[m] + 0.45 * np.array(col, np.float32)
        edge = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        out[edge] = col
    return out.astype(np.uint8)


def label(img: np.ndarray, text: str) -> np.ndarray:
    pad = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(pad, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([pad, img])


def panel_row(cols: list[tuple[np.ndarray, str]]) -> np.ndarray:
    sep = np.full((cols[0][0].shape[0] + 22, 6, 3), 255, np.uint8)
    parts = []
    for img, text in cols:
        parts += [label(img, text), sep]
    return np.hstack(parts[:-1])


def run_pair(folder: Path, out: Path, model: str) -> tuple[dict, Spy]:
    cfg = build_config(preset="medium-10m", sets=[f"observe.cloud_model={model}"])
    with Spy() as spy, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = detect_pair(folder / "before.tif", folder / "after.tif", out, cfg, site=folder.name)
    return res.summary, spy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "cloudmask")
    args = ap.parse_args()
    rows, pics = [], args.out / "pictures"
    pics.mkdir(parents=True, exist_ok=True)
    for split, city, folder, six in oscd_pairs(args.out):
        runs = {m: run_pair(folder, args.out / "runs" / f"{city}-{m}", m) for m in ("classical", "csmask")}
        picture = []
        for k, date in enumerate(("before", "after")):
            cl_c, sh_c = runs["classical"][1].classical[k]
            cl_m, sh_m = runs["csmask"][1].csmask[k]
            six_m = csmask_direct(folder / f"{date}6.tif", "l1c") if six else None
            rows.append({"image": f"oscd/{city}/{date}", "split": split,
                         "classical_cloud_pct": pct(cl_c), "classical_shadow_pct": pct(sh_c),
                         "csmask4_cloud_pct": pct(cl_m), "csmask4_shadow_pct": pct(sh_m),
                         "csmask6_cloud_pct": pct(six_m[0]) if six_m else None,
                         "csmask6_shadow_pct": pct(six_m[1]) if six_m else None})
            base = rgb(folder / f"{date}.tif", runs["classical"][0]["grid"])
            cols = [(base, f"{city} {date}"), (overlay(base, cl_c, sh_c), "classical"),
                    (overlay(base, cl_m, sh_m), "csmask 4-band")]
            if six_m:
                cols.append((overlay(base, *six_m), "csmask 6-band"))
            picture.append(panel_row(cols))
        cv2.imwrite(str(pics / f"oscd-{city}.png"), cv2.cvtColor(np.vstack(picture), cv2.COLOR_RGB2BGR))
        for m, (s, _) in runs.items():
            rows.append({"image": f"oscd/{city} detect", "split": split, "cloud_model": m,
                         "detections": sum(s["counts"].values()), "detections_per_km2": s["detections_per_km2"],
                         "observable_fraction": s["observable_fraction"],
                         "cloud_m2": s["not_observable_m2"]["cloud"],
                         "cloud_shadow_m2": s["not_observable_m2"]["cloud_shadow"]})
        print(json.dumps(rows[-4:]), flush=True)
    for port in sorted((SHARED / "realdata" / "sen2ships").glob("*")):
        files = [sorted(glob.glob(str(port / f"*_{b}_*.tiff")))[0] for b in BANDS4 + ("B11",)]
        path = args.out / "sen2ships" / f"{port.name}.tif"
        if not path.exists():
            stack(files, path, BANDS4 + ("B11",))
        cl, sh = csmask_direct(path, "l2a")
        rows.append({"image": f"sen2ships/{port.name}", "split": "dev", "classical_cloud_pct": None,
                     "csmask4_cloud_pct": pct(cl), "csmask4_shadow_pct": pct(sh)})
        base = rgb(path)
        cv2.imwrite(str(pics / f"sen2ships-{port.name}.png"), cv2.cvtColor(
            panel_row([(base, port.name), (overlay(base, cl, sh), "csmask 4-band l2a")]), cv2.COLOR_RGB2BGR))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
