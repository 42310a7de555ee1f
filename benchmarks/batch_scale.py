"""Batch scaling: 8 sample-size sites, serial vs ``--workers N`` on a local dask cluster.

Copies the bundled sample tiles (trenches, camp, port, cycled) into 8 site folders of a temp dir,
runs ``changedet batch`` serially and with ``--workers N`` (default 2) through the CLI, and prints
the wall times, the speed-up and whether every output file is the same (JSON without its clock).

    python benchmarks/batch_scale.py [--workers 2] [--sites 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
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


def run(manifest: Path, out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "changedet", "-q", "batch", str(manifest), "--out", str(out), *extra],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"batch {' '.join(extra)} exited {proc.returncode}: {proc.stderr.strip()}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--keep", type=Path, help="build the sites here and keep them (default: a temp dir)")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="batch_scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        manifest = make_sites(tmp, args.sites)
        serial = run(manifest, tmp / "serial")
        parallel = run(manifest, tmp / "parallel", "--workers", str(args.workers))
        same = folder(tmp / "serial") == folder(tmp / "parallel")
        print(f"{args.sites} sites: serial {serial:.1f} s, --workers {args.workers} {parallel:.1f} s, "
              f"speed-up {serial / parallel:.2f}x, outputs identical: {same}")
        if not same:
            sys.exit(1)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
