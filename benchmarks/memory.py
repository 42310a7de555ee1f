"""Peak memory of ``changedet detect`` as tiles grow (issue 2, criterion 5).

Writes synthetic 4-band uint16 pairs of 1024², 2048² and 4096² pixels window by
window (an analytic texture, so the after image can be shifted exactly, plus
new rectangles), runs ``changedet detect`` on each in a fresh process and prints
a table of peak resident memory (ru_maxrss of the child) and time.

    python benchmarks/memory.py [--sizes 1024 2048 4096] [--keep DIR]

Targets: the 4096² peak under 1.5 GB and under 2x the 1024² peak; the learned stage (issue 11)
under 2 s per megapixel on 2 cores (the ``learned s/MPix`` column, from the run's timings).
"""

from __future__ import annotations

import argparse
import json
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
                rows, cols = np.mgrid[r:r + WIN, c:c + WIN].astype(np.float64)
                base = _texture(rows, cols, waves)
                moved = _texture(rows - dy, cols - dx, waves)  # after(x + d) = before(x)
                for hr, hc in huts:
                    inside = (rows - dy >= hr) & (rows - dy < hr + 30) & (cols - dx >= hc) & (cols - dx < hc + 20)
                    moved[inside] += 40
                noise = np.random.default_rng([seed, r, c]).normal(0, 0.5, size=(2, 4) + rows.shape)
                before = 1000 + 12 * base[None] * gains[:, None, None] + 8 * noise[0]
                after = 1.1 * (1000 + 12 * moved[None] * gains[:, None, None]) + 30 + 8 * noise[1]
                w = Window(c, r, WIN, WIN)
                b_ds.write(np.clip(before, 0, 65535).astype("uint16"), window=w)
                a_ds.write(np.clip(after, 0, 65535).astype("uint16"), window=w)
    return paths


def run_detect(before: Path, after: Path, out: Path) -> tuple[float, float, dict]:
    """Run detect in a child process; return (peak RSS MB, seconds, summary)."""
    code = (
        "import resource, sys, json\n"
        "from changedet.pipeline import detect_pair\n"
        "detect_pair(sys.argv[1], sys.argv[2], sys.argv[3])\n"
        "print(json.dumps({'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(before), str(after), str(out)], check=True,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_mb = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024.0
    summary = json.loads((out / "summary.json").read_text())
    return peak_mb, seconds, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--keep", type=Path, help="keep the pairs and outputs in this folder")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="changedet-mem-"))
    rows = []
    for size in args.sizes:
        folder = base / f"pair_{size}"
        folder.mkdir(parents=True, exist_ok=True)
        before, after = write_pair(folder, size)
        peak, secs, summary = run_detect(before, after, folder / "out")
        learned_s = summary.get("timings_s", {}).get("learned", 0.0)
        rows.append((size, peak, secs, summary["registration"]["shift_px"], len(summary["detections"]), learned_s))
    first = rows[0][1]
    print(f"{'size':>6} {'peak RSS MB':>12} {'x smallest':>10} {'seconds':>8} {'s/MPix':>7} {'learned s/MPix':>14}"
          "  shift_px (truth [1.3, -0.6])  detections")
    for size, peak, secs, shift, ndet, learned_s in rows:
        mp = size * size / 1e6
        print(f"{size:>5}² {peak:>12.0f} {peak / first:>10.2f} {secs:>8.1f} {secs / mp:>7.2f} {learned_s / mp:>14.2f}"
              f"  {str(shift):<28} {ndet}")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
