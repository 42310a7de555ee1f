"""Co-registration accuracy and speed (issue 3).

Three tables, all measured in this one run:

1. Synthetic pairs from ``changedet synth`` (scenarios and seeds vary) with random
   shifts in ±20 px, half of them also rotated by up to 0.5°, with the generator's
   gain/offset, seasonal tint and noise: median and 95th-percentile error, rotation
   error, corner displacement error and time per megapixel.
2. Real images from ``../shared/realdata/`` (skipped when absent): each image is
   shifted by a known random subpixel amount (±3 px) and given a mild gain, offset
   and noise, then registered against itself.
3. Detection F1 on synth scenes generated with no shift and with a 5 px shift.
4. With ``--weather`` (and only then, alone): hard synth scenes under weather ``cloud,haze,jpeg``
   (a cloud with its shadow on one date, thick haze, JPEG quality 40-60), scenarios mixed, a
   random subpixel shift in ±5 px and a rotation uniform in ±0.3°: median and p95 of the error at
   the scene centre, at the corners and of the rotation (issue 12).

Also: the confidence of unrelated pairs (one scene's before against another
scene's after, and two different real images), which must stay below
``registration.min_confidence`` so the pipeline warns.

    python benchmarks/registration.py [--n 60] [--size 512] [--first-seed 5000] [--realdata PATH]
    python benchmarks/registration.py --weather [--weather-n 20]
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from scipy import ndimage

from changedet import synth
from changedet.config import RegisterConfig
from changedet.coregistration import estimate_registration
from changedet.evaluate import evaluate
from changedet.io import open_pair
from changedet.pipeline import detect_pair

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


def corner_error(m_est: np.ndarray, m_true: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest displacement error over the four tile corners, px."""
    h, w = shape
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float)
    return float(np.hypot(*(corners @ m_est.T - corners @ m_true.T).T).max())


def centre_error(m_est: np.ndarray, m_true: np.ndarray, shape: tuple[int, int]) -> float:
    c = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2, 1.0])
    return float(np.hypot(*(m_est @ c - m_true @ c)))


def register_files(before: Path, after: Path, params: RegisterConfig):
    t0 = time.perf_counter()
    with open_pair(before, after) as pair:
        reg = estimate_registration(pair, params, lambda *a: None)
        shape = pair.shape
    return reg, shape, time.perf_counter() - t0


