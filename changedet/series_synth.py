"""Synthetic dated series of one site with truth per date and per object.

A series is planned once and rendered date by date. The plan holds the site (terrain,
roads, buildings, and for ``port`` the sea and one quay) as a reflectance image, and every
object that comes and goes as a small patch with its footprint and the dates on which it is
physically there:

- ``port`` (1 m): two to four berths along the quay; vessels of a few sizes stay several
  dates and leave, and a berth reused later holds a different vessel (a different track);
  on one or two dates every berth is empty; a crane (class ``other``, an elongated bright
  structure on the quay) stands there for one or two dates.
- ``base`` (0.5 m): huts and trenches that appear on some date and stay to the end, and one
  hut that appears and later disappears.

Each date is then rendered on its own (:func:`render_date`), band by band, from the plan: a
mild seasonal drift of vegetation over the series, the objects present, the sensor PSF, a
gain and offset, clouds with their shadows on about one date in six (most of the site: the
date is not observable; or a part of it), a sub-pixel to 1.5 px shift (none on the first
date, whose grid is the nominal one) and noise. Memory is the plan plus one date, whatever
the number of dates.

Visibility: a date is observable when less than half of the site is under cloud or shadow.
On an observable date an object is visible (counted, in ``dates_present``) when at least half
of its footprint is clear; a visible object keeps its class code on its whole footprint in
the truth raster, an object less than half clear is 255 on its whole footprint, and other
cloud and shadow pixels are 255. On a date that is not observable the truth raster is 255
everywhere and the counts are ``null``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
from affine import Affine

from .synth import (CLASS_CODES, CONCRETE, DIFFICULTIES, HULLS, LEVELS, WATER, _buildings, _Canvas, _cloud_alpha,
                    _displace, _fractal, _hull, _huts, _paint, _poly_region, _rect, _Region, _reserve, _roads,
                    _shadow_vector, _smooth_noise, _terrain, _trenches)

SERIES_SCENARIOS = ("port", "base")
MIN_DATES, MAX_DATES = 2, 366
MIN_SIZE, MAX_SIZE = 256, 4096
CLOUDY_SHARE = 0.175  # share of dates with a cloud (about half of them overcast)
OBSERVABLE_MAX_CLOUD = 0.5  # a date is observable below this cloud + shadow fraction
VISIBLE_MIN_CLEAR = 0.5  # an object is visible when at least this share of its footprint is clear
MAX_SHIFT_PX = 1.5
CRANE = (0.80, 0.68, 0.20, 0.58)  # painted steel
SEASON_BAND_FACTOR = (-0.5, 0.4, -0.2, 1.0)  # vegetation tint per band (red, green, blue, nir)
SERIES_FILES = ("series.yaml", "truth_series.json")
_DATE_TIF = re.compile(r"^\d{4}-\d{2}-\d{2}\.tif$")


@dataclass(frozen=True)
class SeriesObject:
    """One object that comes and goes: its truth footprint, what it paints, and when it is there."""

    cls: str
    footprint: _Region  # truth mask on the nominal grid
    r0: int
    c0: int
    painted: np.ndarray  # (h, w) bool: pixels the object changes (footprint and shadow) from (r0, c0)
    values: np.ndarray  # (4, n) float32 reflectance of those pixels
    present: tuple[bool, ...]  # per date: physically there

    def paste(self, band: np.ndarray, b: int) -> None:
        h, w = self.painted.shape
        band[self.r0:self.r0 + h, self.c0:self.c0 + w][self.painted] = self.values[b]


@dataclass(frozen=True)
class SeriesPlan:
    """Everything about a series except what is drawn per date."""

    scenario: str
    seed: int
    size: int
    difficulty: str
    gsd_m: float
    dates: tuple[dt.date, ...]
    base: np.ndarray  # (4, H, W) float32 reflectance of the site without the objects
    vegetation: np.ndarray  # (H, W) float32 0..1
    objects: tuple[SeriesObject, ...]
    cloud: tuple[str, ...]  # per date: "", "partial" or "overcast"
    season_tint: float  # vegetation tint reached on the last date
    transform: Affine
    crs: str = "EPSG:32637"


@dataclass(frozen=True)
class DateFrame:
    """One rendered date: the image, its class truth and what the truth says about it."""

    date: dt.date
    image: np.ndarray  # (4, H, W) uint16 (red, green, blue, nir; reflectance x 10000)
    truth_class: np.ndarray  # (H, W) uint8: 0 none, 1 other, 2 trench, 3 hut, 4 vessel, 255 not observable
    observable: bool
    cloud_fraction: float
    state: tuple[str, ...]  # per object: "present", "absent" or "unknown"
    nuisances: dict[str, Any]


# --------------------------------------------------------------------------- plan


def _rng(seed: int, scenario: str, size: int, difficulty: str, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, 100 + SERIES_SCENARIOS.index(scenario), size,
                                  DIFFICULTIES.index(difficulty), *stream])


def series_dates(start: dt.date, n_dates: int, cadence_days: int, rng: np.random.Generator) -> tuple[dt.date, ...]:
    """``n_dates`` dates from ``start``, ``cadence_days`` apart, jittered by a day when the cadence is 3 or more."""
    dates = [start]
    for _ in range(n_dates - 1):
        step = cadence_days + (int(rng.integers(-1, 2)) if cadence_days >= 3 else 0)
        dates.append(dates[-1] + dt.timedelta(days=step))
    return tuple(dates)


def _capture(canvas: _Canvas, reg: _Region, cls: str, present: tuple[bool, ...], grow_px: int = 4) -> SeriesObject:
    """Take what was painted on ``canvas.after`` around ``reg`` as an object, and undo the painting."""
    h, w = canvas.occupied.shape
    r0, c0 = max(0, reg.r0 - grow_px), max(0, reg.c0 - grow_px)
    r1, c1 = min(h, reg.r0 + reg.m.shape[0] + grow_px), min(w, reg.c0 + reg.m.shape[1] + grow_px)
    after, before = canvas.after[:, r0:r1, c0:c1], canvas.before[:, r0:r1, c0:c1]
    painted = (after != before).any(axis=0)
    painted[reg.r0 - r0:reg.r0 - r0 + reg.m.shape[0], reg.c0 - c0:reg.c0 - c0 + reg.m.shape[1]] |= reg.m
    values = after[:, painted].copy()
    after[:, painted] = before[:, painted]
    return SeriesObject(cls, reg, r0, c0, painted, values, present)


def _quay(rng: np.random.Generator, canvas: _Canvas, gsd: float) -> dict[str, float]:
    """Sea along the east side with a wavy shore and one quay running out into it."""
    h, w = canvas.occupied.shape
    rows = np.arange(h, dtype=np.float32)
    depth = rng.uniform(0.4, 0.5) * w
    shore = (w - depth + 0.03 * w * np.sin(rows / h * rng.uniform(2, 5) + rng.uniform(0, 6))).astype(np.float32)
    water = np.arange(w, dtype=np.float32)[None, :] > shore[:, None]
    canvas.water[:] = water
    _paint(canvas.before, water, WATER, 1.0, 1.0 + 0.06 * _fractal(rng, (h, w), (1.5, 4.0)))
    canvas.vegetation[water] = 0
    row = float(rng.uniform(0.4, 0.6) * h)
    width = rng.uniform(10, 16) / gsd
    lo, hi = int(row - width), int(row + width) + 1
    c0 = float(shore[lo:hi].min()) - 5
    length = min(0.85 * (w - float(shore.max())) + (float(shore.max()) - c0), 320 / gsd)
    pts = np.array([[c0, row - width / 2], [c0 + length, row - width / 2], [c0 + length, row + width / 2],
                    [c0, row + width / 2]])
    m = _poly_region((h, w), pts)
    _paint(m.of(canvas.before), m.m, CONCRETE)
    m.of(canvas.water)[m.m] = False
    _reserve(canvas, m, int(3 / gsd))
    # berths start past the shore's wobble
    start = float(shore.max()) + 4 / gsd
    return {"row": row, "width": width, "c0": c0, "length": length, "berth_start": start,
            "berth_end": c0 + length - 2 / gsd}


def _stays(rng: np.random.Generator, n_dates: int, empty: set[int]) -> list[tuple[int, int]]:
    """Dates ``[a, b)`` of successive vessels at one berth: stays of 2-6 dates, gaps of 2-5, none on ``empty``."""
    out = []
    t = int(rng.integers(0, 4))
    while t < n_dates:
        stay = int(rng.integers(2, 7))
        a, b = t, min(t + stay, n_dates)
        piece = [d for d in range(a, b) if d not in empty]
        # an empty date splits a stay: each piece is another vessel
        start = None
        for d in list(range(a, b)) + [b]:
            if d < b and d in piece and start is None:
                start = d
            elif (d == b or d not in piece) and start is not None:
                out.append((start, d))
                start = None
        t += stay + int(rng.integers(2, 6))
    return out


def _vessel(rng: np.random.Generator, canvas: _Canvas, gsd: float, level: dict[str, float], quay: dict[str, float],
            x0: float, x1: float, side: int, present: tuple[bool, ...]) -> SeriesObject:
    """A vessel moored along the quay between columns ``x0`` and ``x1``, north (-1) or south (+1) of it."""
    shape = canvas.occupied.shape
    slot = x1 - x0
    length = float(rng.uniform(0.55, 0.95) * slot)
    width = max(4.0, length / float(rng.uniform(3.5, 6.0)), 4 / gsd)
    width = min(width, 30 / gsd)
    cx = x0 + slot / 2 + float(rng.uniform(-0.5, 0.5)) * (slot - length)
    cy = quay["row"] + side * (quay["width"] / 2 + 2.5 / gsd + width / 2)
    angle = 90.0 if rng.random() < 0.5 else 270.0  # bow east or west
    pts = _hull(cx, cy, length, width, angle)
    m = _poly_region(shape, pts)
    hull = HULLS[int(rng.integers(len(HULLS)))]
    bg = m.of(canvas.before)[:, m.m].mean(axis=1)
    colour = tuple(level["contrast"] * c + (1 - level["contrast"]) * float(g) for c, g in zip(hull, bg))
    bridge = _poly_region(shape, _rect(*(pts[[0, 4]].mean(axis=0) * 0.7 + pts[2] * 0.3), length * 0.18, width * 0.6,
                                       angle))
    _paint(m.of(canvas.after), m.m, colour)
    _paint(m.of(canvas.after), m.m & bridge.on(m), tuple(min(1.0, 1.25 * c) for c in colour))
    return _capture(canvas, m, "vessel", present, grow_px=1)


def _crane(rng: np.random.Generator, canvas: _Canvas, gsd: float, quay: dict[str, float],
           present: tuple[bool, ...]) -> SeriesObject:
    """A crane boom lying along the quay: long, narrow, bright, with a short shadow."""
    shape = canvas.occupied.shape
    length = float(rng.uniform(0.25, 0.45) * quay["length"])
    width = float(rng.uniform(2.5, 4.0)) / gsd
    cx = quay["c0"] + float(rng.uniform(0.3, 0.7)) * quay["length"]
    pts = _rect(cx, quay["row"] + float(rng.uniform(-0.15, 0.15)) * quay["width"], length, width, 90.0)
    m = _poly_region(shape, pts)
    shadow = _poly_region(shape, pts + np.array([1.0, 1.0]) / gsd).minus(m)
    for b in range(4):
        shadow.of(canvas.after[b])[shadow.m] *= 0.55
    _paint(m.of(canvas.after), m.m, CRANE)
    return _capture(canvas, m, "other", present)


def _clear_span(rng: np.random.Generator, cloud: tuple[str, ...], length: int) -> tuple[int, int] | None:
    """Dates ``[a, a + length)`` after the first, with ``a`` to ``a + length`` (the date it is gone) all
    cloud-free, so that both its coming and its going are seen; None when the series is too short."""
    n = len(cloud)
    for span in range(length, 0, -1):  # shorter when no longer span is clear
        starts = [a for a in range(1, n - span) if all(c == "" for c in cloud[a:a + span + 1])]
        if starts:
            a = int(rng.choice(starts))
            return a, a + span
    return None


def _port_objects(rng: np.random.Generator, canvas: _Canvas, gsd: float, level: dict[str, float],
                  n_dates: int, cloud: tuple[str, ...], quay: dict[str, float]) -> list[SeriesObject]:
    n_berths = int(rng.integers(2, 5))
    per_side = [(n_berths + 1) // 2, n_berths // 2]
    empty: set[int] = set()
    if n_dates >= 6:  # one or two dates with no vessel at all
        k = int(rng.integers(1, n_dates - 2))
        empty = {k, k + 1} if rng.random() < 0.6 else {k}
    objects = []
    span = quay["berth_end"] - quay["berth_start"]
    for side, n in zip((-1, 1), per_side):
        for k in range(n):
            x0 = quay["berth_start"] + k * span / n
            x1 = x0 + span / n - 3 / gsd
            for a, b in _stays(rng, n_dates, empty):
                present = tuple(a <= d < b for d in range(n_dates))
                objects.append(_vessel(rng, canvas, gsd, level, quay, x0, x1, side, present))
    span_ = _clear_span(rng, cloud, int(rng.integers(1, 3)))
    if span_ is not None:
        a, b = span_
        objects.append(_crane(rng, canvas, gsd, quay, tuple(a <= d < b for d in range(n_dates))))
    return objects


def _base_objects(rng: np.random.Generator, canvas: _Canvas, gsd: float, level: dict[str, float],
                  n_dates: int, cloud: tuple[str, ...], area_factor: float) -> list[SeriesObject]:
    scale = min(area_factor, 4.0)
    kinds = ["hut"] * max(2, int(round(rng.uniform(3, 6) * scale))) + \
        ["trench"] * max(1, int(round(rng.uniform(2, 4) * scale)))
    spans = [(int(rng.integers(1, n_dates)), n_dates) for _ in kinds]
    transient = _clear_span(rng, cloud, int(rng.integers(2, 7))) if n_dates >= 4 else None
    if transient is not None:  # one hut that appears and later disappears
        kinds.append("hut")
        spans.append(transient)
    objects = []
    for kind, (a, b) in zip(kinds, spans):
        n_before = len(canvas.pending)
        (_huts if kind == "hut" else _trenches)(rng, canvas, gsd, level, 1)
        if len(canvas.pending) == n_before:  # no room left
            continue
        reg = canvas.pending[-1]["mask"]
        objects.append(_capture(canvas, reg, kind, tuple(a <= d < b for d in range(n_dates))))
    return objects


def _cloud_kinds(rng: np.random.Generator, n_dates: int) -> tuple[str, ...]:
    """Which dates are cloudy: about ``CLOUDY_SHARE`` of them, never the first, about half overcast."""
    n_cloudy = int(round(CLOUDY_SHARE * n_dates)) if n_dates >= 4 else 0
    picked = sorted(int(d) for d in rng.choice(np.arange(1, n_dates), size=n_cloudy, replace=False)) \
        if n_cloudy else []
    n_overcast = int(math.ceil(n_cloudy / 2))
    overcast = set(int(d) for d in rng.permutation(picked)[:n_overcast]) if picked else set()
    return tuple("" if d not in picked else ("overcast" if d in overcast else "partial") for d in range(n_dates))


def plan_series(scenario: str, seed: int = 0, size: int = 512, n_dates: int = 30, *,
                start_date: dt.date = dt.date(2024, 8, 20), cadence_days: int = 3,
                difficulty: str = "medium") -> SeriesPlan:
    """Plan a dated series of one site: the site, its objects and their dates, the cloudy dates.

    Parameters
    ----------
    scenario : ``port`` (vessels at a quay and a crane, 1 m) or ``base`` (huts and trenches, 0.5 m).
    seed : random seed; the series is a pure function of all arguments. The site (terrain, roads,
        buildings, sea and quay) does not depend on ``n_dates``, ``start_date`` or ``cadence_days``.
    size : side of the square tile in pixels, 256 to 4096.
    n_dates : number of dates, 2 to 366.
    start_date, cadence_days : the first date and the nominal days between dates (1 to 365);
        a cadence of 3 or more is jittered by up to a day, deterministically.
    difficulty : contrast of objects, noise, gain spread (as in :func:`changedet.synth.make_scene`).

    Returns
    -------
    SeriesPlan; render its dates with :func:`render_date` or :func:`iter_series`.
    """
    if scenario not in SERIES_SCENARIOS:
        raise ValueError(f"unknown series scenario {scenario!r}; choose one of {', '.join(SERIES_SCENARIOS)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {', '.join(DIFFICULTIES)}")
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size {size!r}: give a whole number of pixels from {MIN_SIZE} to {MAX_SIZE}")
    if not isinstance(n_dates, int) or not MIN_DATES <= n_dates <= MAX_DATES:
        raise ValueError(f"dates {n_dates!r}: give a number of dates from {MIN_DATES} to {MAX_DATES}")
    if not isinstance(cadence_days, int) or not 1 <= cadence_days <= 365:
        raise ValueError(f"cadence {cadence_days!r}: give a whole number of days from 1 to 365")
    level = LEVELS[difficulty]
    gsd = 1.0 if scenario == "port" else 0.5
    shape = (size, size)
    site = _rng(seed, scenario, size, difficulty, 0)
    terrain, veg = _terrain(site, shape, gsd)
    # roads and buildings paint both images alike; after is replaced below
    canvas = _Canvas(before=terrain, after=terrain.copy(), occupied=np.zeros(shape, bool), water=np.zeros(shape, bool),
                     vegetation=veg, instances=np.zeros((1, 1), np.uint16))
    area_factor = (size * gsd / 256.0) ** 2
    quay = _quay(site, canvas, gsd) if scenario == "port" else None
    _roads(site, canvas, gsd, int(site.integers(1, 3)))
    _buildings(site, canvas, gsd, max(2, int(round(site.uniform(3, 8) * area_factor))))
    when = _rng(seed, scenario, size, difficulty, 1, n_dates, cadence_days)
    dates = series_dates(start_date, n_dates, cadence_days, when)
    cloud = _cloud_kinds(when, n_dates)
    season_tint = float(when.uniform(0.06, 0.12) * (1 if when.random() < 0.5 else -1))
    canvas.after = canvas.before.copy()  # objects are painted here, captured, and undone
    objs = _rng(seed, scenario, size, difficulty, 2, n_dates)
    if quay is not None:
        objects = _port_objects(objs, canvas, gsd, level, n_dates, cloud, quay)
    else:
        objects = _base_objects(objs, canvas, gsd, level, n_dates, cloud, area_factor)
    canvas.after = canvas.before  # free the copy
    x0 = 400_000.0 + 1000.0 * (seed % 97)
    y0 = 3_500_000.0 + 1000.0 * (seed % 89)
    return SeriesPlan(scenario=scenario, seed=seed, size=size, difficulty=difficulty, gsd_m=gsd, dates=dates,
                      base=canvas.before, vegetation=veg, objects=tuple(objects), cloud=cloud,
                      season_tint=season_tint, transform=Affine(gsd, 0, x0, 0, -gsd, y0))


# --------------------------------------------------------------------------- one date


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by whole pixels, zero-filled."""
    out = np.zeros_like(a)
    h, w = a.shape
    src = a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def _date_clouds(rng: np.random.Generator, kind: str, size: int, gsd: float) -> dict[str, Any]:
    """Cloud opacity and shadow weight (both (H, W) float32) of one date, and their parameters."""
    shape = (size, size)
    sun = _shadow_vector(rng, gsd, size)
    sdx, sdy = sun["shadow_offset_px"]
    alpha = np.zeros(shape, np.float32)
    if kind == "overcast":  # a deck over nearly all of the site, with a few gaps
        density = 0.9 + 0.5 * _smooth_noise(rng, shape, 0.12 * size)
        a = np.clip((density - 0.05) / 0.5, 0, 1)
        alpha = (a * a * (3 - 2 * a)).astype(np.float32) * np.float32(rng.uniform(0.9, 1.0))
    else:
        for _ in range(int(rng.integers(1, 3))):
            patch = _cloud_alpha(rng, float(rng.uniform(0.12, 0.22) * size)) * np.float32(rng.uniform(0.9, 1.0))
            n = patch.shape[0]
            r0, c0 = int(rng.uniform(0.15, 0.85) * size) - n // 2, int(rng.uniform(0.15, 0.85) * size) - n // 2
            a0, b0, a1, b1 = max(r0, 0), max(c0, 0), min(r0 + n, size), min(c0 + n, size)
            if a0 < a1 and b0 < b1:
                np.maximum(alpha[a0:a1, b0:b1], patch[a0 - r0:a1 - r0, b0 - c0:b1 - c0], out=alpha[a0:a1, b0:b1])
    brightness = float(rng.uniform(0.55, 0.85))
    return {"kind": kind, "alpha": alpha, "shadow": _shifted(alpha, sdy, sdx), **sun,
            "reflectance": [round(min(0.9, brightness * k), 4) for k in (1.0, 1.0, 1.03, 0.97)],
            "shadow_darkening": round(float(rng.uniform(0.3, 0.6)), 4)}


