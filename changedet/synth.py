"""Synthetic before/after scenes with exact ground truth.

A scene is rendered in reflectance (0..1) on the before grid: textured land
cover, roads, structures present on both dates, water with piers in ports; the
after date adds the changes (trenches, huts, vessels, cleared ground) and
removes departing vessels. Both dates are blurred by a sensor PSF; the after
image then gets the nuisances that are not change (a subpixel shift, per-band
gain and offset, a seasonal tint on vegetation, haze when hard) and both get
noise. Truth masks are the rasterised footprints on the before grid: a pixel
belongs to an object when its centre lies inside the object's outline (pixel
``(r, c)`` has its centre at ``(x, y) = (c, r)``), so masks have the nominal size
recorded in the truth.

Weather (``make_scene(..., weather=...)``, off by default) adds clouds with their
shadows, thick haze, seasonal change of vegetation and fields, and JPEG
compression, each from its own random stream so that scenes without weather are
exactly what they were before it existed. Cloud, shadow and thick-haze pixels are
255 (not observable) in the class truth.

Shift convention: ``after(x + dx, y + dy) = before(x, y)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
from affine import Affine
from scipy import ndimage
from skimage import draw

SCENARIOS = ("trenches", "camp", "port")
DIFFICULTIES = ("easy", "medium", "hard")
CLASS_CODES = {"other": 1, "trench": 2, "hut": 3, "vessel": 4}

# reflectance of materials in (red, green, blue, nir)
SOIL = (0.30, 0.26, 0.21, 0.36)
GRASS = (0.07, 0.11, 0.06, 0.42)
SCRUB = (0.14, 0.15, 0.10, 0.30)
ROAD = (0.42, 0.41, 0.39, 0.38)
CONCRETE = (0.48, 0.47, 0.45, 0.42)
WATER = (0.035, 0.06, 0.08, 0.015)
FRESH_SOIL = (0.13, 0.11, 0.09, 0.15)  # dug earth in shadow
CLEARED = (0.40, 0.34, 0.27, 0.40)
ROOFS = ((0.62, 0.62, 0.64, 0.55), (0.55, 0.22, 0.17, 0.35), (0.22, 0.30, 0.45, 0.30), (0.38, 0.36, 0.30, 0.33))
HULLS = ((0.55, 0.56, 0.58, 0.45), (0.30, 0.31, 0.33, 0.25), (0.68, 0.68, 0.70, 0.60))

# per difficulty: change contrast (blend toward the material), noise sigma, gain spread, size factor
LEVELS = {
    "easy": {"contrast": 1.0, "noise": 0.004, "gain": 0.08, "offset": 0.01, "scale": 1.0, "haze": 0.0},
    "medium": {"contrast": 0.8, "noise": 0.008, "gain": 0.15, "offset": 0.02, "scale": 0.85, "haze": 0.0},
    "hard": {"contrast": 0.6, "noise": 0.014, "gain": 0.3, "offset": 0.03, "scale": 0.7, "haze": 0.04},
}


@dataclass(frozen=True)
class TruthObject:
    """One change in the truth: class, event and geometry on the before grid."""

    id: int
    cls: str
    event: str
    bbox_px: tuple[int, int, int, int]  # col_min, row_min, col_max, row_max (inclusive)
    area_m2: float
    length_m: float
    width_m: float
    orientation_deg: float


@dataclass(frozen=True)
class Scene:
    """A rendered pair with its truth."""

    before: np.ndarray
    after: np.ndarray
    truth_class: np.ndarray
    truth_instances: np.ndarray
    objects: tuple[TruthObject, ...]
    shift_px: tuple[float, float]
    transform: Affine
    crs: str
    gsd_m: float
    band_names: tuple[str, ...]
    scenario: str
    seed: int
    difficulty: str
    nuisances: dict[str, Any] = field(default_factory=dict)
    weather_mask: np.ndarray | None = None  # (H, W) uint8 WEATHER_CODES on the before grid; None without weather
    observable_fraction: tuple[float, ...] = ()  # per object, share of its pixels not under weather


@dataclass
class _Canvas:
    """Mutable rendering state (reflectance images, masks, truth)."""

    before: np.ndarray  # (4, H, W) float32
    after: np.ndarray
    occupied: np.ndarray  # (H, W) bool: where nothing new may be placed
    water: np.ndarray  # (H, W) bool
    vegetation: np.ndarray  # (H, W) float 0..1
    instances: np.ndarray  # (H, W) uint16
    pending: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Region:
    """A mask held on a window of the grid: ``m`` is the full mask's ``[r0:r0 + h, c0:c0 + w]``.

    Placing objects tests and paints many candidate shapes; holding each on its own window
    keeps that work proportional to the shape, not to the scene (a 4096² scene has ~500).
    """

    r0: int
    c0: int
    m: np.ndarray  # (h, w) bool

    @property
    def sl(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r0 + self.m.shape[0]), slice(self.c0, self.c0 + self.m.shape[1])

    def of(self, img: np.ndarray) -> np.ndarray:
        """The view of a (H, W) or (B, H, W) array on this window."""
        return img[self.sl] if img.ndim == 2 else img[(slice(None),) + self.sl]

    def __or__(self, other: _Region) -> _Region:
        r0, c0 = min(self.r0, other.r0), min(self.c0, other.c0)
        r1 = max(self.r0 + self.m.shape[0], other.r0 + other.m.shape[0])
        c1 = max(self.c0 + self.m.shape[1], other.c0 + other.m.shape[1])
        m = np.zeros((r1 - r0, c1 - c0), bool)
        for g in (self, other):
            m[g.r0 - r0:g.r0 - r0 + g.m.shape[0], g.c0 - c0:g.c0 - c0 + g.m.shape[1]] |= g.m
        return _Region(r0, c0, m)

    def on(self, other: _Region) -> np.ndarray:
        """This region's mask on ``other``'s window (False outside this region's own window)."""
        out = np.zeros(other.m.shape, bool)
        r0, r1 = max(self.r0, other.r0), min(self.r0 + self.m.shape[0], other.r0 + other.m.shape[0])
        c0, c1 = max(self.c0, other.c0), min(self.c0 + self.m.shape[1], other.c0 + other.m.shape[1])
        if r0 < r1 and c0 < c1:
            out[r0 - other.r0:r1 - other.r0, c0 - other.c0:c1 - other.c0] = \
                self.m[r0 - self.r0:r1 - self.r0, c0 - self.c0:c1 - self.c0]
        return out

    def minus(self, other: _Region) -> _Region:
        """This region without ``other``'s pixels, on this window."""
        return _Region(self.r0, self.c0, self.m & ~other.on(self))

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        out[self.sl] = self.m
        return out


def _poly_region(shape: tuple[int, int], pts: np.ndarray) -> _Region:
    """:func:`_poly_mask` on the polygon's own window (an empty region when it is off the grid)."""
    pts = np.asarray(pts, dtype=np.float64)
    rr, cc = draw.polygon(pts[:, 1], pts[:, 0], shape=shape)
    if rr.size == 0:
        return _Region(0, 0, np.zeros((0, 0), bool))
    r0, c0 = int(rr.min()), int(cc.min())
    m = np.zeros((int(rr.max()) - r0 + 1, int(cc.max()) - c0 + 1), bool)
    m[rr - r0, cc - c0] = True
    return _Region(r0, c0, m)


def _line_region(shape: tuple[int, int], pts: np.ndarray, width_px: float) -> _Region:
    """:func:`_line_mask` on the line's own window (an empty region when it is off the grid)."""
    h, w = shape
    pts = np.asarray(pts, dtype=np.float64)
    half = float(width_px) / 2.0
    r0 = max(0, int(math.floor(pts[:, 1].min() - half)))
    r1 = min(h - 1, int(math.ceil(pts[:, 1].max() + half)))
    c0 = max(0, int(math.floor(pts[:, 0].min() - half)))
    c1 = min(w - 1, int(math.ceil(pts[:, 0].max() + half)))
    if r0 > r1 or c0 > c1:
        return _Region(0, 0, np.zeros((0, 0), bool))
    m = np.zeros((r1 - r0 + 1, c1 - c0 + 1), bool)
    for a, b in zip(pts[:-1], pts[1:]):
        sc0 = max(0, int(math.floor(min(a[0], b[0]) - half)))
        sc1 = min(w - 1, int(math.ceil(max(a[0], b[0]) + half)))
        sr0 = max(0, int(math.floor(min(a[1], b[1]) - half)))
        sr1 = min(h - 1, int(math.ceil(max(a[1], b[1]) + half)))
        if sc0 > sc1 or sr0 > sr1:
            continue
        ys, xs = np.mgrid[sr0:sr1 + 1, sc0:sc1 + 1].astype(np.float64)
        d = b - a
        len2 = float(d @ d)
        t = np.zeros_like(xs) if len2 == 0.0 else \
            np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / len2, 0.0, 1.0)
        dist2 = (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2
        m[sr0 - r0:sr1 + 1 - r0, sc0 - c0:sc1 + 1 - c0] |= dist2 <= half * half
    return _Region(r0, c0, m)


def _noise_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth zero-mean unit-std noise with correlation length ``sigma`` pixels."""
    f = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma) if sigma > 0 else \
        rng.standard_normal(shape).astype(np.float32)
    return (f - f.mean()) / (f.std() + 1e-9)


def _fractal(rng: np.random.Generator, shape: tuple[int, int], scales: tuple[float, ...]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for s in scales:
        out += _noise_field(rng, shape, s) * math.sqrt(s)
    return (out - out.mean()) / (out.std() + 1e-9)


def _paint(img: np.ndarray, mask: np.ndarray, colour: tuple[float, ...], alpha: float = 1.0,
           texture: np.ndarray | None = None) -> None:
    """Blend ``colour`` into ``img`` where ``mask``; optional multiplicative texture."""
    for b in range(img.shape[0]):
        value = colour[b] * (1.0 if texture is None else texture[mask])
        img[b][mask] = (1 - alpha) * img[b][mask] + alpha * value


def _poly_mask(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    """Pixels whose centre lies inside a polygon.

    Parameters
    ----------
    shape : (rows, cols) of the grid.
    pts : (n, 2) float vertices as (x, y) = (col, row); pixel ``(r, c)`` has its centre at
        ``(x, y) = (c, r)``. Vertices are used as given (no rounding) and may lie off the grid.

    Returns
    -------
    (rows, cols) bool mask. Its pixel count is an unbiased estimate of the polygon's area in
    px² (exact in expectation over sub-pixel placement), unlike an outline fill that also paints
    every pixel the outline touches.
    """
    return _poly_region(shape, pts).full(shape)


def _line_mask(shape: tuple[int, int], pts: np.ndarray, width_px: float) -> np.ndarray:
    """Pixels whose centre lies within ``width_px / 2`` of a polyline (round caps and joins).

    Parameters
    ----------
    shape : (rows, cols) of the grid.
    pts : (n, 2) float vertices as (x, y) = (col, row), pixel centres at integer coordinates
        as in :func:`_poly_mask`; not rounded.
    width_px : full width of the line in pixels (any positive float).

    Returns
    -------
    (rows, cols) bool mask: the union over segments of the pixels whose centre's distance to
    the segment is at most ``width_px / 2``, each segment evaluated on its own bounding box.
    """
    return _line_region(shape, pts, width_px).full(shape)


def _rect(cx: float, cy: float, length: float, width: float, angle_deg: float) -> np.ndarray:
    """Corners of a rotated rectangle; ``angle_deg`` is the long axis, clockwise from north."""
    a = math.radians(angle_deg)
    u = np.array([math.sin(a), -math.cos(a)])  # along (x right, y down)
    v = np.array([math.cos(a), math.sin(a)])  # across
    c = np.array([cx, cy])
    return np.array([c + s * length / 2 * u + t * width / 2 * v for s, t in ((1, 1), (1, -1), (-1, -1), (-1, 1))])


def _hull(cx: float, cy: float, length: float, width: float, angle_deg: float) -> np.ndarray:
    """A ship's outline: a pointed bow, a square stern."""
    a = math.radians(angle_deg)
    u = np.array([math.sin(a), -math.cos(a)])
    v = np.array([math.cos(a), math.sin(a)])
    c = np.array([cx, cy])
    half_l, half_w = length / 2, width / 2
    pts = [(-half_l, -half_w), (half_l - 1.2 * width, -half_w), (half_l, 0), (half_l - 1.2 * width, half_w),
           (-half_l, half_w)]
    return np.array([c + s * u + t * v for s, t in pts])


def _free(canvas: _Canvas, reg: _Region, margin: int = 10) -> bool:
    """True when ``reg`` stays off occupied ground and ``margin`` px from the edge."""
    h, w = canvas.occupied.shape
    rows, cols = np.nonzero(reg.m)
    if rows.size == 0:
        return False
    if (reg.r0 + rows.min() < margin or reg.c0 + cols.min() < margin or reg.r0 + rows.max() >= h - margin
            or reg.c0 + cols.max() >= w - margin):
        return False
    return not (reg.of(canvas.occupied) & reg.m).any()


def _reserve(canvas: _Canvas, reg: _Region, gap_px: int) -> None:
    """Mark ``reg`` grown by ``gap_px`` as occupied (dilated on its window with a ``gap_px`` margin)."""
    h, w = canvas.occupied.shape
    r0, c0 = max(0, reg.r0 - gap_px), max(0, reg.c0 - gap_px)
    r1, c1 = min(h, reg.r0 + reg.m.shape[0] + gap_px), min(w, reg.c0 + reg.m.shape[1] + gap_px)
    local = np.zeros((r1 - r0, c1 - c0), np.uint8)
    local[reg.r0 - r0:reg.r0 - r0 + reg.m.shape[0], reg.c0 - c0:reg.c0 - c0 + reg.m.shape[1]] = reg.m
    k = np.ones((2 * gap_px + 1, 2 * gap_px + 1), np.uint8)
    canvas.occupied[r0:r1, c0:c1] |= cv2.dilate(local, k).astype(bool)


def _orientation_of(pts: np.ndarray) -> tuple[float, float, float]:
    """(long side, short side, orientation clockwise from north) of a point set's min-area rectangle."""
    rect = cv2.minAreaRect(pts.astype(np.float32))
    box = cv2.boxPoints(rect)
    e1, e2 = box[1] - box[0], box[2] - box[1]
    long_vec = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
    angle = math.degrees(math.atan2(float(long_vec[0]), -float(long_vec[1]))) % 180.0
    return max(rect[1]), min(rect[1]), angle


def _add_truth(canvas: _Canvas, mask: _Region, cls: str, event: str, length_px: float, width_px: float,
               angle: float, gap_px: int = 4) -> None:
    canvas.pending.append({"mask": mask, "cls": cls, "event": event, "length_px": length_px,
                           "width_px": width_px, "angle": angle})
    _reserve(canvas, mask, gap_px)


# --------------------------------------------------------------------------- base scene


def _terrain(rng: np.random.Generator, shape: tuple[int, int], gsd: float) -> tuple[np.ndarray, np.ndarray]:
    """Land cover (soil / grass / scrub patches) with texture; returns (4, H, W) and vegetation 0..1."""
    cover = _fractal(rng, shape, (40 / gsd, 15 / gsd))
    fine = _fractal(rng, shape, (0.8, 2.0, 5.0))
    veg = np.clip((cover + 0.3) * 1.5, 0, 1)
    scrub_mask = _noise_field(rng, shape, 6 / gsd) > 0.9
    img = np.empty((4,) + shape, np.float32)
    for b in range(4):
        img[b] = (1 - veg) * SOIL[b] + veg * GRASS[b]
        img[b][scrub_mask] = SCRUB[b]
        img[b] *= 1.0 + 0.12 * fine
    # field parcels: a few rectangles of a distinct, striped crop texture
    h, w = shape
    rows = np.arange(h)[:, None]
    for _ in range(rng.integers(1, 3)):
        pts = _rect(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(60, 140) / gsd, rng.uniform(40, 90) / gsd,
                    rng.uniform(0, 180))
        m = _poly_mask(shape, pts)
        stripes = (1.0 + 0.08 * np.sin(rows * 2 * math.pi / rng.uniform(4, 8))).astype(np.float32)
        stripes = np.broadcast_to(stripes, shape)
        _paint(img, m, GRASS if rng.random() < 0.5 else SCRUB, 1.0, stripes)
        veg[m] = 1.0
    return img, veg


def _roads(rng: np.random.Generator, canvas: _Canvas, gsd: float, n: int) -> None:
    h, w = canvas.occupied.shape
    for _ in range(n):
        p0 = np.array([rng.uniform(0, w), 0.0]) if rng.random() < 0.5 else np.array([0.0, rng.uniform(0, h)])
        p2 = np.array([w - p0[0], h]) if p0[1] == 0 else np.array([w, h - p0[1]])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * w, 2)
        t = np.linspace(0, 1, 60)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        width = max(2, int(round(rng.uniform(3, 8) / gsd)))
        line = _line_region(canvas.occupied.shape, pts, width)
        m = _Region(line.r0, line.c0, line.m & ~line.of(canvas.water))
        for img in (canvas.before, canvas.after):
            _paint(m.of(img), m.m, ROAD)
        m.of(canvas.vegetation)[m.m] = 0
        _reserve(canvas, m, 3)