def synthetic_table(n: int, size: int, first_seed: int, work: Path) -> list[dict]:
    rng = np.random.default_rng(first_seed)
    rows = []
    for i in range(n):
        scenario = synth.SCENARIOS[i % 3]
        rotated = i % 2 == 1
        shift = tuple(float(v) for v in rng.uniform(-20, 20, 2))
        rot = float(rng.uniform(-0.5, 0.5)) if rotated else 0.0
        difficulty = ("easy", "medium", "hard")[(i // 3) % 3]
        scene = synth.make_scene(scenario, seed=first_seed + i, size=size, difficulty=difficulty,
                                 shift_px=shift, rotation_deg=rot)
        folder = work / f"syn_{i}"
        synth.write_scene(scene, folder)
        reg, shape, secs = register_files(folder / "before.tif", folder / "after.tif", RegisterConfig())
        truth = synth.after_from_before(scene)
        rows.append({"kind": "rotation" if rotated else "translation", "scenario": scenario, "difficulty": difficulty,
                     "err": centre_error(reg.matrix, truth, shape), "corner": corner_error(reg.matrix, truth, shape),
                     "rot_err": abs(reg.rotation_deg - rot), "model": reg.method, "conf": reg.confidence,
                     "residual": reg.residual_px, "s_per_mpx": secs / (shape[0] * shape[1] / 1e6)})
        print(f"  synth {i:>3} {scenario:<9} {difficulty:<6} shift ({shift[0]:6.2f},{shift[1]:6.2f}) rot {rot:+.3f}°  "
              f"-> err {rows[-1]['err']:.3f} px, corners {rows[-1]['corner']:.3f} px, model {reg.method}, "
              f"conf {reg.confidence:.2f}", file=sys.stderr, flush=True)
    return rows


def weather_table(n: int, size: int, first_seed: int, work: Path, params: RegisterConfig) -> list[dict]:
    """Hard scenes with a cloud on one date, thick haze and JPEG, shifted ±5 px and rotated ±0.3°."""
    rng = np.random.default_rng(first_seed)
    rows = []
    for i in range(n):
        scenario = synth.SCENARIOS[i % 3]
        shift = tuple(float(v) for v in rng.uniform(-5, 5, 2))
        rot = float(rng.uniform(-0.3, 0.3))
        scene = synth.make_scene(scenario, seed=first_seed + i, size=size, difficulty="hard",
                                 shift_px=shift, rotation_deg=rot, weather="cloud,haze,jpeg")
        folder = work / f"wx_{i}"
        synth.write_scene(scene, folder)
        reg, shape, secs = register_files(folder / "before.tif", folder / "after.tif", params)
        truth = synth.after_from_before(scene)
        hidden = float((scene.weather_mask > 0).mean())
        rows.append({"scenario": scenario, "err": centre_error(reg.matrix, truth, shape),
                     "corner": corner_error(reg.matrix, truth, shape), "rot_err": abs(reg.rotation_deg - rot),
                     "model": reg.method, "conf": reg.confidence, "s_per_mpx": secs / (shape[0] * shape[1] / 1e6)})
        print(f"  weather {i:>3} {scenario:<9} hidden {hidden:4.0%} shift ({shift[0]:5.2f},{shift[1]:5.2f}) "
              f"rot {rot:+.3f}° -> err {rows[-1]['err']:.3f} px, corners {rows[-1]['corner']:.3f} px, "
              f"rot err {rows[-1]['rot_err']:.4f}°, model {reg.method}, n {reg.n_tiepoints}, "
              f"conf {reg.confidence:.2f}", file=sys.stderr, flush=True)
    return rows


def _real_images(root: Path) -> list[tuple[str, Path, int | None]]:
    """(name, path, band) of real single-date images to shift; band None = all bands."""
    items: list[tuple[str, Path, int | None]] = []
    for ds in ("levir-cd", "levir-cd-1024", "dsifn", "whu-cd", "sztaki-airchange"):
        for p in sorted(glob.glob(str(root / ds / "A" / "*"))):
            items.append((f"{ds}/{Path(p).stem}", Path(p), None))
    for city in sorted(glob.glob(str(root / "oscd" / "*" / "imgs_1"))):
        b04 = sorted(glob.glob(f"{city}/*B04*"))
        if b04:
            items.append((f"oscd/{Path(city).parent.name}", Path(b04[0]), 1))
    for p in sorted(glob.glob(str(root / "landsat-wu2014" / "*" / "2000TM"))) + \
            sorted(glob.glob(str(root / "landsat-wu2014" / "2000TM"))):
        items.append(("landsat-wu2014/2000TM", Path(p), None))
    for p in sorted(glob.glob(str(root / "arosics-s2" / "*" / "ref_*.jp2"))):
        items.append(("arosics-s2/ref", Path(p), 1))
    for port in sorted(glob.glob(str(root / "sen2ships" / "*"))):
        b = sorted(glob.glob(f"{port}/*B04*")) or sorted(glob.glob(f"{port}/*.tif*"))
        if b:
            items.append((f"sen2ships/{Path(port).name}", Path(b[0]), 1))
    for p in sorted(glob.glob(str(root / "dota-ships" / "*" / "*.png"))) + \
            sorted(glob.glob(str(root / "dota-ships" / "*.png"))):
        items.append((f"dota-ships/{Path(p).stem}", Path(p), None))
    return items


def _read_centre(path: Path, band: int | None, max_px: int) -> np.ndarray:
    """Up to ``max_px`` square from the image centre, at most 4 bands, float64."""
    with rasterio.open(path) as ds:
        h, w = min(ds.height, max_px), min(ds.width, max_px)
        win = rasterio.windows.Window((ds.width - w) // 2, (ds.height - h) // 2, w, h)
        return ds.read([band] if band else None, window=win).astype(np.float64)[:4]


def _write_plain(arr: np.ndarray, path: Path) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype="float32") as dst:
        dst.write(arr.astype(np.float32))
    return path


def real_table(root: Path, work: Path, seed: int = 7, max_px: int = 1024, margin: int = 8) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, path, band in _real_images(root):
        data = _read_centre(path, band, max_px)
        dx, dy = (float(v) for v in rng.uniform(-3, 3, 2))
        gain, offset = float(rng.uniform(0.9, 1.1)), float(rng.uniform(-0.03, 0.03)) * float(data.mean())
        moved = np.stack([ndimage.shift(b, (dy, dx), order=3, mode="reflect") for b in data])
        noise = rng.normal(0, 0.01 * float(data.std()), moved.shape)
        after = moved * gain + offset + noise
        crop = (slice(None), slice(margin, -margin), slice(margin, -margin))
        stem = name.replace("/", "_")
        paths = [_write_plain(arr, work / f"{stem}_{tag}.tif") for tag, arr in (("before", data[crop]),
                                                                                ("after", after[crop]))]
        reg, shape, secs = register_files(paths[0], paths[1], RegisterConfig())
        truth = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        rows.append({"name": name, "err": centre_error(reg.matrix, truth, shape),
                     "corner": corner_error(reg.matrix, truth, shape), "model": reg.method, "conf": reg.confidence,
                     "s_per_mpx": secs / (shape[0] * shape[1] / 1e6)})
        print(f"  real {name:<34} shift ({dx:5.2f},{dy:5.2f}) -> err {rows[-1]['err']:.3f} px, "
              f"model {reg.method}, conf {reg.confidence:.2f}", file=sys.stderr, flush=True)
    return rows


def unrelated_synth(n: int, size: int, first_seed: int, work: Path) -> list[float]:
    """Confidence of one synth scene's before against a different scenario's after, put on the same grid."""
    out = []
    for i in range(n):
        a = synth.make_scene(synth.SCENARIOS[i % 3], seed=first_seed + i, size=size)
        b = synth.make_scene(synth.SCENARIOS[(i + 1) % 3], seed=first_seed + i + 1, size=size)
        folder = work / f"unrel_{i}"
        synth.write_scene(a, folder / "a")
        synth.write_scene(b, folder / "b")
        with rasterio.open(folder / "a" / "before.tif") as ref, rasterio.open(folder / "b" / "after.tif") as other:
            profile = ref.profile
            pixels = other.read()
        profile.update(count=pixels.shape[0], dtype=pixels.dtype.name)
        with rasterio.open(folder / "other.tif", "w", **profile) as dst:  # another site's pixels on this grid
            dst.write(pixels)
        reg, _, _ = register_files(folder / "a" / "before.tif", folder / "other.tif", RegisterConfig())
        out.append(reg.confidence)
        print(f"  unrelated synth {i:>2} -> conf {reg.confidence:.3f}", file=sys.stderr, flush=True)
    return out


def unrelated_real(root: Path, work: Path, max_px: int = 512) -> list[float]:
    """Confidence of each real image against the next one in the list (a different site), same-size crops."""
    items = _real_images(root)
    out = []
    for (na, pa, ba), (nb, pb, bb) in zip(items, items[1:] + items[:1]):
        a, b = _read_centre(pa, ba, max_px), _read_centre(pb, bb, max_px)
        h, w, c = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2]), min(a.shape[0], b.shape[0])
        pa_, pb_ = (_write_plain(x[:c, :h, :w], work / f"unrel_{i}_{na.replace('/', '_')}.tif")
                    for i, x in enumerate((a, b)))
        reg, _, _ = register_files(pa_, pb_, RegisterConfig())
        out.append(reg.confidence)
        print(f"  unrelated real {na} vs {nb} -> conf {reg.confidence:.3f}", file=sys.stderr, flush=True)
    return out


