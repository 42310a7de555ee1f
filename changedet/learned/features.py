"""Siamese deep features of a pair: the frozen EfficientNet-Lite0 encoder run with onnxruntime.

Both dates go through the same encoder (ImageNet weights, truncated at stride 16; see
:mod:`changedet.learned.lite0` for its definition and export). Per pixel of a grid at stride 4
the head sees, for each of the three feature maps (strides 4, 8, 16, upsampled to stride 4),
the absolute difference of the two dates and their mean: 2 x (24 + 40 + 112) = 352 numbers.

Windowed runs equal whole-image runs: windows start on the stride-16 grid and carry a halo of
:data:`HALO_PX` (at least the encoder's receptive-field radius); beyond the image every input is
0 after normalisation (mid-grey), in windows and whole runs alike.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

#: the encoder shipped in the package (sha256 recorded in every summary that used it)
ENCODER_PATH = Path(__file__).resolve().parents[1] / "models" / "lite0_s16.onnx"
#: the same encoder cut at its stride-4 tap (:mod:`changedet.learned.encoder_parts`): image -> f4
ENCODER_S4_PATH = ENCODER_PATH.with_name("lite0_s4.onnx")
#: and f4 -> f8, f16
ENCODER_FROM_S4_PATH = ENCODER_PATH.with_name("lite0_s4_s16.onnx")
#: coarsest stride of the encoder; windows start on multiples of it
STRIDE = 16
#: grid of the head's input and output
HEAD_STRIDE = 4
#: receptive-field radius of stem + blocks 0..10 is 170 px; bilinear upsampling of the stride-16
#: map reaches one cell further (186 px), and the stride-4 result one cell more: 192, on the grid
HALO_PX = 192
#: the encoder up to its stride-4 tap reaches 9 px (stem, blocks 0..2): a tile of it carries 16, on the grid
S4_HALO_PX = 16
#: channels of the taps at strides 4, 8, 16
TAP_CHANNELS = (24, 40, 112)
N_FEATURES = 2 * sum(TAP_CHANNELS)
#: ImageNet preprocessing of the Lite port
MEAN, STD = 127.0, 128.0


def rgb_indexes(n_bands: int) -> tuple[int, int, int]:
    """0-based indexes of red, green and blue in an image of ``n_bands`` bands.

    3 bands are R G B; 4 or 5 bands are B G R NIR (+SWIR), the order of Sentinel-2 10 m stacks
    and PlanetScope; 13 bands are Sentinel-2 B01..B12 with B8A (B04 B03 B02). A single band is
    repeated; any other count takes its first three bands.
    """
    if n_bands == 1:
        return (0, 0, 0)
    if n_bands == 2:
        return (0, 1, 1)
    return {3: (0, 1, 2), 4: (2, 1, 0), 5: (2, 1, 0), 13: (3, 2, 1)}.get(n_bands, (0, 1, 2))


def rgb_of(descriptions: tuple[str | None, ...], colorinterp: tuple[str, ...] = ()) -> tuple[int, int, int]:
    """Red, green and blue among a raster's bands, by colour interpretation or band description.

    Names such as ``red``/``green``/``blue`` or Sentinel-2's ``B04``/``B03``/``B02`` decide; without
    them the band count does (:func:`rgb_indexes`).
    """
    n = max(len(descriptions), len(colorinterp))
    names = {"red": ("red", "b04", "b4"), "green": ("green", "b03", "b3"), "blue": ("blue", "b02", "b2")}
    found: dict[str, int] = {}
    for role, keys in names.items():
        for i in range(n):
            ci = colorinterp[i].lower() if i < len(colorinterp) else ""
            desc = (descriptions[i] or "").lower() if i < len(descriptions) else ""
            if ci == role or desc in keys:
                found.setdefault(role, i)
    if len(found) == 3:
        return (found["red"], found["green"], found["blue"])
    return rgb_indexes(n)


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map of the RGB bands onto 0..255, from ``before``'s 1st and 99th percentiles.

    Both dates use the same map (``after`` is already normalised to ``before``), so a change in
    brightness stays a change.
    """

    rgb: tuple[int, int, int]
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    @staticmethod
    def fit(before: np.ndarray, rgb: tuple[int, int, int] | None = None) -> Stretch:
        """From (bands, n) or (bands, h, w) valid samples of ``before``."""
        rgb = rgb or rgb_indexes(before.shape[0])
        sel = np.asarray(before, dtype=np.float64).reshape(before.shape[0], -1)[list(rgb)]
        lo, hi = [], []
        for band in sel:
            band = band[np.isfinite(band)]
            p1, p99 = (np.percentile(band, [1, 99]) if band.size else (0.0, 1.0))
            lo.append(float(p1))
            hi.append(float(max(p99, p1 + 1e-6)))
        return Stretch(tuple(int(i) for i in rgb), tuple(lo), tuple(hi))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, list[float] | list[int]]:
        return {"rgb_bands": [i + 1 for i in self.rgb], "lo": [round(v, 4) for v in self.lo],
                "hi": [round(v, 4) for v in self.hi]}


