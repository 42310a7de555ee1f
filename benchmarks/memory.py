"""Peak memory of ``changedet detect`` as tiles grow (issue 2, criterion 5; issue 15).

Writes synthetic 4-band uint16 pairs of 1024², 2048² and 4096² pixels window by
window (an analytic texture, so the after image can be shifted exactly, plus
new rectangles), runs ``changedet detect`` on each in a fresh process and prints
a table of peak resident memory (ru_maxrss of the child) and time.

    python benchmarks/memory.py [--sizes 1024 2048 4096] [--keep DIR] [--set KEY=VALUE ...]
                                [--compare OTHER_CHECKOUT]

``--compare`` runs every pair also with the package of another checkout (e.g. a worktree of
main) and prints both rows, so a change's effect on the peak is measured on the same pairs.
Issue 15's sizes: ``--sizes 2745 5490 10980`` (the peak at 10980² under 1.5 GB and under 1.3x
the 2745² peak).

Targets: the 4096² peak under 1.5 GB and under 2x the 1024² peak; the learned stage (issue 11)
under 2 s per megapixel on 2 cores (the ``learned s/MPix`` column, from the run's timings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

WIN = 512


def _texture(rows: np.ndarray, cols: np.ndarray, waves: np.ndarray) -> np.ndarray:
    out = np.zeros(rows.shape, dtype=np.float64)
    for fy, fx, phase, amp in waves:
        out += amp * np.sin(2 * np.pi * (fx * cols + fy * rows) + phase)
    return out


def write_pair(folder: Path, size: int, seed: int = 0, shift: tuple[float, float] = (1.3, -0.6)) -> tuple[Path, Path]:
    """A before/after pair of ``size``² pixels, written window by window."""
    rng = np.random.default_rng(seed)
    n = 60
    freqs = rng.uniform(-0.12, 0.12, size=(n, 2))
    waves = np.column_stack([freqs, rng.uniform(0, 2 * np.pi, n), 1.0 / (0.02 + np.hypot(*freqs.T))])
    gains = np.array([1.0, 0.9, 0.8, 1.3])
    huts = rng.integers(0, size - 40, size=(max(4, size // 256), 2))
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", crs="EPSG:32637",
                   transform=Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    paths = folder / "before.tif", folder / "after.tif"
    dx, dy = shift
    with rasterio.open(paths[0], "w", **profile) as b_ds, rasterio.open(paths[1], "w", **profile) as a_ds:
        for r in range(0, size, WIN):
            for c in range(0, size, WIN):
                hh, ww = min(WIN, size - r), min(WIN, size - c)  # sizes need not be multiples of WIN
                rows, cols = np.mgrid[r:r + hh, c:c + ww].astype(np.float64)
                base = _texture(rows, cols, waves)
                moved = _texture(rows - dy, cols - dx, waves)  # after(x + d) = before(x)
                for hr, hc in huts:
                    inside = (rows - dy >= hr) & (rows - dy < hr + 30) & (cols - dx >= hc) & (cols - dx < hc + 20)
                    moved[inside] += 40
                noise = np.random.default_rng([seed, r, c]).normal(0, 0.5, size=(2, 4) + rows.shape)
                before = 1000 + 12 * base[None] * gains[:, None, None] + 8 * noise[0]
                after = 1.1 * (1000 + 12 * moved[None] * gains[:, None, None]) + 30 + 8 * noise[1]
                w = Window(c, r, ww, hh)
                b_ds.write(np.clip(before, 0, 65535).astype("uint16"), window=w)
                a_ds.write(np.clip(after, 0, 65535).astype("uint16"), window=w)
    return paths


def run_detect(before: Path, after: Path, out: Path, sets: list[str] = (), tree: Path | None = None
               ) -> tuple[float, float, dict]:
    """Run detect in a child process (with the package of ``tree`` first on the path when given);
    return (peak RSS MB, seconds, summary)."""
    code = (
        "import resource, sys, json\n"
        "from changedet.config import build_config\n"
        "from changedet.pipeline import detect_pair\n"
        "cfg = build_config(sets=sys.argv[4:]) if sys.argv[4:] else None\n"
        "detect_pair(sys.argv[1], sys.argv[2], sys.argv[3], cfg)\n"
        "print(json.dumps({'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(before), str(after), str(out), *sets], check=True,
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    peak_mb = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024.0
    summary = json.loads((out / "summary.json").read_text())
    return peak_mb, seconds, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--keep", type=Path, help="keep the pairs and outputs in this folder")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--compare", type=Path, help="another checkout (its folder holding changedet/) to run too")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="changedet-mem-"))
    trees = [("this", Path(__file__).resolve().parents[1])] + ([("compare", args.compare.resolve())] if args.compare else [])
    rows = []
    for size in args.sizes:
        folder = base / f"pair_{size}"
        folder.mkdir(parents=True, exist_ok=True)
        before, after = write_pair(folder, size)
        for name, tree in trees:
            peak, secs, summary = run_detect(before, after, folder / f"out_{name}", args.sets, tree)
            learned_s = summary.get("timings_s", {}).get("learned", 0.0)
            rows.append((name, size, peak, secs, summary["registration"]["shift_px"], len(summary["detections"]),
                         learned_s))
            print(f"  {name} {size}²: {peak:.0f} MB, {secs:.0f} s", file=sys.stderr, flush=True)
    first = {name: next(r[2] for r in rows if r[0] == name) for name, _ in trees}
    print(f"{'code':>8} {'size':>6} {'peak RSS MB':>12} {'x smallest':>10} {'seconds':>8} {'s/MPix':>7} "
          f"{'learned s/MPix':>14}  shift_px (truth [1.3, -0.6])  detections")
    for name, size, peak, secs, shift, ndet, learned_s in rows:
        mp = size * size / 1e6
        print(f"{name:>8} {size:>5}² {peak:>12.0f} {peak / first[name]:>10.2f} {secs:>8.1f} {secs / mp:>7.2f} "
              f"{learned_s / mp:>14.2f}  {str(shift):<28} {ndet}")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