def _buildings(rng: np.random.Generator, canvas: _Canvas, gsd: float, n: int) -> None:
    """Structures on both dates (not change), each with a shadow."""
    shape = canvas.occupied.shape
    placed = tries = 0
    while placed < n and tries < 40 * n:
        tries += 1
        length, width = rng.uniform(6, 25) / gsd, rng.uniform(4, 12) / gsd
        pts = _rect(rng.uniform(0, shape[1]), rng.uniform(0, shape[0]), length, width, rng.uniform(0, 180))
        m = _poly_region(shape, pts)
        if not _free(canvas, m) or (m.of(canvas.water) & m.m).any():
            continue
        shadow = _poly_region(shape, pts + np.array([1.5, 1.5]) / gsd).minus(m)
        roof = ROOFS[rng.integers(len(ROOFS))]
        for img in (canvas.before, canvas.after):
            for b in range(4):
                shadow.of(img[b])[shadow.m] *= 0.45
            _paint(m.of(img), m.m, roof)
        both = m | shadow
        both.of(canvas.vegetation)[both.m] = 0
        _reserve(canvas, both, 3)
        placed += 1


def _sea(rng: np.random.Generator, canvas: _Canvas, gsd: float) -> None:
    """Water along one side with a wavy shore, a textured surface, and piers."""
    h, w = canvas.occupied.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = rng.uniform(0.35, 0.5) * w
    wobble = 0.04 * w * np.sin(rows / h * rng.uniform(2, 5) + rng.uniform(0, 6))
    water = cols > (w - depth + wobble)
    canvas.water[:] = water
    waves = 1.0 + 0.06 * _fractal(rng, (h, w), (1.5, 4.0))
    for img in (canvas.before, canvas.after):
        _paint(img, water, WATER, 1.0, waves)
    canvas.vegetation[water] = 0
    shore_col = (w - depth + wobble)[:, 0]
    for _ in range(rng.integers(2, 4)):
        r = rng.uniform(0.15, 0.85) * h
        c0 = float(shore_col[int(r)]) - 5
        length, width = rng.uniform(60, 140) / gsd, rng.uniform(8, 14) / gsd
        pts = np.array([[c0, r - width / 2], [c0 + length, r - width / 2], [c0 + length, r + width / 2],
                        [c0, r + width / 2]])
        m = _poly_region((h, w), pts)
        for img in (canvas.before, canvas.after):
            _paint(m.of(img), m.m, CONCRETE)
        m.of(canvas.water)[m.m] = False
        _reserve(canvas, m, int(3 / gsd))


