"""A tiny dated series painted into a crop of ``sample_tiles/port/before.tif`` (tests of ``changedet series``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "sample_tiles" / "port" / "before.tif"
START = dt.date(2024, 10, 1)
VESSEL = (100, 150, 12, 44)  # row, col, h, w: on the water
VESSEL2 = (170, 140, 10, 36)
HUT = (60, 30, 14, 14)  # on land
HULL = (5500.0, 5600.0, 5800.0, 4500.0)
ROOF = (6200.0, 3000.0, 2400.0, 3800.0)


def dates(n: int) -> list[dt.date]:
    return [START + dt.timedelta(days=3 * i) for i in range(n)]


def _paint(img: np.ndarray, box: tuple[int, int, int, int], colour: tuple[float, ...]) -> None:
    r, c, h, w = box
    img[:, r:r + h, c:c + w] = np.asarray(colour)[:, None, None]


def make_series(folder: Path, n: int = 6, vessel_dates: tuple[int, ...] = (1, 2, 4),
                vessel2_dates: tuple[int, ...] = (), hut_dates: tuple[int, ...] = (3,), cloudy: tuple[int, ...] = (),
                tag: bool = True, name_dates: bool = True, seed: int = 0, size: int = 256) -> list[Path]:
    """Write ``n`` dated images (every 3 days from 2024-10-01) and return their paths in date order.

    Each date is the base crop with a small shift (whole pixels), a gain, noise; a vessel on
    ``vessel_dates``, a hut on ``hut_dates``; a cloud over most of the tile on ``cloudy``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with rasterio.open(BASE) as src:
        base = src.read(window=Window(184, 96, size + 8, size + 8)).astype(np.float32)
        prof = src.profile
        tr = src.window_transform(Window(184, 96, size + 8, size + 8))
    out = []
    for i, d in enumerate(dates(n)):
        img = base.copy()
        if i in vessel_dates:
            _paint(img, VESSEL, HULL)
        if i in vessel2_dates:
            _paint(img, VESSEL2, HULL)
        if i in hut_dates:
            _paint(img, HUT, ROOF)
        dy, dx = (0, 0) if i == 0 else (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        img = img[:, dy:dy + size, dx:dx + size]
        gain = 1.0 + 0.05 * rng.standard_normal(4)
        img = img * gain[:, None, None] + rng.normal(0, 40, img.shape)
        if i in cloudy:
            yy, xx = np.mgrid[0:size, 0:size]
            alpha = np.zeros((size, size))
            for cy, cx, rad in ((0.35, 0.35, 0.26), (0.62, 0.62, 0.27), (0.3, 0.75, 0.18), (0.75, 0.25, 0.17)):
                d2 = ((yy - cy * size) ** 2 + (xx - cx * size) ** 2) / (rad * size) ** 2
                alpha = np.maximum(alpha, np.clip(1.5 * np.exp(-d2 ** 2), 0, 1))
            img = img * (1 - alpha) + 7500.0 * alpha
        img = np.clip(img, 1, 65535).astype(np.uint16)
        stem = d.isoformat() if name_dates else f"img_{chr(97 + (i * 7) % 26)}{i}"
        path = folder / f"{stem}.tif"
        p = {**prof, "width": size, "height": size, "transform": tr * Affine.translation(dx, dy)}
        with rasterio.open(path, "w", **p) as ds:
            ds.write(img)
            if tag:
                ds.update_tags(TIFFTAG_DATETIME=d.strftime("%Y:%m:%d 12:00:00"))
        out.append(path)
    return out
