"""Change-detection accuracy on real labelled pairs, held-out, and on synth scenes (issues 4 and 11).

For every dataset of ``../shared/realdata/`` with change labels (LEVIR-CD crops and tile, DSIFN,
WHU-CD, SZTAKI AirChange, OSCD's four dev cities) and the MS-HS-BCD test split of
``../shared/traindata/``, prints pooled pixel precision / recall / F1 / IoU of four methods run
in the same process:

- ``cva``: change-vector magnitude of histogram-matched bands, Otsu, 3x3 opening (the baseline);
- ``classical``: ``detect`` with ``model.enabled=false``;
- ``learned``: the learned probability alone, thresholded at the model's threshold;
- ``default``: ``detect`` as shipped (learned probability fused with the classical score).

Held-out only: the default model is trained on the dev pairs of ``../shared/realdata`` too, so
each dev pair is scored by a model retrained, with the same recipe (``benchmarks/realpairs.py``),
on every pair except those of its site. MS-HS-BCD test pairs are never trained on; the shipped
model scores them. Object figures (issue 11, criterion 4): detections, those of which at least
30 % of the area is labelled change, the share of the area typed ``trench``, vessels, and the
number of labelled change regions.

    python benchmarks/accuracy.py [--only levir-cd,whu-cd] [--synth-n 20] [--no-folds]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from skimage.exposure import match_histograms
from skimage.filters import threshold_otsu

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realpairs as rp  # noqa: E402

from changedet import learned, synth  # noqa: E402
from changedet.config import build_config  # noqa: E402
from changedet.evaluate import pixel_scores  # noqa: E402
from changedet.learned import head as head_mod  # noqa: E402
from changedet.learned import score as lscore  # noqa: E402
from changedet.learned import training as T  # noqa: E402
from changedet.pipeline import detect_pair  # noqa: E402

warnings.simplefilter("ignore", NotGeoreferencedWarning)
#: ground sample distance of the datasets without georeferencing
GSD = {"levir-cd": 0.5, "levir-cd-1024": 0.5, "dsifn": 2.0, "whu-cd": 0.3, "sztaki-airchange": 1.5,
       "ms-hs-bcd-test": 2.0, "oscd": None}
DEV = ("levir-cd", "levir-cd-1024", "dsifn", "whu-cd", "sztaki-airchange", "oscd")
METHODS = ("cva", "classical", "learned", "default")


def baseline(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """CVA of histogram-matched bands, Otsu, 3x3 opening."""
    matched = match_histograms(after, before, channel_axis=0)
    mag = np.sqrt(((matched - before) ** 2).sum(axis=0))
    mask = (mag > threshold_otsu(mag)).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


class Pool:
    """Pooled pixel counts of one method on one dataset."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0

    def add(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
        s = pixel_scores(pred, truth, valid)
        self.tp, self.fp, self.fn = self.tp + s.tp, self.fp + s.fp, self.fn + s.fn
        return s.f1

    @property
    def f1(self) -> float:
        return 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)

    def row(self, name: str, method: str) -> str:
        p = self.tp / max(self.tp + self.fp, 1)
        r = self.tp / max(self.tp + self.fn, 1)
        iou = self.tp / max(self.tp + self.fp + self.fn, 1)
        return f"{name:<18} {method:<10} {p:>9.3f} {r:>7.3f} {self.f1:>7.3f} {iou:>7.3f}"


class Objects:
    """Object figures of the default run on one dataset."""

    def __init__(self) -> None:
        self.n = self.true = self.regions = self.vessels = 0
        self.area = self.trench_area = 0.0

    def add(self, summary: dict, classes: np.ndarray, truth: np.ndarray) -> None:
        n_regions, _ = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
        self.regions += n_regions - 1
        for d in summary["detections"]:
            c0, r0, c1, r1 = d["bbox_px"]
            sel = classes[r0:r1 + 1, c0:c1 + 1] > 0
            if not sel.any():
                continue
            self.n += 1
            self.true += bool(truth[r0:r1 + 1, c0:c1 + 1][sel].mean() >= 0.3)
            self.area += d["area_m2"]
            self.trench_area += d["area_m2"] if d["class"] == "trench" else 0.0
            self.vessels += d["class"] == "vessel"

    def row(self, name: str) -> str:
        return (f"{name:<18} objects: {self.n} detections for {self.regions} labelled regions, precision "
                f"{self.true / max(self.n, 1):.3f}, trench area {self.trench_area / max(self.area, 1e-9):.3f}, "
                f"vessels {self.vessels}")


def pair_files(pair: T.LabelledPair, work: Path) -> tuple[Path, Path]:
    """One raster per date: OSCD's band files stacked into a GeoTIFF each (``detect`` aligns the grids)."""
    if len(pair.before) == 1:
        return Path(pair.before[0]), Path(pair.after[0])
    paths = []
    for tag, files in (("before", pair.before), ("after", pair.after)):
        img, _, tr, crs, _ = T.read_stack(files)
        path = work / f"{pair.group}_{tag}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=img.shape[2], height=img.shape[1], count=img.shape[0],
                           dtype="float32", crs=crs, transform=tr) as dst:
            dst.write(img)
        paths.append(path)
    return paths[0], paths[1]