def encoder_input(img: np.ndarray, valid: np.ndarray, stretch: Stretch) -> np.ndarray:
    """(bands, h, w) image -> (3, h, w) float32 encoder input; invalid pixels are 0 (mid-grey)."""
    idx = list(stretch.rgb)
    lo = np.asarray(stretch.lo, np.float32)[:, None, None]
    hi = np.asarray(stretch.hi, np.float32)[:, None, None]
    # in place, the same float32 operations in the same order: one buffer instead of six
    x = img[idx].astype(np.float32, copy=False)  # indexing by a list already made a new array
    x -= lo
    x /= hi - lo
    np.clip(x, 0.0, 1.0, out=x)
    x *= np.float32(255.0)
    x -= np.float32(MEAN)
    x /= np.float32(STD)
    x[:, ~valid] = 0.0
    return x


@lru_cache(maxsize=8)
def _session(path: str, threads: int, arena: bool = False) -> object:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # no arena of its own: it keeps the largest window's activations (about 0.6 GB at a 1408² read
    # box) for the whole run, and more when workers run the session at once (measured at 2745² with
    # 2 workers: the learned stage's peak 1225 MB without, 2039 MB with); the numbers do not change
    so.enable_cpu_mem_arena = False
    if arena and _shared_arena():
        so.enable_cpu_mem_arena = True
        so.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


_ARENA_LOCK = threading.Lock()
_ARENA: list[bool] = []


def _shared_arena() -> bool:
    """One onnxruntime arena for the process, shared by the sessions that ask for it (registered
    once; False where it cannot be): growing by what is asked, not by powers of two."""
    with _ARENA_LOCK:
        if not _ARENA:
            import onnxruntime as ort

            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
                _ARENA.append(True)
            except Exception:  # noqa: BLE001 - an older onnxruntime: no shared arena, the same numbers
                _ARENA.append(False)
        return _ARENA[0]


def release_arena(threads: int | None = None) -> None:
    """Give the shared arena's memory back (a run of the encoder's second part on a tiny input that
    shrinks the arena after it: every free region goes)."""
    if not _ARENA or not _ARENA[0]:
        return
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    sess = _session(str(ENCODER_FROM_S4_PATH), threads or default_threads(), True)
    sess.run(None, {"f4": np.zeros((1, TAP_CHANNELS[0], STRIDE, STRIDE), np.float32)}, ro)  # type: ignore[attr-defined]