def _clear_share(obj: SeriesObject, code: np.ndarray | None) -> float:
    if code is None:
        return 1.0
    return float((obj.footprint.of(code)[obj.footprint.m] == 0).mean())


def render_date(plan: SeriesPlan, i: int) -> DateFrame:
    """Render date ``i`` of a plan: the image, the class truth and the per-object state.

    The image is built band by band (the working memory is one band of float32 beside the
    plan), in the order: seasonal drift of vegetation, objects present, PSF, gain and offset,
    clouds and shadows, shift (``image(x + dx, y + dy) = ground(x, y)``), noise.
    """
    n = len(plan.dates)
    level = LEVELS[plan.difficulty]
    rng = _rng(plan.seed, plan.scenario, plan.size, plan.difficulty, 3, n, i)
    size, gsd = plan.size, plan.gsd_m
    dx, dy = (0.0, 0.0) if i == 0 else (float(v) for v in rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX, 2))
    gains = 1.0 + rng.uniform(-level["gain"], level["gain"], 4)
    offsets = rng.uniform(-level["offset"], level["offset"], 4)
    tint = plan.season_tint * (i / max(1, n - 1)) + float(rng.normal(0, 0.01))
    clouds = _date_clouds(rng, plan.cloud[i], size, gsd) if plan.cloud[i] else None
    present = [o for o in plan.objects if o.present[i]]
    image = np.empty((4, size, size), np.uint16)
    for b in range(4):
        band = plan.base[b].copy()
        band *= 1.0 + np.float32(SEASON_BAND_FACTOR[b] * tint) * plan.vegetation
        for o in present:
            o.paste(band, b)
        band = cv2.GaussianBlur(band, (0, 0), 0.7)
        band = band * np.float32(gains[b]) + np.float32(offsets[b])
        if clouds is not None:
            band *= 1.0 - np.float32(1.0 - clouds["shadow_darkening"]) * clouds["shadow"]
            tex = 0.88 + 0.12 * clouds["alpha"]
            band = band * (1 - clouds["alpha"]) + np.float32(clouds["reflectance"][b]) * tex * clouds["alpha"]
        if i:
            band = _displace(band, dx, dy, 0.0)
        band += rng.normal(0, level["noise"], band.shape).astype(np.float32)
        image[b] = np.clip(np.rint(band * 10000.0), 0, 65535).astype(np.uint16)
    code = None
    if clouds is not None:
        code = np.zeros((size, size), np.uint8)
        code[clouds["shadow"] >= 0.05] = 2
        code[clouds["alpha"] >= 0.05] = 1
    cloud_fraction = 0.0 if code is None else float((code > 0).mean())
    observable = cloud_fraction < OBSERVABLE_MAX_CLOUD
    truth = np.zeros((size, size), np.uint8)
    states = []
    if not observable:
        truth[:] = 255
        states = ["unknown"] * len(plan.objects)
    else:
        if code is not None:
            truth[code > 0] = 255
        for o in plan.objects:
            seen = _clear_share(o, code) >= VISIBLE_MIN_CLEAR
            states.append("unknown" if not seen else "present" if o.present[i] else "absent")
            if o.present[i]:
                o.footprint.of(truth)[o.footprint.m] = CLASS_CODES[o.cls] if seen else 255
    nuisances = {"shift_px": [round(dx, 4), round(dy, 4)], "gain": [round(float(g), 4) for g in gains],
                 "offset_reflectance": [round(float(o), 4) for o in offsets], "vegetation_tint": round(tint, 4)}
    if clouds is not None:
        nuisances["cloud"] = {k: v for k, v in clouds.items() if k not in ("alpha", "shadow")}
    return DateFrame(date=plan.dates[i], image=image, truth_class=truth, observable=observable,
                     cloud_fraction=round(cloud_fraction, 4), state=tuple(states), nuisances=nuisances)