def fold_models(pairs: list[T.LabelledPair], held: list[str], work: Path, folds: bool) -> dict[str, Path]:
    """A model file per held-out site: the default recipe without that site's pairs."""
    models: dict[str, Path] = {}
    if not folds or not held:
        return {g: learned.DEFAULT_MODEL for g in held}
    t0 = time.perf_counter()
    samples = []
    for i, p in enumerate(pairs):
        arrs = T.read_pair(p)
        samples.append(T.sample_pair(arrs, T.samples_per_pair(arrs), 2, np.random.default_rng([0, i]), p.weight))
    print(f"  encoded {len(pairs)} training pairs in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    for g in held:
        keep = [s for p, s in zip(pairs, samples) if p.group != g]
        t1 = time.perf_counter()
        hd = T.fit_head(T.concat(keep))
        models[g] = work / "models" / f"{g}.npz"
        head_mod.save(head_mod.Head(hd.mean, hd.scale, hd.weights, hd.biases, hd.threshold,
                                    {"held_out": g}), models[g])
        print(f"  fold without {g}: {time.perf_counter() - t1:.0f} s, threshold {hd.threshold:.3f}",
              file=sys.stderr, flush=True)
    return models


def run_real(work: Path, only: set[str] | None, folds: bool) -> list[str]:
    datasets = {d: rp.dev_pairs(d) for d in DEV}
    datasets["ms-hs-bcd-test"] = rp.train_pairs("test")
    datasets = {d: ps for d, ps in datasets.items() if ps and (not only or d in only)}
    held = sorted({p.group for d, ps in datasets.items() if d != "ms-hs-bcd-test" for p in ps})
    train_pairs = rp.default_pairs(work / "synth") if folds else []
    models = fold_models(train_pairs, held, work, folds)
    rows = []
    for dataset, pairs in datasets.items():
        pools = {m: Pool() for m in METHODS}
        objs = Objects()
        for pair in pairs:
            model = models.get(pair.group, learned.DEFAULT_MODEL)
            a_path, b_path = pair_files(pair, work)
            arrs = T.read_pair(pair)
            truth, valid = arrs.truth > 0.5, arrs.valid
            hd = head_mod.load(model)
            prob = lscore.whole_probability(arrs.before, arrs.after, valid, arrs.stretch, hd)
            f = {"learned": pools["learned"].add(prob >= hd.threshold, truth, valid)}
            raw_b, _, _, _, _ = T.read_stack(pair.before)
            raw_a = T.read_stack(pair.after)[0] if len(pair.after) == 1 else arrs.after  # OSCD: on before's grid
            f["cva"] = pools["cva"].add(baseline(raw_b.astype(np.float64), raw_a.astype(np.float64)), truth, valid)
            for method, sets in (("classical", ["model.enabled=false"]), ("default", [f"model.path={model}"])):
                out = work / "runs" / method / pair.group
                res = detect_pair(a_path, b_path, out, build_config(sets=sets), gsd_m=GSD[dataset])
                with rasterio.open(out / "change_mask.tif") as m:
                    mask = m.read(1)
                h, w = mask.shape  # the output grid is the overlap: a smaller after crops it
                f[method] = pools[method].add(mask == 1, truth[:h, :w], (mask != 255) & valid[:h, :w])
                if method == "default":
                    with rasterio.open(out / "change_class.tif") as c:
                        objs.add(res.summary, c.read(1), truth[:h, :w])
            print(f"  {dataset}/{pair.group}: " + ", ".join(f"{m} {f[m]:.3f}" for m in METHODS)
                  + f" (truth {truth.mean():.3f})", file=sys.stderr, flush=True)
        rows += [pools[m].row(dataset, m) for m in METHODS]
        base = max(pools["cva"].f1, 1e-9)
        rows.append(f"{'':<18} {'ratio':<10} default / cva {pools['default'].f1 / base:.2f}, "
                    f"learned / cva {pools['learned'].f1 / base:.2f}")
        rows.append(objs.row(dataset))
        print("\n".join(rows[-6:]), file=sys.stderr, flush=True)  # each dataset's table as soon as it is done
    return rows


def run_synth(n: int, size: int, work: Path) -> list[str]:
    rows = []
    for difficulty in synth.DIFFICULTIES:
        ours, classical, base = Pool(), Pool(), Pool()
        for i in range(n):
            scenario = synth.SCENARIOS[i % 3]
            scene = synth.make_scene(scenario, seed=20_000 + i, size=size, difficulty=difficulty)
            folder = work / f"synth_{difficulty}_{i}"
            synth.write_scene(scene, folder)
            for pool, sets in ((ours, []), (classical, ["model.enabled=false"])):
                detect_pair(folder / "before.tif", folder / "after.tif", folder / "out", build_config(sets=sets))
                with rasterio.open(folder / "out" / "change_mask.tif") as m:
                    mask = m.read(1)
                pool.add(mask == 1, scene.truth_class > 0, mask != 255)
            base.add(baseline(scene.before[:3].astype(float), scene.after[:3].astype(float)), scene.truth_class > 0)
        rows += [base.row(f"synth-{difficulty}", "cva"), classical.row(f"synth-{difficulty}", "classical"),
                 ours.row(f"synth-{difficulty}", "default")]
        print(f"  synth {difficulty} done", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synth-n", type=int, default=0, help="synth scenes per difficulty (0: none)")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--only", help="comma-separated datasets")
    ap.add_argument("--no-folds", action="store_true",
                    help="score dev pairs with the shipped model (seen in training: not a result)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory(prefix="changedet-acc-") as tmp:
        work = Path(tmp)
        rows = []
        if rp.REALDATA.is_dir():
            rows += run_real(work, only, not args.no_folds)
        else:
            rows.append(f"real data: skipped ({rp.REALDATA} not found)")
        if args.synth_n > 0:
            rows += run_synth(args.synth_n, args.size, work)
    print(f"{'dataset':<18} {'method':<10} {'precision':>9} {'recall':>7} {'F1':>7} {'IoU':>7}")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