# --------------------------------------------------------------------------- changes


def _blend(level: dict[str, float], colour: tuple[float, ...], background: np.ndarray) -> tuple[float, ...]:
    """A change colour pulled toward the local background by the difficulty's contrast."""
    a = level["contrast"]
    return tuple(a * c + (1 - a) * float(bg) for c, bg in zip(colour, background))


def _trenches(rng: np.random.Generator, canvas: _Canvas, gsd: float, level: dict[str, float], n: int) -> None:
    shape = canvas.occupied.shape
    placed = tries = 0
    while placed < n and tries < 60 * n:
        tries += 1
        width_m = rng.uniform(1.2, 3.0) * (1.0 if level["scale"] >= 0.85 else 0.85)
        width_px = max(2, int(round(width_m / gsd)))
        total_m = rng.uniform(25, 120) * level["scale"]
        n_seg = int(rng.integers(2, 6))
        heading = rng.uniform(0, 2 * math.pi)
        zig = rng.uniform(25, 55)
        pts = [np.array([rng.uniform(0, shape[1]), rng.uniform(0, shape[0])])]
        for k in range(n_seg):
            ang = heading + math.radians(zig if k % 2 == 0 else -zig) + rng.normal(0, 0.15)
            seg = total_m / n_seg / gsd
            pts.append(pts[-1] + seg * np.array([math.cos(ang), math.sin(ang)]))
        pts_a = np.array(pts)
        m = _line_region(shape, pts_a, width_px)
        if not _free(canvas, m) or (m.of(canvas.water) & m.m).any():
            continue
        bg = m.of(canvas.before)[:, m.m].mean(axis=1)
        _paint(m.of(canvas.after), m.m, _blend(level, FRESH_SOIL, bg))
        # spoil heaped along one side: lighter soil, part of the earthwork
        path_px = sum(float(np.hypot(*(b - a))) for a, b in zip(pts_a[:-1], pts_a[1:]))
        _add_truth(canvas, m, "trench", "appeared", path_px + width_px, width_px, _orientation_of(pts_a)[2])
        placed += 1


