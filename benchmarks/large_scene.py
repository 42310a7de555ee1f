"""False alarms against scene size and weather (issue 12): measurement only, default configuration.

For each scenario x size x difficulty x weather x seed, writes a ``changedet synth`` scene into
``--out``, runs :func:`changedet.detect_pair` with the default configuration and prints one row:

- pixel precision / recall / F1 over pixels the truth observes (truth 255 and output 255 left out);
- objects: the output's detections (its connected regions, fragments of one merged line counted
  once, as ``changedet eval`` counts them). A detection is *true* when at least 30 % of its
  observable pixels are truth change, *false* otherwise; one with no observable pixel (wholly
  under cloud, shadow or thick haze) is neither. Object precision = true / (true + false);
  object recall = observable truth objects touched by a detected pixel / observable truth objects;
- ``false`` and ``false/km2``: false detections, per km² of observable ground;
  ``det/km2``: all detections per km² of the whole scene;
- for scenes with cloud: of the cloud and cloud-shadow pixels (``truth_weather.tif`` 1 and 2),
  the share the output wrote 255 (``cl255``) and the share it flagged 1, change (``cl1``).

    python benchmarks/large_scene.py                      # 3 scenarios x 1024, 4096 x medium, hard x none, all
    python benchmarks/large_scene.py --sizes 1024 --weather none all cloud season
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from changedet import synth
from changedet.evaluate import _predicted_objects, pixel_scores
from changedet.pipeline import detect_pair

MIN_TRUE_SHARE = 0.30  # a detection is true when this share of its observable pixels is truth change


def score(scene: synth.Scene, out_dir: Path) -> dict[str, Any]:
    """The row's numbers for one scene and its ``detect`` output folder."""
    with rasterio.open(out_dir / "change_mask.tif") as ds:
        mask = ds.read(1)
    summary = json.loads((out_dir / "summary.json").read_text())
    ignored = scene.truth_class == 255
    truth = (scene.truth_class > 0) & ~ignored
    pix = pixel_scores(mask == 1, truth, (mask != 255) & ~ignored)
    labels, _ = _predicted_objects(mask, summary)
    n = int(labels.max()) + 1
    present = np.bincount(labels.ravel(), minlength=n)[1:] > 0
    observable_px = np.bincount(labels[~ignored], minlength=n)[1:]
    true_px = np.bincount(labels[truth], minlength=n)[1:]
    judged = present & (observable_px > 0)
    is_true = judged & (true_px >= MIN_TRUE_SHARE * observable_px)
    n_true, n_false = int(is_true.sum()), int((judged & ~is_true).sum())
    visible = [o for o, f in zip(scene.objects, scene.observable_fraction or [1.0] * len(scene.objects)) if f > 0]
    hit = np.bincount(scene.truth_instances[(mask == 1) & ~ignored].astype(np.int64),
                      minlength=len(scene.objects) + 1)
    found = sum(hit[o.id] > 0 for o in visible)
    px_km2 = scene.gsd_m ** 2 / 1e6
    obs_km2 = float((~ignored).sum()) * px_km2
    row = {"p": pix.precision, "r": pix.recall, "f1": pix.f1,
           "obj_p": n_true / (n_true + n_false) if n_true + n_false else 1.0,
           "obj_r": found / len(visible) if visible else 1.0, "n_truth": len(visible),
           "n_det": int(present.sum()), "false": n_false, "false_km2": n_false / obs_km2 if obs_km2 else float("nan"),
           "det_km2": int(present.sum()) / (ignored.size * px_km2), "obs_km2": obs_km2,
           "cl255": None, "cl1": None}
    if scene.weather_mask is not None:
        cloud = np.isin(scene.weather_mask, (synth.WEATHER_CODES["cloud"], synth.WEATHER_CODES["shadow"]))
        if cloud.any():
            row["cl255"] = float((mask[cloud] == 255).mean())
            row["cl1"] = float((mask[cloud] == 1).mean())
    return row


def run_one(scenario: str, size: int, difficulty: str, weather: str, seed: int, out: Path) -> dict[str, Any]:
    name = f"{scenario}_{size}_{difficulty}_{weather.replace(',', '+')}_{seed}"
    folder = out / name
    t0 = time.perf_counter()
    scene = synth.make_scene(scenario, seed=seed, size=size, difficulty=difficulty, weather=weather)
    synth.write_scene(scene, folder)
    t1 = time.perf_counter()
    detect_pair(folder / "before.tif", folder / "after.tif", folder / "out")
    t2 = time.perf_counter()
    row = {"scenario": scenario, "size": size, "difficulty": difficulty, "weather": weather, "seed": seed,
           **score(scene, folder / "out"), "gen_s": t1 - t0, "detect_s": t2 - t1}
    return row


HEADER = (f"{'scenario':<9}{'size':>5} {'diff':<6} {'weather':<8}{'seed':>5} {'P':>6}{'R':>6}{'F1':>6} "
          f"{'objP':>6}{'objR':>6}{'truth':>6}{'det':>5}{'false':>6}{'false/km2':>10}{'det/km2':>9}"
          f"{'obs_km2':>8}{'cl255':>7}{'cl1':>6}{'gen_s':>7}{'det_s':>7}")


def fmt(r: dict[str, Any]) -> str:
    share = lambda v: "     -" if v is None else f"{v:6.3f}"  # noqa: E731
    return (f"{r['scenario']:<9}{r['size']:>5} {r['difficulty']:<6} {r['weather']:<8}{r['seed']:>5} "
            f"{r['p']:6.3f}{r['r']:6.3f}{r['f1']:6.3f}{r['obj_p']:6.3f}{r['obj_r']:6.3f}{r['n_truth']:>6}"
            f"{r['n_det']:>5}{r['false']:>6}{r['false_km2']:>10.1f}{r['det_km2']:>9.1f}{r['obs_km2']:>8.3f}"
            f" {share(r['cl255'])} {share(r['cl1'])}{r['gen_s']:>7.1f}{r['detect_s']:>7.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--scenarios", nargs="+", default=list(synth.SCENARIOS), choices=synth.SCENARIOS)
    ap.add_argument("--difficulties", nargs="+", default=["medium", "hard"], choices=synth.DIFFICULTIES)
    ap.add_argument("--weather", nargs="+", default=["none", "all"],
                    help="weather specs as for synth --weather, e.g. none all cloud,haze")
    ap.add_argument("--seeds", nargs="+", type=int, default=[12000])
    ap.add_argument("--out", type=Path, default=Path("build/large_scene"),
                    help="folder for the scenes, detect outputs and large_scene.csv")
    args = ap.parse_args()
    for w in args.weather:
        try:
            synth.parse_weather(w)
        except ValueError as exc:
            ap.error(f"--weather {w!r}: {exc}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(HEADER, flush=True)
    for size in args.sizes:
        for scenario in args.scenarios:
            for difficulty in args.difficulties:
                for weather in args.weather:
                    for seed in args.seeds:
                        rows.append(run_one(scenario, size, difficulty, weather, seed, args.out))
                        print(fmt(rows[-1]), flush=True)
    with open(args.out / "large_scene.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nobject true when >= {MIN_TRUE_SHARE:.0%} of its observable pixels are truth change; false/km2 per km2 "
          f"observable, det/km2 per km2 of scene; cl255 / cl1: share of cloud+shadow pixels the output wrote 255 / 1")
    print(f"rows also in {args.out / 'large_scene.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
