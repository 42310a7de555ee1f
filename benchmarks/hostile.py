"""Hostile inputs and faults against the installed CLI (issue 13): a matrix of cases, a table, a count.

Every case makes its own files under a fresh folder, runs ``changedet`` in a child process with
its own TMPDIR, and checks what the README promises: exit 0 with the whole output contract, or
exit 2 (130/143 for signals, 1 for a batch with a failed site) with ONE stderr line
``changedet: error: …`` naming the file or option, and nothing left behind (no output folder, no
``.NAME.changedet-*`` staging folder, no ``changedet-*`` scratch in TMPDIR). A case that cannot be
set up on this machine (a tmpfs mount without root, say) is reported as ``n/a``, not as handled.

    python benchmarks/hostile.py [--cli changedet] [--only outputs,signals] [--keep DIR]

Exit code 0 when every applicable case is handled, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the "plain after" case writes one on purpose

CONTRACT = ("change_mask.tif", "change_class.tif", "change_score.tif", "detections.geojson", "summary.json",
            "quicklook.png")
TIMEOUT_S = 180


class NotApplicable(Exception):
    """The case cannot be set up on this machine."""


@dataclass
class Ctx:
    """One case's folder, TMPDIR and the command to run."""

    dir: Path
    base: Path
    cmd: list[str]

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp), "NO_COLOR": "1", "COLUMNS": "100", **(extra or {})}

    def run(self, *args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([*self.cmd, *map(str, args)], capture_output=True, text=True, input=stdin,
                                  cwd=cwd or self.dir, env=self.env(env), timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, -999, "", f"timed out after {TIMEOUT_S} s")

    def start(self, *args: object) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.cmd, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=self.dir, env=self.env(), start_new_session=True)

    def pair(self, name: str = "camp") -> tuple[Path, Path]:
        return self.base / name / "before.tif", self.base / name / "after.tif"

    def write(self, name: str, array: np.ndarray, **profile: object) -> Path:
        """A GeoTIFF in the case folder on the base scene's grid (overridable)."""
        with rasterio.open(self.pair()[0]) as ref:
            prof = dict(ref.profile)
        bands = array if array.ndim == 3 else array[None]
        prof.update(count=bands.shape[0], dtype=str(bands.dtype), height=bands.shape[1], width=bands.shape[2],
                    nodata=None)
        prof.update(profile)
        path = self.dir / name
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(bands)
        return path

    def read(self, path: Path) -> np.ndarray:
        with rasterio.open(path) as src:
            return src.read()


Check = Callable[[Ctx], "str | None"]
CASES: list[tuple[str, str, Check]] = []


def case(group: str, name: str) -> Callable[[Check], Check]:
    def add(fn: Check) -> Check:
        CASES.append((group, name, fn))
        return fn
    return add


# ---------------------------------------------------------------- expectations

def leftovers(ctx: Ctx) -> list[str]:
    found = [p for p in ctx.dir.rglob("*") if ".changedet-" in p.name or p.name.startswith("changedet-")]
    return sorted(str(p.relative_to(ctx.dir)) for p in found)


