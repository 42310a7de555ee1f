"""The false-alarm budget (issue 12, ``decide.false_alarms_per_km2``): calibration and effect.

Two tables, measured in this one run:

1. **Calibration on pure noise.** A smooth no-change score (blurred Gaussian noise through a
   logistic), cut by a threshold into many regions, at several scene sizes: the regions the test
   keeps per km² against the budget. A calibrated test keeps about the budget, whatever the size.
2. **Effect on scenes with truth.** ``detect`` runs with the test off on the sample tiles, synth
   scenes (``--synth-sizes``; weather none and season) and the labelled real pairs of
   ``../shared/realdata`` (skipped without it); the test is then applied to the mask it decided, at
   each budget, and each region judged true (30 % or more of it labelled change) or false: how many
   of each the budget removes. The default model has seen the real dev pairs in training, so the
   real rows show what the test does to the regions, not held-out accuracy (that is
   ``benchmarks/accuracy.py``).

    python benchmarks/false_alarms.py [--budgets 1 10 30 100] [--synth-sizes 1024] [--no-real]
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from changedet import pipeline, significance, synth, threshold
from changedet.config import build_config

warnings.simplefilter("ignore", NotGeoreferencedWarning)
ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
REAL_GSD = {"levir-cd": 0.5, "levir-cd-1024": 0.5, "dsifn": 2.0, "whu-cd": 0.3, "sztaki-airchange": 1.5}
MIN_TRUE_SHARE = 0.30


def noise_score(size: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    z /= z.std()
    return threshold.quantize(1.0 / (1.0 + np.exp(-(z - 1.5) * 2.0)), np.ones((size, size), bool))


def calibration(budgets: list[float], sizes: list[int]) -> Iterator[str]:
    yield (f"{'size':>6} {'km2':>6} {'cut':>5} {'regions/km2':>11} " + " ".join(f"{'kept@' + f'{b:g}':>9}" for b in budgets))
    for size in sizes:
        for level in (0.6, 0.85):
            q = noise_score(size, 2.0, size)
            mask = (q > level * threshold.LEVELS).astype(np.uint8)
            km2 = size * size / 1e6
            n = cv2.connectedComponents(mask, connectivity=8)[0] - 1
            kept = []
            for b in budgets:
                t = significance.judge_regions(mask, q, np.ones_like(mask, bool), 1.0, level,
                                              lambda s, lv=level: (s > lv * threshold.LEVELS).astype(np.uint8), b)
                kept.append(int(np.count_nonzero(t.nfa_per_km2[1:] <= b)) / km2)
            yield f"{size:>6} {km2:>6.2f} {level:>5.2f} {n / km2:>11.0f} " + " ".join(f"{k:>9.1f}" for k in kept)


class _Capture:
    """What the pipeline hands the test: mask, score, observable, grid, thresholds."""

    def __init__(self) -> None:
        self.args: dict[str, Any] = {}
        self._orig = significance.keep_significant

    def __call__(self, mask, q, observable, gsd_m, per_km2, low, decide):
        self.args = {"mask": mask.copy(), "q": q.copy(), "observable": observable.copy(), "gsd": gsd_m,
                     "low": low, "decide": decide}
        return self._orig(mask, q, observable, gsd_m, per_km2, low, decide)


def judge(name: str, before: str, after: str, gsd: float | None, truth: np.ndarray, budgets: list[float],
          work: Path, cap: _Capture) -> str:
    cfg = build_config(sets=["decide.false_alarms_per_km2=0"])
    pipeline.detect_pair(before, after, work / name, cfg, site=name, gsd_m=gsd)
    a = cap.args
    mask, q = a["mask"], a["q"]
    ignore = (truth == 255) | (mask == 255)
    is_change = (truth > 0) & ~ignore
    line = ""
    n_true = n_false = 0
    for b in budgets:
        t = significance.judge_regions(mask, q, a["observable"], a["gsd"], a["low"], a["decide"], b)
        n = len(t.area_px)
        observed = np.bincount(t.labels[~ignore], minlength=n)
        changed = np.bincount(t.labels[is_change], minlength=n)
        judged = observed > 0
        judged[0] = False
        true = judged & (changed >= MIN_TRUE_SHARE * observed)
        false = judged & ~true
        n_true, n_false = int(true.sum()), int(false.sum())
        gone = t.nfa_per_km2 > b
        line += f" {int((true & gone).sum()):>4}/{int((false & gone).sum()):<4}"
    return f"{name[:34]:<34} {n_true:>5} {n_false:>5} |" + line


def scenes(synth_sizes: list[int], real: bool, work: Path) -> list[tuple[str, str, str, float | None, np.ndarray]]:
    out = []
    for s in ("camp", "port", "trenches"):
        d = ROOT / "sample_tiles" / s
        with rasterio.open(d / "truth_class.tif") as ds:
            out.append((f"sample_{s}", str(d / "before.tif"), str(d / "after.tif"), None, ds.read(1)))
    for size in synth_sizes:
        for scenario in synth.SCENARIOS:
            for weather in ("none", "season"):
                d = work / f"synth_{scenario}_{size}_{weather}"
                sc = synth.make_scene(scenario, seed=12000, size=size, difficulty="medium", weather=weather)
                synth.write_scene(sc, d)
                out.append((d.name, str(d / "before.tif"), str(d / "after.tif"), None, sc.truth_class))
    if real and REALDATA.is_dir():
        for ds_name, gsd in REAL_GSD.items():
            for lab in sorted(glob.glob(str(REALDATA / ds_name / "label" / "*"))):
                stem = Path(lab).stem
                a = glob.glob(str(REALDATA / ds_name / "A" / f"{stem}.*"))[0]
                b = glob.glob(str(REALDATA / ds_name / "B" / f"{stem}.*"))[0]
                with rasterio.open(lab) as ds:
                    truth = np.where(ds.read(1) > 127, 1, 0).astype(np.uint8)
                out.append((f"{ds_name}_{stem}", a, b, gsd, truth))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", nargs="+", type=float, default=[1, 10, 30, 100])
    ap.add_argument("--noise-sizes", nargs="+", type=int, default=[512, 2048])
    ap.add_argument("--synth-sizes", nargs="*", type=int, default=[1024])
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    print("1. pure noise: regions kept per km2 at each budget (a calibrated test keeps about the budget)")
    for row in calibration(args.budgets, args.noise_sizes):
        print(row, flush=True)
    print("\n2. regions removed at each budget, true/false (test off: true, false regions)")
    print(f"{'scene':<34} {'true':>5} {'false':>5} |" + "".join(f" {'@' + f'{b:g}':>9}" for b in args.budgets))
    cap = _Capture()
    significance.keep_significant = cap
    pipeline.significance.keep_significant = cap
    with tempfile.TemporaryDirectory(prefix="changedet-fa-") as tmp:
        work = Path(tmp)
        for name, before, after, gsd, truth in scenes(args.synth_sizes, not args.no_real, work):
            print(judge(name, before, after, gsd, truth, args.budgets, work, cap), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