def iter_series(plan: SeriesPlan) -> Iterator[DateFrame]:
    """The dates of a plan, rendered one at a time."""
    for i in range(len(plan.dates)):
        yield render_date(plan, i)


# --------------------------------------------------------------------------- truth


def _events(dates: list[str], state: list[str]) -> list[dict[str, str]]:
    """``appeared`` on a date seen present after one seen absent; ``departed`` on one seen absent after present."""
    events, last = [], None
    for d, s in zip(dates, state):
        if s == "unknown":
            continue
        if s == "present" and last == "absent":
            events.append({"date": d, "event": "appeared"})
        elif s == "absent" and last == "present":
            events.append({"date": d, "event": "departed"})
        last = s
    return events


def series_truth(plan: SeriesPlan, frames: list[dict[str, Any]]) -> dict[str, Any]:
    """The truth record of a series from its plan and each date's summary (see :func:`write_series`).

    ``frames`` holds per date ``observable``, ``cloud_fraction``, ``state`` (per object) and
    ``nuisances``, in date order.
    """
    dates = [d.isoformat() for d in plan.dates]
    per_date = []
    for d, f in zip(dates, frames):
        counts = None
        if f["observable"]:
            counts = {c: sum(1 for o, s in zip(plan.objects, f["state"]) if o.cls == c and s == "present")
                      for c in ("vessel", "hut", "trench", "other")}
        per_date.append({"date": d, "observable": f["observable"], "cloud_fraction": f["cloud_fraction"],
                         "counts": counts, "nuisances": f["nuisances"]})
    order = sorted(range(len(plan.objects)), key=lambda j: (
        plan.objects[j].present.index(True) if any(plan.objects[j].present) else len(dates),
        plan.objects[j].footprint.r0, plan.objects[j].footprint.c0))
    tracks = []
    for k, j in enumerate(order, start=1):
        o = plan.objects[j]
        state = [f["state"][j] for f in frames]
        seen = [d for d, s in zip(dates, state) if s == "present"]
        rows, cols = np.nonzero(o.footprint.m)
        physical = [d for d, p in zip(dates, o.present) if p]
        first, last = (seen[0], seen[-1]) if seen else (None, None)
        tracks.append({
            "track_id": f"t{k:03d}", "class": o.cls,
            "bbox_px": [int(cols.min() + o.footprint.c0), int(rows.min() + o.footprint.r0),
                        int(cols.max() + o.footprint.c0), int(rows.max() + o.footprint.r0)],
            "area_px": int(rows.size), "dates_present": seen, "first_seen": first, "last_seen": last,
            "dates_unobserved": [d for d, s in zip(dates, state) if s == "unknown" and first and first <= d <= last],
            "dates_physically_present": physical, "events": _events(dates, state)})
    ship_days = sum(1 for p in per_date if p["observable"] and p["counts"]["vessel"] >= 1)
    return {"scenario": plan.scenario, "seed": plan.seed, "size": plan.size, "difficulty": plan.difficulty,
            "gsd_m": plan.gsd_m, "crs": plan.crs, "transform": list(plan.transform)[:6],
            "dates": dates, "class_codes": {"none": 0, **CLASS_CODES, "not_observable": 255},
            "per_date": per_date, "tracks": tracks, "ship_days": ship_days}