def _huts(rng: np.random.Generator, canvas: _Canvas, gsd: float, level: dict[str, float], n: int) -> None:
    shape = canvas.occupied.shape
    placed = tries = 0
    while placed < n and tries < 60 * n:
        tries += 1
        side_a = rng.uniform(4, 20) * level["scale"]
        side_b = rng.uniform(min(3.0, side_a), min(side_a, 12))  # hard scenes shrink side_a below 3 m
        length, width = max(side_a, side_b) / gsd, min(side_a, side_b) / gsd
        angle = rng.uniform(0, 180)
        pts = _rect(rng.uniform(0, shape[1]), rng.uniform(0, shape[0]), length, width, angle)
        m = _poly_region(shape, pts)
        if not _free(canvas, m) or (m.of(canvas.water) & m.m).any():
            continue
        bg = m.of(canvas.before)[:, m.m].mean(axis=1)
        roof = ROOFS[rng.integers(len(ROOFS))]
        shadow = _poly_region(shape, pts + np.array([0.8, 0.8]) / gsd).minus(m)
        for b in range(4):
            shadow.of(canvas.after[b])[shadow.m] *= 1 - 0.5 * level["contrast"]
        _paint(m.of(canvas.after), m.m, _blend(level, roof, bg))
        _add_truth(canvas, m, "hut", "appeared", length, width, angle % 180)
        placed += 1


def _cleared(rng: np.random.Generator, canvas: _Canvas, gsd: float, level: dict[str, float]) -> None:
    """An 'other' change: a bulldozed patch of bare ground."""
    shape = canvas.occupied.shape
    for _ in range(60):
        r = rng.uniform(12, 30) / gsd
        angles = np.sort(rng.uniform(0, 2 * math.pi, 7))
        radii = r * rng.uniform(0.6, 1.0, 7)
        c = np.array([rng.uniform(0, shape[1]), rng.uniform(0, shape[0])])
        pts = c + np.column_stack([np.cos(angles) * radii, np.sin(angles) * radii])
        m = _poly_region(shape, pts)
        if not _free(canvas, m) or (m.of(canvas.water) & m.m).any():
            continue
        bg = m.of(canvas.before)[:, m.m].mean(axis=1)
        _paint(m.of(canvas.after), m.m, _blend(level, CLEARED, bg))
        m.of(canvas.vegetation)[m.m] = 0
        long_px, short_px, angle = _orientation_of(pts)
        _add_truth(canvas, m, "other", "appeared", long_px, short_px, angle)
        return


