"""Batch scaling: 8 sample-size sites, serial vs ``--workers N`` on a local dask cluster.

Copies the bundled sample tiles (trenches, camp, port, cycled) into 8 site folders of a temp dir,
runs ``changedet batch`` serially and with ``--workers N`` (default 2) through the CLI, and prints
the wall times, the speed-up and whether every output file is the same (JSON without its clock).
``--repeat R`` runs R such pairs, each speed-up from its own pair (on a shared machine the load
changes between pairs). Each run's breakdown: the sites' own seconds (sum and range), the rest of
the wall time (start-up, imports, the batch's own files), and for the parallel run the cluster's
start, when the last site finished, the close, and the load average before the run.

    python benchmarks/batch_scale.py [--workers 2] [--sites 8] [--repeat 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from changedet.compare import clockless  # noqa: E402
SAMPLES = ("trenches", "camp", "port")


def make_sites(folder: Path, n: int) -> Path:
    """``n`` site folders of copied sample tiles and their manifest; returns the manifest."""
    lines = []
    for i in range(n):
        src = ROOT / "sample_tiles" / SAMPLES[i % len(SAMPLES)]
        dst = folder / "sites" / f"site{i:02d}"
        dst.mkdir(parents=True)
        for name in ("before.tif", "after.tif"):
            shutil.copy(src / name, dst / name)
        lines.append(f"  - {{name: site{i:02d}, before: sites/site{i:02d}/before.tif, after: sites/site{i:02d}/after.tif}}")
    manifest = folder / "sites.yaml"
    manifest.write_text("sites:\n" + "\n".join(lines) + "\n")
    return manifest


def folder(out: Path) -> dict[str, object]:
    return {str(p.relative_to(out)): clockless(p) for p in sorted(out.rglob("*")) if p.is_file()}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").is_file() else "?"


def run(manifest: Path, out: Path, *extra: str) -> tuple[float, str]:
    """The wall time of one ``changedet batch`` and its breakdown as one line."""
    before = load()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "changedet", "-q", "-v", "batch", str(manifest), "--out", str(out),
                           *extra], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"batch {' '.join(extra)} exited {proc.returncode}: {proc.stderr.strip()}")
    sites = [s["seconds"] for s in json.loads((out / "batch_summary.json").read_text())["sites"]]
    line = (f"wall {seconds:.1f} s, sites {sum(sites):.1f} s ({min(sites):.2f}-{max(sites):.2f}), "
            f"rest {seconds - sum(sites) / max(1, _workers(extra)):.1f} s")
    up = re.search(r"local cluster of \d+ workers up in ([\d.]+) s", proc.stderr)
    last = re.findall(r"done ([\d.]+) s after the first was sent", proc.stderr)
    closed = re.search(r"cluster closed in ([\d.]+) s", proc.stderr)
    if up and last and closed:
        line += f" (cluster up {up[1]} s, last site done {last[-1]} s after sending, closed in {closed[1]} s)"
    return seconds, f"{line}; load before {before}"


def _workers(extra: tuple[str, ...]) -> int:
    return int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="pairs of serial and parallel runs")
    ap.add_argument("--keep", type=Path, help="build the sites here and keep them (default: a temp dir)")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="batch_scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    ratios, same = [], True
    try:
        manifest = make_sites(tmp, args.sites)
        for i in range(args.repeat):
            serial_out, parallel_out = tmp / f"serial{i}", tmp / f"parallel{i}"
            serial, s_line = run(manifest, serial_out)
            parallel, p_line = run(manifest, parallel_out, "--workers", str(args.workers))
            same = same and folder(serial_out) == folder(parallel_out)
            ratios.append(serial / parallel)
            print(f"{args.sites} sites: serial {serial:.1f} s, --workers {args.workers} {parallel:.1f} s, "
                  f"speed-up {serial / parallel:.2f}x, outputs identical: {same}")
            print(f"  serial:   {s_line}\n  parallel: {p_line}", flush=True)
            if args.keep is None:
                shutil.rmtree(serial_out), shutil.rmtree(parallel_out)
        if args.repeat > 1:
            print(f"speed-ups: {', '.join(f'{r:.2f}x' for r in ratios)}; median {sorted(ratios)[len(ratios) // 2]:.2f}x")
        if not same:
            sys.exit(1)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