# --------------------------------------------------------------------------- files


def _write_tif(path: Path, data: np.ndarray, plan: SeriesPlan, date: dt.date, names: tuple[str, ...] = ()) -> None:
    data = data if data.ndim == 3 else data[None]
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": plan.crs, "transform": plan.transform, "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2, "zlevel": 6}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.update_tags(TIFFTAG_DATETIME=date.strftime("%Y:%m:%d 12:00:00"))
        for i, name in enumerate(names, start=1):
            ds.set_band_description(i, name)


def _clear_previous(out_dir: Path) -> None:
    """Remove the files of an earlier series in ``out_dir`` (dated images, truth/, series.yaml, truth);
    other files stay."""
    if not out_dir.is_dir():
        return
    if (out_dir / "truth").is_dir():
        shutil.rmtree(out_dir / "truth")
    for p in out_dir.iterdir():
        if p.is_file() and (_DATE_TIF.match(p.name) or p.name in SERIES_FILES):
            p.unlink()


def write_series(plan: SeriesPlan, out_dir: str | Path) -> dict[str, Any]:
    """Render and write a series date by date; return its truth record.

    Layout of ``out_dir``: ``<YYYY-MM-DD>.tif`` per date (uint16 red, green, blue, nir; the same
    CRS and grid on every date; ``TIFFTAG_DATETIME`` set), ``series.yaml`` (``images: [{path,
    date}]``, paths relative to the folder), ``truth_series.json`` and ``truth/<YYYY-MM-DD>_class.tif``
    (uint8 0 none, 1 other, 2 trench, 3 hut, 4 vessel, 255 not observable). Everything is
    written to a staging folder beside ``out_dir`` and moved in when complete; the files of an
    earlier series in ``out_dir`` are replaced, other files stay.
    """
    from .io import OutputStage

    out = Path(out_dir)
    frames = []
    with OutputStage(out, SERIES_FILES) as stage:
        stage.file("truth").mkdir()
        names = []
        for f in iter_series(plan):
            name = f"{f.date.isoformat()}.tif"
            _write_tif(stage.file(name), f.image, plan, f.date, ("red", "green", "blue", "nir"))
            _write_tif(stage.file("truth") / f"{f.date.isoformat()}_class.tif", f.truth_class, plan, f.date)
            frames.append({"observable": f.observable, "cloud_fraction": f.cloud_fraction, "state": f.state,
                           "nuisances": f.nuisances})
            names.append(name)
        lines = ["images:"] + [f"  - path: {d.isoformat()}.tif\n    date: {d.isoformat()}" for d in plan.dates]
        stage.file("series.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        truth = series_truth(plan, frames)
        stage.file("truth_series.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
        _clear_previous(out.absolute())
        stage.commit([*names, "truth", "series.yaml", "truth_series.json"])
    return truth