def _vessels(rng: np.random.Generator, canvas: _Canvas, gsd: float, level: dict[str, float], n_new: int,
             n_gone: int, n_stay: int) -> None:
    """Vessels on water: new (after only), departed (before only), and moored on both dates."""
    shape = canvas.occupied.shape
    deep = cv2.erode(canvas.water.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    kinds = ["new"] * n_new + ["gone"] * n_gone + ["stay"] * n_stay
    for kind in kinds:
        for _ in range(200):
            length_m = rng.uniform(20, 150) * level["scale"]
            width_m = length_m / rng.uniform(3.5, 7.0)
            angle = rng.uniform(0, 180)
            pts = _hull(rng.uniform(0, shape[1]), rng.uniform(0, shape[0]), length_m / gsd, width_m / gsd, angle)
            m = _poly_region(shape, pts)
            if not _free(canvas, m) or not m.of(deep)[m.m].all():
                continue
            hull = HULLS[rng.integers(len(HULLS))]
            bridge = _poly_region(shape, _rect(*pts[[0, 4]].mean(axis=0) * 0.7 + pts[2] * 0.3,
                                               length_m * 0.18 / gsd, width_m * 0.6 / gsd, angle))
            bridge_m = m.m & bridge.on(m)
            targets = {"new": (canvas.after,), "gone": (canvas.before,), "stay": (canvas.before, canvas.after)}[kind]
            for img in targets:
                bg = m.of(img)[:, m.m].mean(axis=1)
                colour = _blend(level, hull, bg) if kind != "stay" else hull
                _paint(m.of(img), m.m, colour)
                _paint(m.of(img), bridge_m, tuple(min(1.0, 1.25 * c) for c in colour))
            if kind == "stay":
                _reserve(canvas, m, 4)
            else:
                event = "appeared" if kind == "new" else "departed"
                _add_truth(canvas, m, "vessel", event, length_m / gsd, width_m / gsd, angle % 180)
            break


# --------------------------------------------------------------------------- weather (opt-in)

WEATHER = ("cloud", "haze", "season", "jpeg")
WEATHER_CODES = {"clear": 0, "cloud": 1, "shadow": 2, "haze": 3}  # truth_weather.tif
CLOUD_MASK_ALPHA = 0.05  # cloud opacity (or shadow weight) from which a pixel is not observable
THICK_HAZE_TAU = 0.5  # blue optical depth of haze from which a pixel is not observable
HAZE_BAND_FACTOR = (0.62, 0.78, 1.0, 0.3)  # optical depth per band relative to blue (red, green, blue, nir)
STUBBLE = (0.36, 0.31, 0.22, 0.33)
PLOUGHED = (0.22, 0.18, 0.14, 0.24)  # moist turned soil


def parse_weather(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The weather kinds of ``spec``: ``none``, ``all``, one kind or a comma list of kinds.

    Returns the kinds in the canonical order of :data:`WEATHER` (``()`` for ``none``).
    Raises ValueError naming the unknown kind.
    """
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("weather: give none, all, or a comma list of " + ", ".join(WEATHER))
    kinds: set[str] = set()
    for p in parts:
        if p == "all":
            kinds.update(WEATHER)
        elif p in WEATHER:
            kinds.add(p)
        elif p != "none":
            raise ValueError(f"unknown weather {p!r}; choose none, all or a comma list of {', '.join(WEATHER)}")
    if "none" in parts and kinds:
        raise ValueError("weather: none cannot be combined with other kinds")
    return tuple(k for k in WEATHER if k in kinds)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Like :func:`_noise_field`, drawn at a coarser grid and upsampled when ``sigma`` is large (cheap)."""
    if sigma <= 8:
        return _noise_field(rng, shape, sigma)
    f = sigma / 2.0
    small = (max(4, int(math.ceil(shape[0] / f)) + 2), max(4, int(math.ceil(shape[1] / f)) + 2))
    coarse = _noise_field(rng, small, 2.0)
    up = cv2.resize(coarse, (int(small[1] * f), int(small[0] * f)), interpolation=cv2.INTER_CUBIC)[:shape[0], :shape[1]]
    return (up - up.mean()) / (up.std() + 1e-9)


def _date_of(rng: np.random.Generator, canvas: _Canvas, p_after: float = 0.75) -> tuple[str, np.ndarray]:
    """Pick the date a nuisance falls on: after with probability ``p_after``."""
    return ("after", canvas.after) if rng.random() < p_after else ("before", canvas.before)


def _truth_union(canvas: _Canvas) -> np.ndarray:
    union = np.zeros(canvas.occupied.shape, bool)
    for p in canvas.pending:
        p["mask"].of(union)[p["mask"].m] = True
    return union


def _season_fields(rng: np.random.Generator, canvas: _Canvas, gsd: float, area_factor: float) -> list[dict[str, Any]]:
    """Crop parcels on both dates (striped, vegetated) that the season may plough or harvest."""
    shape = canvas.occupied.shape
    fields = []
    for _ in range(max(2, int(round(rng.uniform(1.0, 2.0) * area_factor)))):
        angle = float(rng.uniform(0, 180))
        pts = _rect(rng.uniform(0, shape[1]), rng.uniform(0, shape[0]), rng.uniform(40, 120) / gsd,
                    rng.uniform(30, 80) / gsd, angle)
        reg = _poly_region(shape, pts)
        if not reg.m.any():
            continue
        period = float(rng.uniform(4, 8))
        stripes = _stripes(reg, period, angle, 0.08)
        for img in (canvas.before, canvas.after):
            _paint(reg.of(img), reg.m, GRASS if rng.random() < 0.5 else SCRUB, 1.0, stripes)
        reg.of(canvas.vegetation)[reg.m] = 1.0
        fields.append({"region": reg, "angle": angle, "period": period})
    return fields


def _stripes(reg: _Region, period_px: float, angle_deg: float, amplitude: float) -> np.ndarray:
    """Multiplicative parallel stripes on ``reg``'s window, crests along ``angle_deg`` (clockwise from north)."""
    rows, cols = np.mgrid[reg.r0:reg.r0 + reg.m.shape[0], reg.c0:reg.c0 + reg.m.shape[1]].astype(np.float32)
    a = math.radians(angle_deg)
    across = cols * math.cos(a) + rows * math.sin(a)
    return (1.0 + amplitude * np.sin(across * (2 * math.pi / period_px))).astype(np.float32)


def _season(rng: np.random.Generator, canvas: _Canvas, fields: list[dict[str, Any]], gsd: float) -> dict[str, Any]:
    """Phenology on one date: vegetation greens or browns, some fields are ploughed or harvested.

    None of it is change: it is painted outside every truth object and leaves the truth at 0.
    """
    date, img = _date_of(rng, canvas, 0.5)
    keep = ~_truth_union(canvas)
    gain = float(rng.uniform(0.15, 0.35) * (1 if rng.random() < 0.5 else -1))  # + greening, - browning
    veg = canvas.vegetation * keep * (1.0 + 0.4 * _smooth_noise(rng, keep.shape, 60 / gsd)).clip(0.3, 1.7)
    for b, k in enumerate((-0.5, 0.4, -0.2, 1.0)):
        img[b] *= 1.0 + k * gain * veg
    changed = []
    for f in fields:
        if rng.random() >= 0.7:
            continue
        reg = f["region"]
        kind = "ploughed" if rng.random() < 0.5 else "harvested"
        colour, amp, period = (PLOUGHED, 0.25, rng.uniform(3, 6)) if kind == "ploughed" else \
            (STUBBLE, 0.12, rng.uniform(6, 12))
        angle = float((f["angle"] + rng.choice([0.0, 90.0]) + rng.normal(0, 3)) % 180)
        m = reg.m & reg.of(keep) & (reg.of(canvas.vegetation) > 0.5)
        _paint(reg.of(img), m, colour, 1.0, _stripes(reg, float(period), angle, amp))
        c0, r0 = reg.c0, reg.r0
        changed.append({"kind": kind, "bbox_px": [c0, r0, c0 + reg.m.shape[1] - 1, r0 + reg.m.shape[0] - 1],
                        "stripe_period_px": round(float(period), 3), "stripe_angle_deg": round(angle, 2)})
    return {"date": date, "vegetation_gain": round(gain, 4), "n_fields": len(fields), "fields_changed": changed}


def _thick_haze(rng: np.random.Generator, canvas: _Canvas, gsd: float, code: np.ndarray) -> dict[str, Any]:
    """Haze of spatially varying optical depth: ``I = J t + A (1 - t)``, ``t = exp(-tau k_band)``.

    Thicker in blue (``HAZE_BAND_FACTOR``); pixels with blue depth >= ``THICK_HAZE_TAU`` get
    code 3 in ``code`` (where it is still 0).
    """
    date, img = _date_of(rng, canvas)
    h, w = code.shape
    peak = float(rng.uniform(0.3, 1.0))
    pattern = "patch" if rng.random() < 0.5 else "gradient"
    texture = 1.0 + 0.15 * _smooth_noise(rng, (h, w), 25 / gsd)
    if pattern == "patch":
        cy, cx, radius = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.25, 0.5) * min(h, w)
        rows, cols = np.ogrid[0:h, 0:w]
        r2 = ((rows - cy) ** 2 + (cols - cx) ** 2).astype(np.float32) / np.float32(radius ** 2)
        shape_f = np.exp(-r2 * 1.5)
        geometry = {"centre_px": [round(float(cx), 1), round(float(cy), 1)], "radius_px": round(float(radius), 1)}
    else:
        az = float(rng.uniform(0, 360))
        a = math.radians(az)
        u = (np.arange(w, dtype=np.float32)[None, :] - w / 2) * math.sin(a) - \
            (np.arange(h, dtype=np.float32)[:, None] - h / 2) * math.cos(a)
        shape_f = np.clip(0.5 + u / (0.9 * max(h, w)), 0, 1)  # 0 on one side, 1 on the other
        geometry = {"thickest_toward_deg": round(az, 2)}
    tau = (peak * shape_f * texture).astype(np.float32)
    airlight = tuple(round(float(v * rng.uniform(0.9, 1.1)), 4) for v in (0.30, 0.33, 0.38, 0.26))
    for b, k in enumerate(HAZE_BAND_FACTOR):
        t = np.exp(-tau * np.float32(k))
        img[b] = img[b] * t + np.float32(airlight[b]) * (1 - t)
    thick = tau >= THICK_HAZE_TAU
    code[thick & (code == 0)] = WEATHER_CODES["haze"]
    return {"date": date, "pattern": pattern, **geometry, "peak_tau_blue": round(peak, 4),
            "band_factor": list(HAZE_BAND_FACTOR), "airlight_reflectance": list(airlight),
            "thick_tau_blue": THICK_HAZE_TAU, "thick_fraction": round(float(thick.mean()), 5)}


def _cloud_alpha(rng: np.random.Generator, radius_px: float) -> np.ndarray:
    """Opacity 0..1 of one fractal cloud on a square patch of side ~2.8 radius (soft, translucent rim)."""
    n = int(math.ceil(2.8 * radius_px)) | 1
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) - (n - 1) / 2.0
    a, aspect = rng.uniform(0, math.pi), rng.uniform(0.55, 1.0)
    u = (xx * math.cos(a) + yy * math.sin(a)) / radius_px
    v = (-xx * math.sin(a) + yy * math.cos(a)) / (radius_px * aspect)
    envelope = 1.0 - (u * u + v * v)
    lumps = sum(_smooth_noise(rng, (n, n), radius_px * s) * w for s, w in ((0.35, 0.5), (0.12, 0.3), (0.04, 0.2)))
    density = envelope + 0.45 * lumps
    alpha = np.clip((density - 0.05) / 0.5, 0, 1)
    return (alpha * alpha * (3 - 2 * alpha)).astype(np.float32)  # smoothstep: a soft rim