def error(proc: subprocess.CompletedProcess[str], ctx: Ctx, *needles: str, code: int = 2,
          absent: tuple[Path, ...] = ()) -> str | None:
    """None when the run failed as promised: ``code``, one line naming every needle, nothing left."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if proc.returncode != code:
        return f"exit {proc.returncode} (want {code}): {' | '.join(lines)[:160]}"
    if len(lines) != 1 or not lines[0].startswith("changedet: error:"):
        return f"{len(lines)} stderr lines: {' | '.join(lines)[:160]}"
    missing = [n for n in needles if n not in lines[0]]
    if missing:
        return f"line does not name {missing[0]!r}: {lines[0][:160]}"
    if len(lines[0]) > 400:
        return f"line of {len(lines[0])} characters"
    left = leftovers(ctx) + [str(p) for p in absent if p.exists()]
    return f"left behind: {left[:3]}" if left else None


def complete(out: Path) -> str | None:
    missing = [f for f in CONTRACT if not (out / f).is_file()]
    if missing:
        return f"missing {missing}"
    try:
        json.loads((out / "summary.json").read_text())
    except ValueError as exc:
        return f"summary.json: {exc}"
    return None


def ok(proc: subprocess.CompletedProcess[str], ctx: Ctx, out: Path) -> str | None:
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {proc.stderr.strip()[:160]}"
    if "Traceback" in proc.stderr:
        return "traceback on stderr"
    return complete(out) or (f"left behind: {leftovers(ctx)[:3]}" if leftovers(ctx) else None)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def detect(ctx: Ctx, before: Path, after: Path, *extra: object, out: str | Path = "o") -> subprocess.CompletedProcess[str]:
    return ctx.run("detect", before, after, "--out", out, "--set", "model.enabled=false", *extra)


def manifest(ctx: Ctx, text: str, name: str = "sites.yaml") -> Path:
    path = ctx.dir / name
    path.write_text(text)
    return path


def sites_yaml(ctx: Ctx, n: int = 2) -> Path:
    b, a = ctx.pair()
    body = "".join(f"  - {{name: s{i}, before: {b}, after: {a}}}\n" for i in range(n))
    return manifest(ctx, "config:\n  model: {enabled: false}\nsites:\n" + body)


# ---------------------------------------------------------------- files

@case("files", "before missing")
def _(ctx):
    b, a = ctx.pair()
    return error(detect(ctx, ctx.dir / "nope.tif", a), ctx, "nope.tif", absent=(ctx.dir / "o",))


@case("files", "after missing")
def _(ctx):
    b, a = ctx.pair()
    return error(detect(ctx, b, ctx.dir / "gone.tif"), ctx, "gone.tif", absent=(ctx.dir / "o",))


@case("files", "before is a folder")
def _(ctx):
    (ctx.dir / "d.tif").mkdir()
    return error(detect(ctx, ctx.dir / "d.tif", ctx.pair()[1]), ctx, "d.tif", absent=(ctx.dir / "o",))


@case("files", "empty file")
def _(ctx):
    (ctx.dir / "e.tif").write_bytes(b"")
    return error(detect(ctx, ctx.dir / "e.tif", ctx.pair()[1]), ctx, "e.tif", absent=(ctx.dir / "o",))


@case("files", "text file named .tif")
def _(ctx):
    (ctx.dir / "t.tif").write_text("not a raster\n")
    return error(detect(ctx, ctx.dir / "t.tif", ctx.pair()[1]), ctx, "t.tif", absent=(ctx.dir / "o",))


@case("files", "broken symlink")
def _(ctx):
    (ctx.dir / "l.tif").symlink_to(ctx.dir / "missing-target.tif")
    return error(detect(ctx, ctx.dir / "l.tif", ctx.pair()[1]), ctx, "l.tif", absent=(ctx.dir / "o",))


@case("files", "/dev/null as before")
def _(ctx):
    return error(detect(ctx, "/dev/null", ctx.pair()[1]), ctx, "/dev/null", absent=(ctx.dir / "o",))


@case("files", "gzip named .tif")
def _(ctx):
    import gzip
    (ctx.dir / "g.tif").write_bytes(gzip.compress(ctx.pair()[0].read_bytes()))
    return error(detect(ctx, ctx.dir / "g.tif", ctx.pair()[1]), ctx, "g.tif", absent=(ctx.dir / "o",))


@case("files", "truncated tiled GeoTIFF")
def _(ctx):
    data = ctx.pair()[0].read_bytes()
    (ctx.dir / "half.tif").write_bytes(data[: len(data) // 2])
    return error(detect(ctx, ctx.dir / "half.tif", ctx.pair()[1]), ctx, "half.tif", absent=(ctx.dir / "o",))


@case("files", "garbage tile in the middle")
def _(ctx):
    src = ctx.pair()[0]
    with rasterio.open(src) as ds:
        arr = ds.read()
    path = ctx.write("bad.tif", arr, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 400] = os.urandom(400)
    path.write_bytes(bytes(raw))
    return error(detect(ctx, path, ctx.pair()[1]), ctx, "bad.tif", absent=(ctx.dir / "o",))


@case("files", "path with spaces and unicode")
def _(ctx):
    b, a = ctx.pair()
    d = ctx.dir / "site één"
    d.mkdir()
    shutil.copy(b, d / "before 1.tif")
    shutil.copy(a, d / "after 1.tif")
    return ok(detect(ctx, d / "before 1.tif", d / "after 1.tif", out=d / "out put"), ctx, d / "out put")


@case("files", "same file as before and after")
def _(ctx):
    b, _ = ctx.pair()
    proc = detect(ctx, b, b)
    bad = ok(proc, ctx, ctx.dir / "o")
    if bad:
        return bad
    n = len(summary(ctx.dir / "o")["detections"])
    return f"{n} detections on an image against itself" if n else None


@case("files", "PNG without georeferencing and --gsd")
def _(ctx):
    import cv2
    for name, src in zip(("b.png", "a.png"), ctx.pair()):
        cv2.imwrite(str(ctx.dir / name), np.moveaxis(ctx.read(src), 0, -1)[..., ::-1])
    return ok(detect(ctx, ctx.dir / "b.png", ctx.dir / "a.png", "--gsd", "0.5"), ctx, ctx.dir / "o")


@case("files", "JPEG inputs")
def _(ctx):
    import cv2
    for name, src in zip(("b.jpg", "a.jpg"), ctx.pair()):
        cv2.imwrite(str(ctx.dir / name), np.moveaxis(ctx.read(src), 0, -1)[..., ::-1])
    return ok(detect(ctx, ctx.dir / "b.jpg", ctx.dir / "a.jpg", "--gsd", "0.5"), ctx, ctx.dir / "o")


@case("files", "huge header, tiny file (100000²)")
def _(ctx):
    path = ctx.dir / "huge.tif"
    with rasterio.open(ctx.pair()[0]) as ref:
        crs, tr = ref.crs, ref.transform
    with rasterio.open(path, "w", driver="GTiff", width=100000, height=100000, count=3, dtype="uint8", crs=crs,
                       transform=tr, tiled=True, compress="deflate", sparse_ok=True):
        pass
    if path.stat().st_size > 10_000_000:
        raise NotApplicable("could not make a sparse file")
    t0 = time.monotonic()
    bad = error(detect(ctx, path, path), ctx, "huge.tif", absent=(ctx.dir / "o",))
    return bad or (f"took {time.monotonic() - t0:.0f} s to refuse" if time.monotonic() - t0 > 60 else None)


# ---------------------------------------------------------------- rasters

def _base_arrays(ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
    return ctx.read(ctx.pair()[0]), ctx.read(ctx.pair()[1])


def _nothing_observable(ctx: Ctx, proc: subprocess.CompletedProcess[str], name: str, what: str) -> str | None:
    """Exit 2 naming ``name``, or a summary with observable_fraction 0 and no detections."""
    if proc.returncode == 0:
        s = summary(ctx.dir / "o")
        return None if s["observable_fraction"] == 0 and not s["detections"] else what
    return error(proc, ctx, name, absent=(ctx.dir / "o",))


@case("rasters", "all-zero before")
def _(ctx):
    b = ctx.write("zero.tif", np.zeros_like(_base_arrays(ctx)[0]))
    return _nothing_observable(ctx, detect(ctx, b, ctx.pair()[1]), "zero.tif", "typed detections on zeros")


@case("rasters", "constant after")
def _(ctx):
    a = ctx.write("const.tif", np.full_like(_base_arrays(ctx)[1], 117))
    return _nothing_observable(ctx, detect(ctx, ctx.pair()[0], a), "const.tif", "typed detections on a constant")


@case("rasters", "all nodata")
def _(ctx):
    a = ctx.write("nd.tif", np.full_like(_base_arrays(ctx)[1], 7), nodata=7)
    return _nothing_observable(ctx, detect(ctx, ctx.pair()[0], a), "nd.tif", "detections in nodata")


def _float_pair(ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
    b, a = _base_arrays(ctx)
    return b.astype("float32") / 255, a.astype("float32") / 255


def _not_observable(ctx: Ctx, proc: subprocess.CompletedProcess[str], regions: list, what: str) -> str | None:
    """The run succeeded and wrote 255 over every region (numpy index expressions) of the mask."""
    bad = ok(proc, ctx, ctx.dir / "o")
    if bad:
        return bad
    m = ctx.read(ctx.dir / "o" / "change_mask.tif")[0]
    return None if all((m[r] == 255).all() for r in regions) else what


def _with_reference(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> str | None:
    """None when the run succeeded and so did a run of the base uint8 pair into ``ref/``."""
    return ok(proc, ctx, ctx.dir / "o") or ("the uint8 reference run failed"
                                          if detect(ctx, *ctx.pair(), out="ref").returncode else None)


@case("rasters", "float32 reflectance 0-1")
def _(ctx):
    fb, fa = _float_pair(ctx)
    proc = detect(ctx, ctx.write("fb.tif", fb), ctx.write("fa.tif", fa))
    bad = _with_reference(ctx, proc)
    if bad:
        return bad
    m1, m0 = ctx.read(ctx.dir / "o" / "change_mask.tif"), ctx.read(ctx.dir / "ref" / "change_mask.tif")
    agree = float(((m1 == 1) == (m0 == 1)).mean())
    return None if agree >= 0.99 else f"float and uint8 masks agree on {agree:.3f} of pixels"


@case("rasters", "float32 NaN in every band, no nodata declared")
def _(ctx):
    fb, fa = _float_pair(ctx)
    fa[:, 40:80, 40:80] = np.nan
    proc = detect(ctx, ctx.write("fb.tif", fb), ctx.write("fa.tif", fa))
    return _not_observable(ctx, proc, [np.s_[40:80, 40:80]], "NaN pixels not 255")


@case("rasters", "float32 NaN in one band only")
def _(ctx):
    fb, fa = _float_pair(ctx)
    fb[1, 10:50, 100:150] = np.nan
    proc = detect(ctx, ctx.write("fb.tif", fb), ctx.write("fa.tif", fa))
    return _not_observable(ctx, proc, [np.s_[10:50, 100:150]], "pixels with a NaN band not 255")


@case("rasters", "float32 NaN declared as nodata")
def _(ctx):
    fb, fa = _float_pair(ctx)
    fb[:, :30, :] = np.nan
    proc = detect(ctx, ctx.write("fb.tif", fb, nodata=float("nan")), ctx.write("fa.tif", fa, nodata=float("nan")))
    return ok(proc, ctx, ctx.dir / "o")


@case("rasters", "float32 with +Inf and -Inf")
def _(ctx):
    fb, fa = _float_pair(ctx)
    fa[:, 5:25, 5:25] = np.inf
    fa[:, 120:140, 5:25] = -np.inf
    proc = detect(ctx, ctx.write("fb.tif", fb), ctx.write("fa.tif", fa))
    return _not_observable(ctx, proc, [np.s_[5:25, 5:25], np.s_[120:140, 5:25]], "Inf pixels not 255")


@case("rasters", "float64 0-10000 with a 1e30 outlier")
def _(ctx):
    b, a = _base_arrays(ctx)
    fb, fa = b.astype("float64") * 39.2, a.astype("float64") * 39.2
    fa[0, 3, 3] = 1e30
    return ok(detect(ctx, ctx.write("fb.tif", fb), ctx.write("fa.tif", fa)), ctx, ctx.dir / "o")


@case("rasters", "uint8 before, uint16 after")
def _(ctx):
    b, a = _base_arrays(ctx)
    proc = detect(ctx, ctx.pair()[0], ctx.write("a16.tif", a.astype("uint16") * 257))
    bad = _with_reference(ctx, proc)
    if bad:
        return bad
    s, s0 = summary(ctx.dir / "o"), summary(ctx.dir / "ref")
    n, n0 = len(s["detections"]), len(s0["detections"])
    reg, reg0 = s["registration"]["applied"], s0["registration"]["applied"]
    sat = s["not_observable_m2"]["saturated"]
    if reg != reg0 or abs(n - n0) > max(1, n0 // 4) or sat > s0["not_observable_m2"]["saturated"] + 1:
        return f"{n} detections vs {n0}, registration applied {reg} vs {reg0}, saturated {sat:.0f} m2"
    return None


@case("rasters", "int16 with negative values")
def _(ctx):
    b, a = _base_arrays(ctx)
    return ok(detect(ctx, ctx.write("b.tif", b.astype("int16") - 100), ctx.write("a.tif", a.astype("int16") - 100)),
              ctx, ctx.dir / "o")


@case("rasters", "complex CInt16")
def _(ctx):
    b, _ = _base_arrays(ctx)
    c = ctx.write("c.tif", (b.astype("float32") + 1j * b.astype("float32")).astype("complex64"))
    return error(detect(ctx, c, ctx.pair()[1]), ctx, "c.tif", absent=(ctx.dir / "o",))


@case("rasters", "band counts differ (3 vs 1)")
def _(ctx):
    b, a = _base_arrays(ctx)
    proc = detect(ctx, ctx.pair()[0], ctx.write("a1.tif", a[:1]))
    return ok(proc, ctx, ctx.dir / "o") if proc.returncode == 0 else error(proc, ctx, "a1.tif", absent=(ctx.dir / "o",))


@case("rasters", "4 bands with an alpha band")
def _(ctx):
    b, a = _base_arrays(ctx)
    alpha = np.full((1, *a.shape[1:]), 255, "uint8")
    alpha[0, :20] = 0
    path = ctx.write("rgba.tif", np.concatenate([a, alpha]), photometric="RGB", alpha="YES")
    return ok(detect(ctx, ctx.pair()[0], path), ctx, ctx.dir / "o")


@case("rasters", "palette (colour-mapped) image")
def _(ctx):
    b, a = _base_arrays(ctx)
    path = ctx.write("pal.tif", (a[0] // 16).astype("uint8"), photometric="palette")
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {i: (i * 16, i * 16, i * 16, 255) for i in range(16)})
    proc = detect(ctx, ctx.pair()[0], path)
    return ok(proc, ctx, ctx.dir / "o") if proc.returncode == 0 else error(proc, ctx, "pal.tif", absent=(ctx.dir / "o",))


@case("rasters", "images that do not overlap")
def _(ctx):
    b, a = _base_arrays(ctx)
    with rasterio.open(ctx.pair()[1]) as ref:
        tr = ref.transform
    path = ctx.write("far.tif", a, transform=from_origin(tr.c + 1e6, tr.f, tr.a, -tr.e))
    return error(detect(ctx, ctx.pair()[0], path), ctx, "far.tif", absent=(ctx.dir / "o",))


@case("rasters", "tiny 8x8 image")
def _(ctx):
    b, a = _base_arrays(ctx)
    p1, p2 = ctx.write("b8.tif", b[:, :8, :8]), ctx.write("a8.tif", a[:, :8, :8])
    proc = detect(ctx, p1, p2)
    return ok(proc, ctx, ctx.dir / "o") if proc.returncode == 0 else error(proc, ctx, "8.tif", absent=(ctx.dir / "o",))


@case("rasters", "one-row image")
def _(ctx):
    b, a = _base_arrays(ctx)
    p1, p2 = ctx.write("b1.tif", b[:, :1, :]), ctx.write("a1.tif", a[:, :1, :])
    proc = detect(ctx, p1, p2)
    return ok(proc, ctx, ctx.dir / "o") if proc.returncode == 0 else error(proc, ctx, "1.tif", absent=(ctx.dir / "o",))


@case("rasters", "after in another CRS (EPSG:4326)")
def _(ctx):
    from rasterio.warp import calculate_default_transform, reproject
    b, a = _base_arrays(ctx)
    with rasterio.open(ctx.pair()[1]) as src:
        tr, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        dst = np.zeros((a.shape[0], h, w), "uint8")
        reproject(a, dst, src_transform=src.transform, src_crs=src.crs, dst_transform=tr, dst_crs="EPSG:4326")
    path = ctx.write("a4326.tif", dst, crs="EPSG:4326", transform=tr)
    return ok(detect(ctx, ctx.pair()[0], path), ctx, ctx.dir / "o")


@case("rasters", "after at half the resolution")
def _(ctx):
    b, a = _base_arrays(ctx)
    with rasterio.open(ctx.pair()[1]) as src:
        tr = src.transform
    half = a[:, ::2, ::2].copy()
    path = ctx.write("ahalf.tif", half, transform=from_origin(tr.c, tr.f, tr.a * 2, -tr.e * 2))
    return ok(detect(ctx, ctx.pair()[0], path), ctx, ctx.dir / "o")


@case("rasters", "georeferenced before, plain after")
def _(ctx):
    b, a = _base_arrays(ctx)
    path = ctx.dir / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                       dtype="uint8") as dst:
        dst.write(a)
    proc = detect(ctx, ctx.pair()[0], path)
    return ok(proc, ctx, ctx.dir / "o") if proc.returncode == 0 else error(proc, ctx, "plain.tif", absent=(ctx.dir / "o",))


@case("rasters", "half the after image is nodata")
def _(ctx):
    b, a = _base_arrays(ctx)
    a = a.copy()
    a[:, :, 80:] = 0
    proc = detect(ctx, ctx.pair()[0], ctx.write("half_nd.tif", a, nodata=0))
    return _not_observable(ctx, proc, [np.s_[:, 82:]], "nodata half not 255")


# ---------------------------------------------------------------- configs

@case("configs", "--config missing")
def _(ctx):
    return error(detect(ctx, *ctx.pair(), "--config", ctx.dir / "nope.yaml"), ctx, "nope.yaml", absent=(ctx.dir / "o",))


@case("configs", "--config is a folder")
def _(ctx):
    (ctx.dir / "cfgdir").mkdir()
    return error(detect(ctx, *ctx.pair(), "--config", ctx.dir / "cfgdir"), ctx, "cfgdir", absent=(ctx.dir / "o",))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

#: --config files refused: (case, file name, its text, what the line must name). The bomb's root
#: keys are unknown too, but the loader must refuse it before building anything.
CONFIG_FILE_ERRORS = (
    ("--config invalid YAML", "bad.yaml", "decide: [1, 2\n  x: {\n", "bad.yaml"),
    ("--config is a YAML list", "list.yaml", "- 1\n- 2\n", "list.yaml"),
    ("unknown key", "k.yaml", "decide:\n  bogus: 1\n", "bogus"),
    ("wrong type", "t.yaml", "decide:\n  min_area_m2: lots\n", "min_area_m2"),
    ("YAML alias bomb in --config", "bomb.yaml", BOMB.replace("a: &a", "decide:\n  min_area_m2: &a", 1), "bomb.yaml"),
    ("deeply nested YAML", "deep.yaml", "decide: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml"),
    ("5 MB config file", "big.yaml", "# " + "x" * 5_000_000 + "\ndecide: {}\n", "big.yaml"),
)


def _config_file_error(name: str, text: str, needle: str) -> Check:
    def check(ctx: Ctx) -> str | None:
        (ctx.dir / name).write_text(text)
        return error(detect(ctx, *ctx.pair(), "--config", ctx.dir / name), ctx, needle, absent=(ctx.dir / "o",))
    return check


for _case, _file, _text, _needle in CONFIG_FILE_ERRORS:
    case("configs", _case)(_config_file_error(_file, _text, _needle))


#: detect refused for one option or key: (case, the extra arguments, what the line must name)
OPTION_ERRORS = (
    ("--set without '='", ("--set", "decide.min_area_m2"), "decide.min_area_m2"),
    ("--set unknown key", ("--set", "nothing.here=1"), "nothing"),
    ("--set a float to .nan", ("--set", "decide.min_area_m2=.nan"), "min_area_m2"),
    ("--set gsd_m=.inf", ("--set", "gsd_m=.inf"), "gsd_m"),
    ("--gsd nan", ("--gsd", "nan"), "--gsd"),
    ("--gsd inf", ("--gsd", "inf"), "--gsd"),
    ("--gsd -1", ("--gsd", "-1"), "--gsd"),
    ("--gsd abc", ("--gsd", "abc"), "--gsd"),
    ("--preset unknown", ("--preset", "nosuch"), "nosuch"),
)


def _option_error(extra: tuple[str, ...], needle: str) -> Check:
    return lambda ctx: error(detect(ctx, *ctx.pair(), *extra), ctx, needle, absent=(ctx.dir / "o",))


for _name, _extra, _needle in OPTION_ERRORS:
    case("configs", _name)(_option_error(_extra, _needle))


@case("configs", "--out missing")
def _(ctx):
    return error(ctx.run("detect", *ctx.pair()), ctx, "--out")


@case("configs", "unknown option")
def _(ctx):
    return error(detect(ctx, *ctx.pair(), "--frobnicate"), ctx, "--frobnicate", absent=(ctx.dir / "o",))


@case("configs", "missing argument")
def _(ctx):
    return error(ctx.run("detect", ctx.pair()[0], "--out", "o"), ctx, "after", absent=(ctx.dir / "o",))


@case("configs", "--model missing file")
def _(ctx):
    return error(ctx.run("detect", *ctx.pair(), "--out", "o", "--model", ctx.dir / "m.npz"), ctx, "m.npz",
                 absent=(ctx.dir / "o",))


@case("configs", "--model garbage file")
def _(ctx):
    (ctx.dir / "m.npz").write_bytes(os.urandom(2000))
    return error(ctx.run("detect", *ctx.pair(), "--out", "o", "--model", ctx.dir / "m.npz"), ctx, "m.npz",
                 absent=(ctx.dir / "o",))


@case("configs", "--site with a newline")
def _(ctx):
    return error(detect(ctx, *ctx.pair(), "--site", "camp\nx"), ctx, "--site", absent=(ctx.dir / "o",))


@case("configs", "synth --size 0")
def _(ctx):
    return error(ctx.run("synth", "--out", "s", "--size", "0"), ctx, "--size", absent=(ctx.dir / "s",))


@case("configs", "synth --rotation-deg nan")
def _(ctx):
    return error(ctx.run("synth", "--out", "s", "--rotation-deg", "nan"), ctx, "--rotation-deg",
                 absent=(ctx.dir / "s",))


# ---------------------------------------------------------------- manifests

@case("manifests", "manifest missing")
def _(ctx):
    return error(ctx.run("batch", ctx.dir / "none.yaml", "--out", "b"), ctx, "none.yaml", absent=(ctx.dir / "b",))


@case("manifests", "empty manifest")
def _(ctx):
    return error(ctx.run("batch", manifest(ctx, ""), "--out", "b"), ctx, "sites.yaml", absent=(ctx.dir / "b",))


#: batch manifests refused before any site runs: (case, the manifest with {b} and {a} for the pair's
#: paths, what the line must name)
MANIFEST_ERRORS = (
    ("site name with a trailing newline",
     'sites:\n  - {{name: "camp\\n", before: {b}, after: {a}}}\n',
     "sites.yaml"),
    ("site name with a slash",
     "sites:\n  - {{name: ../escape, before: {b}, after: {a}}}\n",
     "escape"),
    ("duplicate site names",
     "sites:\n  - {{name: x, before: {b}, after: {a}}}\n  - {{name: x, before: {b}, after: {a}}}\n",
     "'x'"),
    ("duplicate YAML keys",
     "sites:\n  - {{name: x, before: {b}, before: {a}, after: {a}}}\n",
     "before"),
    ("alias bomb in a manifest",
     BOMB.replace("{", "{{").replace("}", "}}") + "sites:\n  - {{name: x, before: {b}, after: {a}, config: {{decide: *i}}}}\n",
     "sites.yaml"),
    ("gsd_m: .inf in a manifest",
     "sites:\n  - {{name: x, before: {b}, after: {a}, gsd_m: .inf}}\n",
     "gsd_m"),
    ("unknown config key in one site",
     "sites:\n  - {{name: x, before: {b}, after: {a}, config: {{decide: {{nope: 1}}}}}}\n",
     "nope"),
)


def _manifest_error(text: str, needle: str) -> Check:
    def check(ctx: Ctx) -> str | None:
        b, a = ctx.pair()
        m = manifest(ctx, text.format(b=b, a=a))
        return error(ctx.run("batch", m, "--out", "b"), ctx, needle, absent=(ctx.dir / "b", ctx.dir / "escape"))
    return check


for _case, _text, _needle in MANIFEST_ERRORS:
    case("manifests", _case)(_manifest_error(_text, _needle))


@case("manifests", "a site with a missing input: recorded, rest go on")
def _(ctx):
    b, a = ctx.pair()
    m = manifest(ctx, "config:\n  model: {enabled: false}\nsites:\n"
                      f"  - {{name: bad, before: {ctx.dir / 'gone.tif'}, after: {a}}}\n"
                      f"  - {{name: good, before: {b}, after: {a}}}\n")
    proc = ctx.run("batch", m, "--out", "b")
    if proc.returncode != 1:
        return f"exit {proc.returncode} (want 1): {proc.stderr.strip()[:160]}"
    res = json.loads((ctx.dir / "b" / "batch_summary.json").read_text())
    status = {s["name"]: s["status"] for s in res["sites"]}
    return complete(ctx.dir / "b" / "good") or (None if status == {"bad": "failed", "good": "ok"} else str(status))


@case("manifests", "path that is a number")
def _(ctx):
    b, _ = ctx.pair()
    m = manifest(ctx, f"sites:\n  - {{name: x, before: {b}, after: 12}}\n")
    proc = ctx.run("batch", m, "--out", "b")
    if proc.returncode == 1:  # recorded as a failed site
        return None if "12" in (ctx.dir / "b" / "batch_summary.json").read_text() else "failure not recorded"
    return error(proc, ctx, "sites.yaml", absent=(ctx.dir / "b",))


@case("manifests", "train manifest alias bomb")
def _(ctx):
    m = manifest(ctx, BOMB + "pairs: *i\n", "train.yaml")
    return error(ctx.run("train", m, "--out", "m.npz"), ctx, "train.yaml", absent=(ctx.dir / "m.npz",))


# ---------------------------------------------------------------- outputs

@case("outputs", "--out ''")
def _(ctx):
    before = sorted(p.name for p in ctx.dir.iterdir())
    bad = error(detect(ctx, *ctx.pair(), out=""), ctx, "--out")
    after = sorted(p.name for p in ctx.dir.iterdir())
    return bad or (f"wrote into the working folder: {set(after) - set(before)}" if after != before else None)


@case("outputs", "--out is a file")
def _(ctx):
    (ctx.dir / "out_file").write_text("keep me")
    bad = error(detect(ctx, *ctx.pair(), out="out_file"), ctx, "out_file")
    return bad or (None if (ctx.dir / "out_file").read_text() == "keep me" else "the file was changed")


@case("outputs", "--out's parent is a file")
def _(ctx):
    (ctx.dir / "parent_file").write_text("x")
    return error(detect(ctx, *ctx.pair(), out=ctx.dir / "parent_file" / "o"), ctx, "parent_file")


@case("outputs", "batch --out is a file")
def _(ctx):
    (ctx.dir / "batch_file").write_text("x")
    return error(ctx.run("batch", sites_yaml(ctx), "--out", "batch_file"), ctx, "batch_file")


@case("outputs", "synth --out is a file")
def _(ctx):
    (ctx.dir / "scene_file").write_text("x")
    return error(ctx.run("synth", "--out", "scene_file", "--size", "128"), ctx, "scene_file")


@case("outputs", "synth --out ''")
def _(ctx):
    before = sorted(p.name for p in ctx.dir.iterdir())
    bad = error(ctx.run("synth", "--out", "", "--size", "128"), ctx, "--out")
    after = sorted(p.name for p in ctx.dir.iterdir())
    return bad or (f"wrote into the working folder: {set(after) - set(before)}" if after != before else None)


def _tmpfs(ctx: Ctx, size: str, readonly: bool = False) -> Path:
    mnt = ctx.dir / "mnt"
    mnt.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True).returncode:
        raise NotApplicable("cannot mount a tmpfs here")
    return mnt


def _umount(mnt: Path) -> None:
    subprocess.run(["umount", str(mnt)], capture_output=True, check=False)


@case("outputs", "disk full (1 MB tmpfs)")
def _(ctx):
    mnt = _tmpfs(ctx, "400k")
    try:
        proc = detect(ctx, *ctx.pair(), out=mnt / "o")
        bad = error(proc, ctx, str(mnt))
        if not bad and not any(w in proc.stderr.lower() for w in ("full", "no space")):
            bad = f"does not say the disk is full: {proc.stderr.strip()[:160]}"
        left = list(mnt.iterdir())
        return bad or (f"left in the full disk: {left}" if left else None)
    finally:
        _umount(mnt)


@case("outputs", "read-only batch --out")
def _(ctx):
    mnt = _tmpfs(ctx, "10m", readonly=True)
    try:
        return error(ctx.run("batch", sites_yaml(ctx), "--out", mnt / "b"), ctx, str(mnt))
    finally:
        _umount(mnt)


@case("outputs", "rerun without tie points removes the stale tiepoints.geojson")
def _(ctx):
    first = detect(ctx, *ctx.pair(), "--set", "registration.write_tiepoints=true")
    if first.returncode or not (ctx.dir / "o" / "tiepoints.geojson").exists():
        return "the first run wrote no tie points"
    bad = ok(detect(ctx, *ctx.pair()), ctx, ctx.dir / "o")
    return bad or ("stale tiepoints.geojson" if (ctx.dir / "o" / "tiepoints.geojson").exists() else None)


@case("outputs", "a user's own file in --out survives a rerun")
def _(ctx):
    detect(ctx, *ctx.pair())
    (ctx.dir / "o" / "notes.txt").write_text("mine")
    bad = ok(detect(ctx, *ctx.pair()), ctx, ctx.dir / "o")
    return bad or (None if (ctx.dir / "o" / "notes.txt").exists() else "the user's file was removed")


@case("outputs", "resume: a deleted change_mask.tif is rebuilt")
def _(ctx):
    m = sites_yaml(ctx, 1)
    if ctx.run("batch", m, "--out", "b").returncode:
        return "first batch failed"
    (ctx.dir / "b" / "s0" / "change_mask.tif").unlink()
    proc = ctx.run("batch", m, "--out", "b")
    res = json.loads((ctx.dir / "b" / "batch_summary.json").read_text())
    return complete(ctx.dir / "b" / "s0") or (None if res["sites"][0]["status"] == "ok" else
                                              f"status {res['sites'][0]['status']} (exit {proc.returncode})")


@case("outputs", "resume: a truncated change_class.tif is rebuilt")
def _(ctx):
    m = sites_yaml(ctx, 1)
    if ctx.run("batch", m, "--out", "b").returncode:
        return "first batch failed"
    f = ctx.dir / "b" / "s0" / "change_class.tif"
    f.write_bytes(f.read_bytes()[:100])
    ctx.run("batch", m, "--out", "b")
    res = json.loads((ctx.dir / "b" / "batch_summary.json").read_text())
    return None if res["sites"][0]["status"] == "ok" and f.stat().st_size > 100 else "truncated file kept"


@case("outputs", "resume: an unchanged site is skipped")
def _(ctx):
    m = sites_yaml(ctx, 1)
    ctx.run("batch", m, "--out", "b")
    ctx.run("batch", m, "--out", "b")
    res = json.loads((ctx.dir / "b" / "batch_summary.json").read_text())
    return None if res["sites"][0]["status"] == "skipped" else f"status {res['sites'][0]['status']}"


# ---------------------------------------------------------------- signals

def _wait_for(pred: Callable[[], bool], limit: float = 120) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _staging_exists(ctx: Ctx) -> bool:
    return any(".changedet-" in p.name for p in ctx.dir.iterdir())


def _signal_detect(ctx: Ctx, sig: int, code: int) -> str | None:
    proc = ctx.start("detect", *ctx.pair(), "--out", "o")
    if not _wait_for(lambda: _staging_exists(ctx)):
        proc.kill()
        return "never saw the staging folder"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if proc.returncode != code:
        return f"exit {proc.returncode} (want {code}): {' | '.join(lines)[:160]}"
    if len(lines) != 1:
        return f"{len(lines)} stderr lines"
    left = leftovers(ctx)
    return f"left behind: {left[:3]}" if left or (ctx.dir / "o").exists() else None


@case("signals", "SIGTERM during detect")
def _(ctx):
    return _signal_detect(ctx, signal.SIGTERM, 143)


@case("signals", "SIGINT during detect")
def _(ctx):
    return _signal_detect(ctx, signal.SIGINT, 130)


@case("signals", "SIGHUP during detect")
def _(ctx):
    return _signal_detect(ctx, signal.SIGHUP, 129)


@case("signals", "kill -9 during detect, then a rerun sweeps the staging folder")
def _(ctx):
    proc = ctx.start("detect", *ctx.pair(), "--out", "o")
    if not _wait_for(lambda: _staging_exists(ctx)):
        proc.kill()
        return "never saw the staging folder"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    bad = ok(detect(ctx, *ctx.pair()), ctx, ctx.dir / "o")
    return bad


def _batch_identical(ctx: Ctx, sig: int) -> str | None:
    m = sites_yaml(ctx, 3)
    if ctx.run("batch", m, "--out", "ref").returncode:
        return "the uninterrupted batch failed"
    proc = ctx.start("batch", m, "--out", "b")
    if not _wait_for(lambda: (ctx.dir / "b" / "s0" / "summary.json").exists()):
        proc.kill()
        return "never saw the first site"
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=60)
    rerun = ctx.run("batch", m, "--out", "b")
    if rerun.returncode:
        return f"rerun exit {rerun.returncode}: {rerun.stderr.strip()[:160]}"
    for site in ("s0", "s1", "s2"):
        for f in ("change_mask.tif", "change_class.tif", "change_score.tif", "detections.geojson"):
            if (ctx.dir / "b" / site / f).read_bytes() != (ctx.dir / "ref" / site / f).read_bytes():
                return f"{site}/{f} differs from the uninterrupted run"
    left = leftovers(ctx)
    return f"left behind: {left[:3]}" if left else None


@case("signals", "kill -9 during batch, rerun identical")
def _(ctx):
    return _batch_identical(ctx, signal.SIGKILL)


@case("signals", "SIGTERM during batch, rerun identical")
def _(ctx):
    return _batch_identical(ctx, signal.SIGTERM)


# ---------------------------------------------------------------- concurrency

@case("concurrency", "two detects into the same --out at once")
def _(ctx):
    p1 = ctx.start("detect", *ctx.pair(), "--out", "o", "--set", "model.enabled=false")
    p2 = ctx.start("detect", *ctx.pair(), "--out", "o", "--set", "model.enabled=false")
    e1, e2 = p1.communicate(timeout=TIMEOUT_S)[1], p2.communicate(timeout=TIMEOUT_S)[1]
    codes = sorted((p1.returncode, p2.returncode))
    if codes not in ([0, 0], [0, 2]):
        return f"exits {codes}: {(e1 + e2).strip()[:160]}"
    return complete(ctx.dir / "o") or (f"left behind: {leftovers(ctx)[:3]}" if leftovers(ctx) else None)


@case("concurrency", "a live run's staging folder is not swept by another run")
def _(ctx):
    slow = ctx.start("detect", *ctx.pair(), "--out", "o")
    if not _wait_for(lambda: _staging_exists(ctx)):
        slow.kill()
        return "never saw the staging folder"
    other = detect(ctx, *ctx.pair(), out="o")
    slow.communicate(timeout=TIMEOUT_S)
    if slow.returncode != 0:
        return f"the first run failed (exit {slow.returncode}): its staging folder was swept?"
    return ok(other, ctx, ctx.dir / "o")


@case("concurrency", "two batches into the same --out at once")
def _(ctx):
    m = sites_yaml(ctx, 2)
    p1, p2 = ctx.start("batch", m, "--out", "b"), ctx.start("batch", m, "--out", "b")
    p1.communicate(timeout=TIMEOUT_S)
    p2.communicate(timeout=TIMEOUT_S)
    if (p1.returncode, p2.returncode) != (0, 0):
        return f"exits {p1.returncode}, {p2.returncode}"
    return complete(ctx.dir / "b" / "s0") or complete(ctx.dir / "b" / "s1")


@case("concurrency", "synth and detect on the same site folder")
def _(ctx):
    p1 = ctx.start("synth", "--out", "s", "--size", "128")
    p1.communicate(timeout=TIMEOUT_S)
    p2 = ctx.start("synth", "--out", "s", "--size", "128", "--seed", "5")
    d = detect(ctx, ctx.dir / "s" / "before.tif", ctx.dir / "s" / "after.tif")
    p2.communicate(timeout=TIMEOUT_S)
    return ok(d, ctx, ctx.dir / "o") if p2.returncode == 0 else f"second synth exit {p2.returncode}"


# ---------------------------------------------------------------- runner

def make_base(base: Path, cmd: list[str]) -> None:
    """The pair every case starts from: a 160 px camp scene of the project's own generator."""
    subprocess.run([*cmd, "synth", "--out", str(base / "camp"), "--scenario", "camp", "--seed", "3", "--size", "160"],
                   check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli", default=None, help="command to run (default: this Python's -m changedet)")
    ap.add_argument("--only", default=None, help="comma list of groups")
    ap.add_argument("--keep", type=Path, default=None, help="keep the case folders here")
    args = ap.parse_args()
    cmd = args.cli.split() if args.cli else [sys.executable, "-m", "changedet"]
    root = Path(tempfile.mkdtemp(prefix="hostile-", dir=args.keep)) if args.keep else Path(tempfile.mkdtemp(prefix="hostile-"))
    base = root / "base"
    make_base(base, cmd)
    groups = set(args.only.split(",")) if args.only else None
    rows = []
    for i, (group, name, fn) in enumerate(CASES):
        if groups and group not in groups:
            continue
        ctx = Ctx(root / f"case{i:03d}", base, cmd)
        t0 = time.monotonic()
        try:
            why = fn(ctx)
            state = "handled" if why is None else "NOT"
        except NotApplicable as exc:
            state, why = "n/a", str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken case is reported, the matrix goes on
            state, why = "NOT", f"case raised {type(exc).__name__}: {exc}"
        rows.append((group, name, state, why or "", time.monotonic() - t0))
        print(f"{group:<12}{name[:58]:<60}{state:<8}{(why or '')[:110]}", flush=True)
    n = len([r for r in rows if r[2] != "n/a"])
    handled = sum(r[2] == "handled" for r in rows)
    print(f"\n{handled} of {n} applicable cases handled ({len(rows) - n} n/a), {sum(r[4] for r in rows):.0f} s")
    for group in dict.fromkeys(r[0] for r in rows):
        g = [r for r in rows if r[0] == group and r[2] != "n/a"]
        print(f"  {group:<12}{sum(r[2] == 'handled' for r in g)} / {len(g)}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if handled == n else 1


if __name__ == "__main__":
    sys.exit(main())