def default_threads() -> int:
    """Threads for onnxruntime: ``CHANGEDET_THREADS`` or every core the process may use."""
    env = os.environ.get("CHANGEDET_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def encode(x: np.ndarray, threads: int | None = None, path: Path = ENCODER_PATH) -> tuple[np.ndarray, ...]:
    """Run the encoder on (3, h, w) input (h, w multiples of 16): feature maps at strides 4, 8, 16."""
    sess = _session(str(path), threads or default_threads())
    outs = sess.run(None, {"image": x[None].astype(np.float32, copy=False)})  # type: ignore[attr-defined]
    return tuple(o[0] for o in outs)


def encode_s4(x: np.ndarray, threads: int | None = None, arena: bool = False) -> np.ndarray:
    """The encoder's stride-4 tap (24, h/4, w/4) of (3, h, w) input (h, w multiples of 4): the first
    output of :func:`encode`, the same numbers, from the first part of the encoder alone.

    With ``arena``, onnxruntime's activations come from one arena shared by both parts and kept
    between runs until :func:`release_arena` (no page faults of fresh memory at every run: 40 %
    less time for this part, 25 % for the second); the numbers are the same.
    """
    sess = _session(str(ENCODER_S4_PATH), threads or default_threads(), arena)
    return sess.run(None, {"image": x[None].astype(np.float32, copy=False)})[0][0]  # type: ignore[attr-defined]


def encode_from_s4(f4: np.ndarray, threads: int | None = None, arena: bool = False) -> tuple[np.ndarray, ...]:
    """All three taps from the stride-4 tap (h/4, w/4 multiples of 4): :func:`encode`'s numbers."""
    sess = _session(str(ENCODER_FROM_S4_PATH), threads or default_threads(), arena)
    outs = sess.run(None, {"f4": np.ascontiguousarray(f4, np.float32)[None]})  # type: ignore[attr-defined]
    return (f4,) + tuple(o[0] for o in outs)


def _up(fmap: np.ndarray, factor: int, out: np.ndarray | None = None) -> np.ndarray:
    """(c, h, w) -> (c, h*factor, w*factor), bilinear with centres aligned; into ``out`` when given."""
    c, h, w = fmap.shape
    if out is None:
        out = np.empty((c, h * factor, w * factor), np.float32)
    if factor == 1:
        out[...] = fmap
        return out
    flat = fmap.reshape(c, h * w).T.reshape(h, w, c)
    for i in range(0, c, 256):  # cv2 takes at most 512 channels
        up = cv2.resize(np.ascontiguousarray(flat[..., i:i + 256]), (w * factor, h * factor),
                        interpolation=cv2.INTER_LINEAR).reshape(h * factor, w * factor, -1)
        out[i:i + up.shape[2]] = up.transpose(2, 0, 1)
    return out


@dataclass(frozen=True)
class PairTaps:
    """The encoder's taps of both dates, as the head's features need them: per tap, the absolute
    difference and the mean at the tap's own stride, and the factor up to the head's grid."""

    parts: tuple[tuple[np.ndarray, int], ...]  # ((c, h_tap, w_tap) float32, factor), in feature order
    shape: tuple[int, int]  # the head's grid (h/4, w/4), or of the block of it these taps hold
    origin: tuple[int, int] = (0, 0)  # the read box's head-grid cell at this grid's (0, 0) (:meth:`around`)

    def around(self, cells: tuple[int, int, int, int]) -> PairTaps:
        """The taps the head needs for the block ``cells`` (row0, col0, row1, col1 of the read box's
        head grid): views of each tap's rows and columns that :meth:`FirstLayer.rows` reads for any
        rows of the block (one coarsest cell more on each side), with :attr:`origin` set. The head
        gives the same numbers on them as on the whole (:meth:`~changedet.learned.head.Head.predict_taps`),
        up to the last bits of float64 (BLAS may sum a row differently in a shorter product)."""
        factors = [f for _, f in self.parts]
        maps, shape, origin = _around([p for p, _ in self.parts], factors, self.shape, self.origin, cells)
        return PairTaps(tuple(zip(maps, factors)), shape, origin)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` of the head's features, (N_FEATURES, r1 - r0, w) float32: the same numbers
        as those rows of :func:`pair_features`, upsampling only the tap rows they need (bilinear
        interpolation reads the two nearest rows, so one more row on each side keeps the edges)."""
        h, w = self.shape
        out = np.empty((sum(p.shape[0] for p, _ in self.parts), r1 - r0, w), np.float32)
        k = 0
        for part, factor in self.parts:
            c, th = part.shape[0], part.shape[1]
            s0, s1 = max(0, r0 // factor - 1), min(th, (r1 - 1) // factor + 2)
            up = _up(part[:, s0:s1], factor)
            out[k:k + c] = up[:, r0 - s0 * factor:r1 - s0 * factor]
            k += c
        return out

    def first_layer(self, weights: np.ndarray, bias: np.ndarray) -> FirstLayer:
        """The head's first (linear) layer on these taps without making the features: ``weights``
        (N_FEATURES, k) and ``bias`` (k,), float64, applied as :meth:`FirstLayer.rows` asks.

        Bilinear upsampling is linear and its weights sum to one, so the features times ``weights``
        equal each tap times its rows of ``weights`` at the tap's own stride, upsampled: the stride-8
        and stride-16 taps are multiplied at 1/4 and 1/16 of the pixels, and the 352 features of a
        pixel are never made. The numbers equal those of the features up to rounding (float64).
        """
        fine_parts, fine_rows = [], []
        coarse: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        k = 0
        for part, factor in self.parts:
            rows = weights[k:k + part.shape[0]]
            k += part.shape[0]
            if factor == 1:
                fine_parts.append(part)
                fine_rows.append(rows)
            else:
                coarse.setdefault(factor, []).append((part, rows))
        projected = []
        for factor, items in coarse.items():  # one product per stride: its parts' channels side by side
            x = np.concatenate([p for p, _ in items])
            c, th, tw = x.shape
            proj = x.reshape(c, th * tw).T.astype(np.float64) @ np.concatenate([r for _, r in items])
            projected.append((proj.reshape(th, tw, -1), factor))
        fine = np.concatenate(fine_parts) if fine_parts else None
        w_fine = np.concatenate(fine_rows) if fine_rows else None
        return FirstLayer(fine, w_fine, tuple(projected), np.asarray(bias, np.float64), self.shape)


@dataclass(frozen=True)
class FirstLayer:
    """The head's first layer on a read box's taps (:meth:`PairTaps.first_layer`), by rows."""

    fine: np.ndarray | None  # (c, h, w) float32 taps on the head's grid
    w_fine: np.ndarray | None  # (c, k) float64 their weights
    coarse: tuple[tuple[np.ndarray, int], ...]  # ((h_tap, w_tap, k) float64 projected taps, factor)
    bias: np.ndarray  # (k,) float64
    shape: tuple[int, int]  # the head's grid

    def rows(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        """((r1 - r0) * (c1 - c0), k) float64: rows ``r0:r1``, columns ``c0:c1`` (default all) of the
        head's grid, row-major, before the activation.

        The projected taps are upsampled only on the tap rows and columns these cells need (one
        more on each side), as :meth:`PairTaps.rows` does, so any block gives the numbers of the whole
        (up to float64 rounding in the product of the stride-4 taps).
        """
        c1 = self.shape[1] if c1 is None else c1
        if self.fine is not None and self.w_fine is not None:
            c = self.fine.shape[0]
            out = self.fine[:, r0:r1, c0:c1].reshape(c, -1).T.astype(np.float64) @ self.w_fine
            out += self.bias  # the product plus the bias: the same sum as the bias plus the product
        else:
            out = np.empty(((r1 - r0) * (c1 - c0), self.bias.size), np.float64)
            out[...] = self.bias
        for proj, factor in self.coarse:
            th, tw, k = proj.shape
            s0, s1 = max(0, r0 // factor - 1), min(th, (r1 - 1) // factor + 2)
            t0, t1 = max(0, c0 // factor - 1), min(tw, (c1 - 1) // factor + 2)
            up = cv2.resize(np.ascontiguousarray(proj[s0:s1, t0:t1]), ((t1 - t0) * factor, (s1 - s0) * factor),
                            interpolation=cv2.INTER_LINEAR).reshape((s1 - s0) * factor, (t1 - t0) * factor, k)
            out += up[r0 - s0 * factor:r1 - s0 * factor, c0 - t0 * factor:c1 - t0 * factor].reshape(-1, k)
        return out


def pair_taps(xb: np.ndarray, xa: np.ndarray, threads: int | None = None,
              cells: tuple[int, int, int, int] | None = None) -> PairTaps:
    """The encoder's taps of both dates for :meth:`PairTaps.rows` (about 7 MB at a 1408² read box,
    where the upsampled features are 174 MB); with ``cells``, around that block (:func:`taps_of`)."""
    return taps_of(encode(xb, threads), encode(xa, threads), cells)


def pair_taps_s4(f4b: np.ndarray, f4a: np.ndarray, threads: int | None = None, arena: bool = False,
                 cells: tuple[int, int, int, int] | None = None) -> PairTaps:
    """:func:`pair_taps` from both dates' stride-4 taps of the read box (:func:`encode_s4`)."""
    return taps_of(encode_from_s4(f4b, threads, arena), encode_from_s4(f4a, threads, arena), cells)


def taps_of(fb: tuple[np.ndarray, ...], fa: tuple[np.ndarray, ...],
            cells: tuple[int, int, int, int] | None = None) -> PairTaps:
    """The head's view of both dates' taps (:func:`encode`): per tap, the difference and the mean;
    with ``cells``, only around that block of the head's grid (:meth:`PairTaps.around`)."""
    factors = [stride // HEAD_STRIDE for stride in (4, 8, 16)][:len(fb)]
    shape, origin = fb[0].shape[1:], (0, 0)  # the stride-4 tap is on the head's grid
    if cells is not None:
        (fb_crop, shape, origin), (fa_crop, _, _) = (_around(list(f), factors, shape, (0, 0), cells)
                                                      for f in (fb, fa))
        fb, fa = tuple(fb_crop), tuple(fa_crop)
    parts = []
    for tb, ta, up in zip(fb, fa, factors):
        parts += [(np.abs(ta - tb), up), (0.5 * (ta + tb), up)]
    return PairTaps(tuple(parts), shape, origin)


def _around(maps: list[np.ndarray], factors: list[int], shape: tuple[int, int], origin: tuple[int, int],
            cells: tuple[int, int, int, int]) -> tuple[tuple, tuple[int, int], tuple[int, int]]:
    """Views of ``maps`` (each (c, h / factor, w / factor) on a head grid of ``shape`` starting at
    ``origin``) around the block ``cells`` of the read box's head grid: (maps, shape, origin).

    The block is grown to whole cells of the coarsest map and by one of them on each side (what
    bilinear upsampling reads), so that every map starts on one of its own cells and a row of the
    block reads the same map rows, relative to the crop, as it does in the whole.
    """
    big = max(factors)
    lo, hi = [], []
    for i in range(2):
        start, stop = cells[i] - origin[i], cells[i + 2] - origin[i]
        if not 0 <= start < stop <= shape[i]:
            raise ValueError(f"cells {cells} are not within the taps' grid at {origin} of {shape}")
        lo.append(max(0, start // big - 1) * big)
        hi.append(min(shape[i], ((stop - 1) // big + 2) * big))
    out = [m[:, lo[0] // f:-(-hi[0] // f), lo[1] // f:-(-hi[1] // f)] for m, f in zip(maps, factors)]
    return tuple(out), (hi[0] - lo[0], hi[1] - lo[1]), (origin[0] + lo[0], origin[1] + lo[1])


def pair_features(xb: np.ndarray, xa: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Head input at stride 4 for encoder inputs of both dates: (N_FEATURES, h/4, w/4) float32."""
    taps = pair_taps(xb, xa, threads)
    return taps.rows(0, taps.shape[0])


def padded_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The read box of a window (row, col, h, w): grown by the halo and rounded out to the stride-16 grid."""
    r, c, h, w = box
    r0, c0 = r - HALO_PX, c - HALO_PX
    r1 = r + h + HALO_PX
    c1 = c + w + HALO_PX
    r1 = r0 + -(-(r1 - r0) // STRIDE) * STRIDE
    c1 = c0 + -(-(c1 - c0) // STRIDE) * STRIDE
    return r0, c0, r1 - r0, c1 - c0