def _paste(dst: np.ndarray, patch: np.ndarray, r0: int, c0: int) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The window of ``dst`` and the part of ``patch`` (top-left at (r0, c0)) that lies on the grid."""
    h, w = dst.shape[-2:]
    ph, pw = patch.shape
    a0, b0, a1, b1 = max(r0, 0), max(c0, 0), min(r0 + ph, h), min(c0 + pw, w)
    if a0 >= a1 or b0 >= b1:
        return None
    return (slice(a0, a1), slice(b0, b1)), patch[a0 - r0:a1 - r0, b0 - c0:b1 - c0]


def _shadow_vector(rng: np.random.Generator, gsd: float, side_px: int) -> dict[str, Any]:
    """Sun azimuth and elevation, cloud height, and the whole-pixel (dx, dy) from a cloud to its shadow.

    The ground offset is ``height / tan(elevation)``, away from the sun (x east, y south), capped at
    20 % of the tile side; when capped, the height recorded is the one that gives the capped offset.
    """
    azimuth, elevation = float(rng.uniform(100, 260)), float(rng.uniform(35, 70))
    height_m = float(rng.uniform(30, 250))
    length_px = height_m / math.tan(math.radians(elevation)) / gsd
    capped = length_px > 0.2 * side_px
    if capped:
        length_px = 0.2 * side_px
        height_m = length_px * gsd * math.tan(math.radians(elevation))
    a = math.radians(azimuth)
    return {"sun_azimuth_deg": round(azimuth, 2), "sun_elevation_deg": round(elevation, 2),
            "cloud_height_m": round(height_m, 2), "shadow_offset_capped": capped,
            "shadow_offset_px": [int(round(-length_px * math.sin(a))), int(round(length_px * math.cos(a)))]}


def _clouds(rng: np.random.Generator, canvas: _Canvas, gsd: float, code: np.ndarray) -> dict[str, Any]:
    """One to three clouds with their shadows, each on one date.

    The shadow is the cloud's opacity displaced by the scene-wide vector of
    :func:`_shadow_vector`; it multiplies the ground by ``1 - (1 - darkening) * opacity``.
    Pixels with opacity (or shadow weight) >= ``CLOUD_MASK_ALPHA`` get codes 1 / 2 in ``code``.
    """
    h, w = code.shape
    sun = _shadow_vector(rng, gsd, min(h, w))
    sdx, sdy = sun["shadow_offset_px"]
    clouds, layers = [], []
    for _ in range(int(rng.integers(1, 4))):
        radius = float(rng.uniform(0.06, 0.15) * min(h, w))
        alpha = _cloud_alpha(rng, radius)
        opacity = float(rng.uniform(0.9, 1.0))
        alpha *= np.float32(opacity)
        n = alpha.shape[0]
        r0, c0 = int(rng.uniform(0, h)) - n // 2, int(rng.uniform(0, w)) - n // 2
        date, img = _date_of(rng, canvas)
        brightness = float(rng.uniform(0.55, 0.85))
        refl = tuple(round(min(0.9, brightness * k), 4) for k in (1.0, 1.0, 1.03, 0.97))
        darkening = float(rng.uniform(0.3, 0.6))
        layers.append((img, alpha, r0, c0, refl, darkening))
        clouds.append({"date": date, "centre_px": [c0 + n // 2, r0 + n // 2], "radius_px": round(radius, 1),
                       "max_opacity": round(opacity, 4),
                       "reflectance": list(refl), "shadow_darkening": round(darkening, 4)})
    shadow_w = np.zeros((h, w), np.float32)
    cloud_w = np.zeros((h, w), np.float32)
    for img, alpha, r0, c0, _, darkening in layers:  # shadows first: they lie on the ground, under clouds
        cut = _paste(code, alpha, r0 + sdy, c0 + sdx)
        if cut is not None:
            (sl, part) = cut
            img[(slice(None),) + sl] *= 1.0 - (1.0 - np.float32(darkening)) * part
            np.maximum(shadow_w[sl], part, out=shadow_w[sl])
    for img, alpha, r0, c0, refl, _ in layers:
        cut = _paste(code, alpha, r0, c0)
        if cut is None:
            continue
        sl, part = cut
        tex = 0.88 + 0.12 * part  # thicker is brighter
        for b in range(img.shape[0]):
            img[b][sl] = img[b][sl] * (1 - part) + np.float32(refl[b]) * tex * part
        np.maximum(cloud_w[sl], part, out=cloud_w[sl])
    code[shadow_w >= CLOUD_MASK_ALPHA] = WEATHER_CODES["shadow"]
    code[cloud_w >= CLOUD_MASK_ALPHA] = WEATHER_CODES["cloud"]
    return {**sun, "mask_alpha": CLOUD_MASK_ALPHA, "clouds": clouds,
            "cloud_fraction": round(float((code == WEATHER_CODES["cloud"]).mean()), 5),
            "shadow_fraction": round(float((code == WEATHER_CODES["shadow"]).mean()), 5)}


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of one date: red/green/blue as one colour JPEG (with its chroma subsampling),
    a fourth band as a grey one; uint16 goes through 8 bits at 255 per unit reflectance."""
    scale = 1.0 if img.dtype == np.uint8 else 255.0 / 10000.0
    v = np.clip(np.rint(img.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(v[2::-1].transpose(1, 2, 0)), params)  # BGR
    out = np.empty_like(v)
    out[:3] = cv2.imdecode(buf, cv2.IMREAD_COLOR).transpose(2, 0, 1)[::-1]
    if v.shape[0] > 3:
        ok, buf = cv2.imencode(".jpg", v[3], params)
        out[3] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if img.dtype == np.uint8:
        return out
    return np.clip(np.rint(out.astype(np.float32) / scale), 0, 65535).astype(img.dtype)



# --------------------------------------------------------------------------- nuisances and output


def _nuisances(rng: np.random.Generator, canvas: _Canvas, level: dict[str, float], shape: tuple[int, int]) -> dict[str, Any]:
    gains = 1.0 + rng.uniform(-level["gain"], level["gain"], 4)
    offsets = rng.uniform(-level["offset"], level["offset"], 4)
    tint = float(rng.uniform(-0.12, 0.12))
    veg = canvas.vegetation
    canvas.after[1] *= 1 + 0.5 * tint * veg
    canvas.after[3] *= 1 + tint * veg
    canvas.after[0] *= 1 - 0.3 * tint * veg
    haze = 0.0
    if level["haze"] > 0:
        haze = float(rng.uniform(0.5, 1.0) * level["haze"])
        ramp = np.linspace(0, 1, shape[1], dtype=np.float32)[None, :] * np.linspace(0.5, 1, shape[0], dtype=np.float32)[:, None]
        for b, k in enumerate((1.0, 1.2, 1.5, 0.6)):
            canvas.after[b] += haze * k * ramp
    for b in range(4):
        canvas.after[b] = canvas.after[b] * gains[b] + offsets[b]
    return {"gain": [round(float(g), 4) for g in gains], "offset_reflectance": [round(float(o), 4) for o in offsets],
            "vegetation_tint": round(tint, 4), "haze": round(haze, 4), "noise_sigma_reflectance": level["noise"],
            "psf_sigma_px": 0.7}


def _finish(canvas: _Canvas, gsd: float) -> tuple[np.ndarray, np.ndarray, tuple[TruthObject, ...]]:
    """Rasterise the truth and order objects by position."""
    shape = canvas.occupied.shape
    items = []
    for p in canvas.pending:
        rows, cols = np.nonzero(p["mask"].m)
        rows, cols = rows + p["mask"].r0, cols + p["mask"].c0
        items.append((int(rows.min()), int(cols.min()), p, rows, cols))
    items.sort(key=lambda t: (t[0], t[1]))
    truth_class = np.zeros(shape, np.uint8)
    instances = np.zeros(shape, np.uint16)
    objects = []
    for i, (_, _, p, rows, cols) in enumerate(items, start=1):
        instances[rows, cols] = i
        truth_class[rows, cols] = CLASS_CODES[p["cls"]]
        objects.append(TruthObject(
            id=i, cls=p["cls"], event=p["event"],
            bbox_px=(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())),
            area_m2=float(rows.size * gsd * gsd), length_m=float(p["length_px"] * gsd),
            width_m=float(p["width_px"] * gsd), orientation_deg=float(p["angle"] % 180)))
    return truth_class, instances, tuple(objects)


