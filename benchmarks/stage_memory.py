"""Where ``detect``'s memory goes, stage by stage (issue 15): measurement only.

Runs ``detect_pair`` in this process on the synthetic pair of ``benchmarks/scale.py`` (written
once into ``--pairs`` and reused) while a thread samples the resident set (``VmRSS`` of
``/proc/self/status``) every few milliseconds. Prints, per stage of the run (the ``timings_s``
stages, refined by the progress stage inside them, e.g. ``decide/significance``), the highest
resident set seen and the seconds spent, then the whole run's peak (``VmHWM``) and bytes per pixel.

    python benchmarks/stage_memory.py --size 2745 --workers 2 [--pairs /tmp/pairs] [--out DIR]
    python benchmarks/stage_memory.py --size 5490 --workers 2 --json rss_5490.json
    python benchmarks/stage_memory.py --size 1372 --width 40000   # a strip: memory against the width

Linux only (``/proc``). Sampling misses peaks shorter than ``--every-ms``; ``VmHWM`` does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402  (benchmarks/scale.py: the synthetic pair)


def _status(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Highest resident set per stage label, sampled on a thread."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.stage = "start"
        self.sub = ""
        self.peaks: dict[str, int] = {}
        self.order: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def label(self) -> str:
        return self.stage + (f"/{self.sub}" if self.sub and self.sub != self.stage else "")

    def note(self) -> None:
        key = self.label()
        rss = _status("VmRSS")
        if key not in self.peaks:
            self.order.append(key)
        self.peaks[key] = max(self.peaks.get(key, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.note()
            time.sleep(self.every_s)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2745, help="tile side of the generated 4-band uint16 pair (default 2745)")
    ap.add_argument("--width", type=int, default=None,
                    help="columns of the pair when not square (--size is then its rows): memory against the width")
    ap.add_argument("--workers", type=int, default=2, help="detect --workers (default 2)")
    ap.add_argument("--pairs", default=None, help="folder keeping the generated pairs (default: a temporary one)")
    ap.add_argument("--out", default=None, help="output folder of the run (default: a temporary one)")
    ap.add_argument("--every-ms", type=float, default=20.0, help="how often resident memory is sampled (default 20 ms)")
    ap.add_argument("--set", action="append", default=[], help="config KEY=VALUE (as detect --set)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    from changedet import pipeline
    from changedet.config import load_config

    tmp = tempfile.TemporaryDirectory()
    pairs = Path(args.pairs or tmp.name)
    pairs.mkdir(parents=True, exist_ok=True)
    name = str(args.size) if args.width is None else f"{args.size}x{args.width}"
    before, after = pairs / f"before_{name}.tif", pairs / f"after_{name}.tif"
    if not (before.exists() and after.exists()):
        scale.write_pair(pairs, args.size, width=args.width)
    out = Path(args.out) if args.out else Path(tmp.name) / "run"
    cfg = load_config(sets=[f"processing.workers={args.workers}", *args.set])

    sampler = Sampler(args.every_ms / 1000)
    timer_call = pipeline._Timer.__call__

    @contextmanager
    def staged(self: Any, name: str) -> Iterator[None]:
        sampler.note()
        sampler.stage, sampler.sub = name, ""
        with timer_call(self, name):
            yield
        sampler.note()
        sampler.stage, sampler.sub = "between", ""

    def progress(stage: str, done: int, total: int) -> None:
        if stage != sampler.sub:
            sampler.note()
            sampler.sub = stage

    pipeline._Timer.__call__ = staged  # type: ignore[method-assign]
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    with sampler:
        result = pipeline.detect_pair(before, after, out, cfg, progress=progress)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    px = args.size * (args.width or args.size)
    hwm = _status("VmHWM")
    print(f"size {name} workers {args.workers}: wall {wall:.1f} s, cpu {100 * cpu / wall:.0f} %, "
          f"peak {hwm / 2**20:.0f} MB ({hwm / px:.1f} B/px), scratch {result.summary['run']['scratch_peak_mb']} MB")
    print(f"{'stage':<28} {'peak MB':>8} {'B/px':>6}")
    for key in sampler.order:
        print(f"{key:<28} {sampler.peaks[key] / 2**20:>8.0f} {sampler.peaks[key] / px:>6.1f}")
    print("timings_s", json.dumps(result.summary["timings_s"]))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "size": args.size, "width": args.width or args.size, "workers": args.workers, "wall_s": wall,
            "cpu_pct": 100 * cpu / wall, "scratch_peak_mb": result.summary["run"]["scratch_peak_mb"],
            "peak_mb": hwm / 2**20, "stages_mb": {k: sampler.peaks[k] / 2**20 for k in sampler.order},
            "timings_s": result.summary["timings_s"]}, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
