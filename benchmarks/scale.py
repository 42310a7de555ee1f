"""How ``detect`` scales with tile size and workers (issue 15): measurement only.

For each size in ``--sizes`` writes a 4-band uint16 tiled GeoTIFF pair (a simple seeded
generator: textured ground, new bright roofs, a 1 px shift) into a temporary folder, then prints
one row per size and worker count:

- ``read_s``: reading both files by 1024² windows (every band), the floor for any windowed pipeline;
- ``detect_s``: ``changedet detect --workers N`` wall time, in a subprocess; ``ratio`` = detect / read;
- ``cpu%``: that subprocess's CPU time (user + system) over its wall time (200 % = two busy cores);
- ``rss_mb``: its peak resident memory (``wait4`` rusage of that child);
- the stage timings of its ``summary.json``: wall seconds and the share of the cores each stage kept
  busy (its CPU seconds over its wall seconds; 200 % = two busy cores);
- ``naive_s`` / ``naive_mb``: a whole-array scikit-image pipeline (phase correlation, shift,
  histogram matching, CVA, SSIM, Otsu, opening, labelling) in a subprocess, where its estimated
  memory fits in what the machine has available (otherwise ``-``).

Ratios are measured in the same run, so they hold on a loaded machine better than absolute times.

    python benchmarks/scale.py                          # 2745, 5490, 10980 with every core
    python benchmarks/scale.py --sizes 2745,5490 --workers 1,2
    python benchmarks/scale.py --sizes 2745 --keep /tmp/pairs   # the pair is written once, then reused
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

BLOCK = 1024
STAGES = ("load", "register", "normalize", "measure", "observe", "learned", "decide", "objects", "write")


def write_pair(folder: Path, size: int, seed: int = 0, width: int | None = None) -> tuple[Path, Path]:
    """A 4-band uint16 pair of ``size`` rows and ``width`` columns (default ``size``), tiled 512²,
    written block by block (memory stays flat)."""
    cols = width or size
    profile = {"driver": "GTiff", "height": size, "width": cols, "count": 4, "dtype": "uint16", "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "crs": "EPSG:32633",
               "transform": from_origin(500000, 5000000, 10.0, 10.0)}
    name = str(size) if width is None else f"{size}x{cols}"
    paths = folder / f"before_{name}.tif", folder / f"after_{name}.tif"
    with rasterio.open(paths[0], "w", **profile) as b, rasterio.open(paths[1], "w", **profile) as a:
        for r in range(0, size, BLOCK):
            for c in range(0, cols, BLOCK):
                h, w = min(BLOCK, size - r), min(BLOCK, cols - c)
                before, after = _block(seed, r, c, h + 1, w + 1)
                win = Window(c, r, w, h)
                b.write(before[:, :h, :w], window=win)
                after = after[:, 1:h + 1, 1:w + 1] if h > 1 and w > 1 else after[:, :h, :w]  # a 1 px shift
                a.write(np.pad(after, ((0, 0), (0, h - after.shape[1]), (0, w - after.shape[2])), mode="edge"),
                        window=win)
    return paths


def _block(seed: int, r: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, r, c])
    coarse = rng.normal(0, 1, (4, h // 32 + 2, w // 32 + 2)).astype(np.float32)
    base = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_CUBIC) for x in coarse])
    level = np.array([900, 1100, 1300, 2600], np.float32)[:, None, None]
    before = level + 250 * base + rng.normal(0, 40, (4, h, w)).astype(np.float32)
    after = before + rng.normal(0, 40, (4, h, w)).astype(np.float32)
    for _ in range(int(rng.integers(2, 6))):  # new roofs, 3-12 px a side
        y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
        dy, dx = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        after[:, y:y + dy, x:x + dx] = np.array([2600, 2700, 2800, 3000], np.float32)[:, None, None]
    return np.clip(before, 1, 65535).astype(np.uint16), np.clip(after, 1, 65535).astype(np.uint16)


def read_windows(paths: tuple[Path, Path]) -> float:
    """Seconds to read both files by 1024² windows."""
    t0 = time.perf_counter()
    for p in paths:
        with rasterio.open(p) as ds:
            for r in range(0, ds.height, BLOCK):
                for c in range(0, ds.width, BLOCK):
                    ds.read(window=Window(c, r, min(BLOCK, ds.width - c), min(BLOCK, ds.height - r)))
    return time.perf_counter() - t0


def run_child(args: list[str]) -> tuple[float, float, float, int]:
    """(wall s, cpu s, peak rss MB, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode(errors="replace") if proc.stderr else "")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, proc.returncode


def naive(before: str, after: str) -> None:
    """The whole-array scikit-image pipeline (run in a child by ``--naive``)."""
    from scipy import ndimage
    from skimage import exposure, filters, measure, metrics, morphology, registration

    with rasterio.open(before) as b, rasterio.open(after) as a:
        xb, xa = b.read().astype(np.float32), a.read().astype(np.float32)
    lb, la = xb.mean(axis=0), xa.mean(axis=0)
    shift, _, _ = registration.phase_cross_correlation(lb, la, upsample_factor=10)
    xa = np.stack([ndimage.shift(x, shift, order=1) for x in xa])
    xa = exposure.match_histograms(xa, xb, channel_axis=0)
    cva = np.sqrt(((xa - xb) ** 2).sum(axis=0))
    lb, la = xb.mean(axis=0), xa.mean(axis=0)
    ssim = metrics.structural_similarity(lb, la, data_range=float(lb.max() - lb.min()))
    mask = cva > filters.threshold_otsu(cva)
    mask = morphology.binary_opening(mask, morphology.disk(1))
    labels = measure.label(mask)
    print(json.dumps({"ssim": float(ssim), "regions": int(labels.max())}))