def f1_table(n: int, size: int, first_seed: int, work: Path) -> list[tuple[float, float]]:
    out = []
    for i in range(n):
        scenario = synth.SCENARIOS[i % 3]
        f1s = []
        for tag, shift in (("none", (0.0, 0.0)), ("five", (3.0, 4.0))):
            scene = synth.make_scene(scenario, seed=first_seed + i, size=size, shift_px=shift)
            folder = work / f"f1_{i}_{tag}"
            synth.write_scene(scene, folder)
            detect_pair(folder / "before.tif", folder / "after.tif", folder / "out")
            f1s.append(evaluate(folder / "out", folder).pixel.f1)
        out.append((f1s[0], f1s[1]))
        print(f"  f1 {i:>2} {scenario:<9} no shift {f1s[0]:.4f}  5 px shift {f1s[1]:.4f}", file=sys.stderr, flush=True)
    return out


def summarize(rows: list[dict], label: str) -> str:
    if not rows:
        return f"{label:<22} {0:>4}   (no pairs)"
    err = np.array([r["err"] for r in rows])
    corner = np.array([r["corner"] for r in rows])
    rot = np.array([r.get("rot_err", 0.0) for r in rows])
    speed = np.array([r["s_per_mpx"] for r in rows])
    return (f"{label:<22} {len(rows):>4} {np.median(err):>9.4f} {np.percentile(err, 95):>8.4f} "
            f"{np.median(corner):>12.4f} {np.percentile(corner, 95):>11.4f} {np.median(rot):>13.5f} "
            f"{np.median(speed):>9.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="synthetic pairs (half rotated)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--first-seed", type=int, default=5000)
    ap.add_argument("--f1-scenes", type=int, default=9)
    ap.add_argument("--unrelated", type=int, default=6, help="unrelated synth pairs")
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--weather", action="store_true",
                    help="only the weather table: hard scenes with cloud, haze and JPEG, rotated ±0.3°")
    ap.add_argument("--weather-n", type=int, default=20, help="scenes of the weather table")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a RegisterConfig override for the weather table, e.g. max_weather_frac=1 (the old vote)")
    args = ap.parse_args()
    head = (f"{'set':<22} {'n':>4} {'median px':>9} {'p95 px':>8} {'corner med px':>12} {'corner p95':>11} "
            f"{'rot err med °':>13} {'s / MPix':>9}")
    if args.weather:
        with tempfile.TemporaryDirectory(prefix="changedet-reg-") as tmp:
            params = RegisterConfig.model_validate(dict(kv.split("=", 1) for kv in args.set))
            rows = weather_table(args.weather_n, args.size, args.first_seed + 3000, Path(tmp), params)
        rot = np.array([r["rot_err"] for r in rows])
        print(head)
        print(summarize(rows, "weather rot ≤0.3°"))
        print(f"rotation error: median {np.median(rot):.4f}°, p95 {np.percentile(rot, 95):.4f}°, "
              f"max {rot.max():.4f}°")
        return 0
    # the real images are written without georeferencing on purpose: rasterio would say so for every file
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    have_real = args.realdata.is_dir() and bool(_real_images(args.realdata))
    with tempfile.TemporaryDirectory(prefix="changedet-reg-") as tmp:
        work = Path(tmp)
        rows = synthetic_table(args.n, args.size, args.first_seed, work)
        real = real_table(args.realdata, work) if have_real else None
        f1 = f1_table(args.f1_scenes, args.size, args.first_seed + 1000, work)
        unrel = unrelated_synth(args.unrelated, args.size, args.first_seed + 2000, work)
        unrel_real = unrelated_real(args.realdata, work) if have_real else []
    print(head)
    print(summarize([r for r in rows if r["kind"] == "translation"], "synth translation"))
    print(summarize([r for r in rows if r["kind"] == "rotation"], "synth rotation ≤0.5°"))
    if real is None:
        print(f"real data: skipped (no images under {args.realdata})")
    else:
        print(summarize(real, "real (known shift)"))
    models = {}
    for r in rows:
        models[r["model"]] = models.get(r["model"], 0) + 1
    print(f"models chosen on synth: {models}")
    limit = RegisterConfig().min_confidence
    for label, conf in (("synth", unrel), ("real", unrel_real)):
        if conf:
            print(f"unrelated {label} pairs: {len(conf)}, confidence max {max(conf):.3f}, median "
                  f"{float(np.median(conf)):.3f}, warned (< {limit}) {sum(c < limit for c in conf)}/{len(conf)}")
    a = np.array(f1).reshape(-1, 2)
    if len(a):
        print(f"detection F1 on {len(a)} synth scenes: no shift {a[:, 0].mean():.4f}, 5 px shift {a[:, 1].mean():.4f}, "
              f"mean |difference| {np.abs(a[:, 0] - a[:, 1]).mean():.4f}, "
              f"largest {np.abs(a[:, 0] - a[:, 1]).max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