def _to_dn(img: np.ndarray, dtype: str, bands: int) -> np.ndarray:
    if dtype == "uint8":
        return np.clip(np.rint(img[:bands] * 320.0), 0, 255).astype(np.uint8)
    return np.clip(np.rint(img[:bands] * 10000.0), 0, 65535).astype(np.uint16)


def _displace(img: np.ndarray, dx: float, dy: float, rotation_deg: float) -> np.ndarray:
    """Resample one band so that ``after(A(x)) = scene(x)``, A = rotation about the centre, then shift."""
    if rotation_deg == 0.0:
        return ndimage.shift(img, (dy, dx), order=3, mode="reflect")
    h, w = img.shape
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])  # (x, y) frame
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    inv = rot.T  # scene(p) pulled from A^-1(p) = R^T (p - c - d) + c
    # ndimage works in (row, col): swap axes of the matrix and the offset
    m_rc = inv[::-1, ::-1]
    offset_xy = centre - inv @ (centre + np.array([dx, dy]))
    return ndimage.affine_transform(img, m_rc, offset=offset_xy[::-1], order=3, mode="reflect")


#: the steps :func:`make_scene` reports to its progress callback
_SYNTH_STEPS = 9


def make_scene(scenario: str, seed: int = 0, size: int = 512, difficulty: str = "medium", *,
               shift_px: tuple[float, float] | None = None, rotation_deg: float = 0.0,
               weather: str | tuple[str, ...] | list[str] = "none",
               progress: Callable[[str, int, int], None] | None = None) -> Scene:
    """Render a synthetic before/after pair with ground truth.

    Parameters
    ----------
    scenario : ``trenches`` (new trench lines, 0.5 m), ``camp`` (new huts, 0.5 m, 3-band uint8)
        or ``port`` (vessels arriving and departing, 1 m).
    seed : random seed; the scene is a pure function of all four arguments.
    size : side of the square tile in pixels (at least 128).
    difficulty : ``easy``, ``medium`` or ``hard`` (contrast of changes, noise, gain spread, haze).
    shift_px : the (dx, dy) displacement of after; random in ±3 px when not given.
    rotation_deg : rotation of after about the tile centre (counter-clockwise on the map), applied
        before the shift; the truth then records ``after_from_before``, the 2x3 pixel mapping.
    weather : ``none`` (default: the scene is exactly what it was before weather existed), ``all``,
        or a comma list of ``cloud`` (1-3 clouds with displaced shadows), ``haze`` (thick haze,
        a patch or a gradient), ``season`` (greening/browning, fields ploughed or harvested; not
        change) and ``jpeg`` (each date JPEG-compressed at quality 40-60, applied last). Each kind
        draws from its own generator, so ``cloud`` gives the same clouds alone as within ``all``.
        Cloud, shadow and thick-haze pixels are 255 in ``truth_class`` and coded in
        ``weather_mask``; every parameter is recorded in ``nuisances["weather"]``.
    progress : callback ``(stage, done, total)``, called as each of the rendering steps ends
        (stage ``synth``); it does not change the scene.

    Returns
    -------
    Scene with uint16 (4 bands: red, green, blue, nir) or uint8 (3 bands) images.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {', '.join(DIFFICULTIES)}")
    if not isinstance(size, int) or size < 128 or size > 16384:
        raise ValueError(f"size {size!r}: give a whole number of pixels from 128 to 16384")
    kinds = parse_weather(weather)
    steps = iter(range(1, _SYNTH_STEPS + 1))

    def step() -> None:
        if progress is not None:
            progress("synth", next(steps), _SYNTH_STEPS)

    # one generator per weather kind, apart from the scene's: weather never moves the scene's own draws
    wrng = {k: np.random.default_rng([seed, SCENARIOS.index(scenario), size, DIFFICULTIES.index(difficulty),
                                      1 + WEATHER.index(k)]) for k in kinds}
    rng = np.random.default_rng([seed, SCENARIOS.index(scenario), size, DIFFICULTIES.index(difficulty)])
    level = LEVELS[difficulty]
    gsd = 1.0 if scenario == "port" else 0.5
    shape = (size, size)
    area_factor = (size * gsd / 256.0) ** 2  # scene content scales with the ground area
    terrain, veg = _terrain(rng, shape, gsd)
    step()
    canvas = _Canvas(before=terrain, after=terrain.copy(), occupied=np.zeros(shape, bool), water=np.zeros(shape, bool),
                     vegetation=veg, instances=np.zeros(shape, np.uint16))
    fields = _season_fields(wrng["season"], canvas, gsd, area_factor) if "season" in kinds else []
    if scenario == "port":
        _sea(rng, canvas, gsd)
    _roads(rng, canvas, gsd, int(rng.integers(1, 3)))
    _buildings(rng, canvas, gsd, max(2, int(round(rng.uniform(3, 8) * area_factor))))
    step()
    n_changes = lambda lo, hi: max(lo, int(round(rng.integers(lo, hi + 1) * min(area_factor, 4))))  # noqa: E731
    if scenario == "trenches":
        _trenches(rng, canvas, gsd, level, n_changes(3, 6))
        if rng.random() < 0.7:
            _cleared(rng, canvas, gsd, level)
    elif scenario == "camp":
        _huts(rng, canvas, gsd, level, n_changes(4, 10))
        if rng.random() < 0.5:
            _cleared(rng, canvas, gsd, level)
    else:
        _vessels(rng, canvas, gsd, level, n_changes(2, 5), int(rng.integers(1, 3)), int(rng.integers(1, 4)))
    step()
    record: dict[str, Any] = {"kinds": list(kinds)}
    if "season" in kinds:
        record["season"] = _season(wrng["season"], canvas, fields, gsd)
    for img in (canvas.before, canvas.after):
        for b in range(4):
            img[b] = cv2.GaussianBlur(img[b], (0, 0), 0.7)
    step()
    nuisances = _nuisances(rng, canvas, level, shape)
    code = np.zeros(shape, np.uint8) if kinds else None
    if "haze" in kinds:
        record["haze"] = _thick_haze(wrng["haze"], canvas, gsd, code)
    if "cloud" in kinds:
        record["cloud"] = _clouds(wrng["cloud"], canvas, gsd, code)
    step()
    dx, dy = (float(v) for v in rng.uniform(-3, 3, 2))
    if shift_px is not None:
        dx, dy = float(shift_px[0]), float(shift_px[1])
    after = np.stack([_displace(b, dx, dy, float(rotation_deg)) for b in canvas.after])
    nuisances["rotation_deg"] = float(rotation_deg)
    step()
    # band by band: the same draws as one (4, H, W) call, a quarter of the float64 memory
    before = canvas.before
    for img in (before, after):
        for b in range(4):
            img[b] += rng.normal(0, level["noise"], shape).astype(np.float32)
    step()
    truth_class, instances, objects = _finish(canvas, gsd)
    step()
    bands, dtype = (3, "uint8") if scenario == "camp" else (4, "uint16")
    before_dn, after_dn = _to_dn(before, dtype, bands), _to_dn(after, dtype, bands)
    observable: tuple[float, ...] = ()
    if code is not None:
        truth_class[code > 0] = 255
        total = np.bincount(instances.ravel(), minlength=len(objects) + 1)
        clear = np.bincount(instances[code == 0], minlength=len(objects) + 1)
        observable = tuple(round(float(clear[o.id] / total[o.id]), 4) for o in objects)
        if "jpeg" in kinds:
            quality = [int(q) for q in wrng["jpeg"].integers(40, 61, 2)]
            before_dn, after_dn = _jpeg(before_dn, quality[0]), _jpeg(after_dn, quality[1])
            record["jpeg"] = {"quality": {"before": quality[0], "after": quality[1]},
                              "uint16_to_8bit_scale": 255 / 10000 if dtype == "uint16" else 1.0}
        nuisances["weather"] = record
    step()
    x0 = 400_000.0 + 1000.0 * (seed % 97)
    y0 = 3_500_000.0 + 1000.0 * (seed % 89)
    return Scene(before=before_dn, after=after_dn, truth_class=truth_class,
                 truth_instances=instances, objects=objects, shift_px=(round(dx, 6), round(dy, 6)),
                 transform=Affine(gsd, 0, x0, 0, -gsd, y0), crs="EPSG:32637", gsd_m=gsd,
                 band_names=("red", "green", "blue", "nir")[:bands], scenario=scenario, seed=seed,
                 difficulty=difficulty, nuisances=nuisances, weather_mask=code, observable_fraction=observable)


def after_from_before(scene: Scene) -> np.ndarray:
    """The true 2x3 mapping of a before pixel (x, y) to its place in after."""
    h, w = scene.truth_class.shape
    t = math.radians(scene.nuisances.get("rotation_deg", 0.0))
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    shift = centre - rot @ centre + np.array(scene.shift_px)
    return np.column_stack([rot, shift])


def _write_tif(path: Path, data: np.ndarray, scene: Scene, names: tuple[str, ...] | None = None) -> None:
    data = data if data.ndim == 3 else data[None]
    tmp = path.with_name(f".{path.name}.tmp")
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": scene.crs, "transform": scene.transform, "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2, "zlevel": 9}
    with rasterio.open(tmp, "w", **profile) as ds:
        ds.write(data)
        for i, name in enumerate(names or (), start=1):
            ds.set_band_description(i, name)
    os.replace(tmp, path)


#: every file :func:`write_scene` may write (truth_weather.tif only for a scene with weather)
SCENE_FILES = ("before.tif", "after.tif", "truth_class.tif", "truth_instances.tif", "truth_weather.tif", "truth.json")


def write_scene(scene: Scene, out_dir: str | Path,
                progress: Callable[[str, int, int], None] | None = None) -> dict[str, Path]:
    """Write a scene: before.tif, after.tif, truth_class.tif, truth_instances.tif, truth.json.

    A scene with weather also gets ``truth_weather.tif`` (uint8: 0 clear, 1 cloud, 2 cloud shadow,
    3 thick haze) and, per object in truth.json, ``observable_fraction`` (share of its pixels not
    under weather) and ``observable`` (false when none is: the object is wholly under cloud, shadow
    or thick haze; it stays in the list, and in truth_instances.tif, while truth_class.tif is 255
    there). The files are written to a staging folder beside ``out_dir`` and moved in when all are
    complete (:class:`~changedet.io.OutputStage`); a scene file of an earlier scene that this one
    does not have (truth_weather.tif) is removed.
    """
    from .io import OutputStage

    with OutputStage(out_dir, SCENE_FILES) as stage:
        names = _write_scene_files(scene, stage.file, progress)
        stage.commit(names)  # truth.json last
    return {name: Path(out_dir) / name for name in names}


def _write_scene_files(scene: Scene, file: Callable[[str], Path],
                       progress: Callable[[str, int, int], None] | None = None) -> list[str]:
    rasters = [("before.tif", scene.before, scene.band_names), ("after.tif", scene.after, scene.band_names),
               ("truth_class.tif", scene.truth_class, None), ("truth_instances.tif", scene.truth_instances, None)]
    if scene.weather_mask is not None:
        rasters.append(("truth_weather.tif", scene.weather_mask, None))
    for i, (name, data, band_names) in enumerate(rasters, start=1):
        _write_tif(file(name), data, scene, band_names)
        if progress is not None:
            progress("write", i, len(rasters))
    names = [name for name, _, _ in rasters]
    objects = []
    for i, o in enumerate(scene.objects):
        d = asdict(o)
        d["class"] = d.pop("cls")
        d["bbox_px"] = list(o.bbox_px)
        for k in ("area_m2", "length_m", "width_m", "orientation_deg"):
            d[k] = round(d[k], 3)
        if scene.weather_mask is not None:
            d["observable_fraction"] = scene.observable_fraction[i]
            d["observable"] = scene.observable_fraction[i] > 0
        objects.append(d)
    record = {
        "scenario": scene.scenario, "seed": scene.seed, "size": int(scene.before.shape[1]),
        "difficulty": scene.difficulty, "gsd_m": scene.gsd_m, "crs": scene.crs, "shift_px": list(scene.shift_px),
        "after_from_before": after_from_before(scene).round(8).tolist(),
        "nuisances": scene.nuisances, "objects": objects,
        "counts": {c: sum(o.cls == c for o in scene.objects) for c in CLASS_CODES},
    }
    file("truth.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return [*names, "truth.json"]