def naive_fits(size: int) -> bool:
    """Whether the naive pipeline's ~30 float32 copies of one band fit in the memory available."""
    with open("/proc/meminfo") as f:
        avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
    return 30 * 4 * size * size < 0.7 * avail_kb * 1024


def measure(size: int, workers: list[int], tmp: Path, with_naive: bool,
            keep: Path | None = None) -> list[dict[str, Any]]:
    folder = keep or tmp
    paths = folder / f"before_{size}.tif", folder / f"after_{size}.tif"
    if keep is None or not all(p.exists() for p in paths):
        paths = write_pair(folder, size)
    read_s = read_windows(paths)
    naive_row: dict[str, Any] = {"naive_s": None, "naive_mb": None}
    if with_naive and naive_fits(size):
        wall, _, rss, rc = run_child([sys.executable, __file__, "--naive", str(paths[0]), str(paths[1])])
        if rc == 0:
            naive_row = {"naive_s": wall, "naive_mb": rss}
    rows = []
    for n in workers:
        out = tmp / f"run_{size}_{n}"
        wall, cpu, rss, rc = run_child([sys.executable, "-m", "changedet", "--quiet", "detect", str(paths[0]),
                                        str(paths[1]), "--out", str(out), "--workers", str(n)])
        summary = json.loads((out / "summary.json").read_text()) if rc == 0 else {}
        rows.append({"size": size, "workers": n, "read_s": read_s, "detect_s": wall, "ratio": wall / read_s,
                     "cpu_pct": 100 * cpu / wall, "rss_mb": rss, "rc": rc,
                     "stages": summary.get("timings_s", {}),
                     "fraction_seen": summary.get("model", {}).get("fraction_seen"), **naive_row})
    return rows


def identical(tmp: Path, size: int, workers: list[int]) -> bool | None:
    """Whether every worker count wrote the same rasters and detections."""
    if len(workers) < 2:
        return None
    names = ("change_mask.tif", "change_class.tif", "change_score.tif", "detections.geojson")
    first = tmp / f"run_{size}_{workers[0]}"
    return all((first / n).read_bytes() == (tmp / f"run_{size}_{w}" / n).read_bytes()
               for w in workers[1:] for n in names if (first / n).exists())


def _stage(timings: dict[str, float], name: str) -> str:
    """A stage's wall seconds and, where the run recorded its CPU seconds, how busy the cores were:
    ``measure 51.6/190%`` (200 % = two busy cores)."""
    wall, cpu = timings[name], timings.get(f"{name}_cpu")
    return f"{name} {wall:.1f}" + ("" if cpu is None else f"/{100 * cpu / max(wall, 1e-9):.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2745,5490,10980", help="tile sides, comma-separated")
    ap.add_argument("--workers", default="0", help="worker counts, comma-separated (0 = every core)")
    ap.add_argument("--no-naive", action="store_true", help="skip the whole-array scikit-image pipeline")
    ap.add_argument("--tmp", default=None, help="folder for the generated pairs (default: a temporary one)")
    ap.add_argument("--keep", default=None, type=Path,
                    help="folder where the generated pairs are kept and reused by later runs (default: none)")
    ap.add_argument("--naive", nargs=2, metavar=("BEFORE", "AFTER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive:
        naive(*args.naive)
        return
    workers = [int(w) for w in args.workers.split(",")]
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    head = (f"{'size':>6} {'wk':>3} {'read_s':>7} {'detect_s':>9} {'ratio':>6} {'cpu%':>5} {'rss_mb':>7} "
            f"{'naive_s':>8} {'naive_mb':>8} {'seen':>5}  stages")
    print(head)
    with tempfile.TemporaryDirectory(dir=args.tmp) as t:
        for size in (int(s) for s in args.sizes.split(",")):
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
            rows = measure(size, workers, Path(t), not args.no_naive, args.keep)
            for row in rows:
                fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
                stages = " ".join(_stage(row["stages"], k) for k in STAGES if k in row["stages"])
                print(f"{row['size']:>6} {row['workers']:>3} {row['read_s']:>7.2f} {row['detect_s']:>9.2f} "
                      f"{row['ratio']:>6.1f} {row['cpu_pct']:>5.0f} {row['rss_mb']:>7.0f} "
                      f"{fmt(row['naive_s'], '>8.2f')} {fmt(row['naive_mb'], '>8.0f')} "
                      f"{fmt(row['fraction_seen'], '>5.2f')}  {stages}" + ("" if row["rc"] == 0 else f"  FAILED rc {row['rc']}"),
                      flush=True)
            same = identical(Path(t), size, workers)
            if same is not None:
                print(f"{size}: outputs identical across workers {workers}: {same}", flush=True)
            for p in Path(t).glob(f"*_{size}*"):
                if p.is_file():
                    p.unlink()


if __name__ == "__main__":
    main()
