"""The quick-look picture: before, after and the detections, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from affine import Affine

#: BGR colours by class, chosen to stay apart for colour-blind readers (Okabe-Ito).
COLOURS = {
    "trench": (0, 159, 230),   # orange
    "hut": (233, 180, 86),     # sky blue
    "vessel": (115, 158, 0),   # bluish green
    "other": (167, 121, 204),  # reddish purple
}


@dataclass(frozen=True)
class Outline:
    """One detection to draw: its contour in panel pixels."""

    id: int
    cls: str
    event: str
    points: np.ndarray  # (n, 2) int32, x/y in panel pixels


def stretch(bands: np.ndarray, valid: np.ndarray, lo_hi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bands, h, w) -> (h, w, 3) uint8 BGR with a 2-98 % stretch per band.

    Uses the first three bands as RGB (or the single band as grey). Returns the
    picture and the (bands, 2) stretch limits, to reuse them on the other date.
    """
    rgb = bands[:3] if bands.shape[0] >= 3 else np.repeat(bands[:1], 3, axis=0)
    if lo_hi is None:
        vals = rgb[:, valid] if valid.any() else rgb.reshape(3, -1)
        lo_hi = np.stack([np.percentile(vals, 2, axis=1), np.percentile(vals, 98, axis=1)], axis=1)
    lo, hi = lo_hi[:, 0, None, None], lo_hi[:, 1, None, None]
    out = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    out = np.ascontiguousarray(out[::-1].transpose(1, 2, 0))  # RGB -> BGR for OpenCV
    out[~valid] = 0
    return out, lo_hi


def _title(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def hatch(panel: np.ndarray, hidden: np.ndarray, spacing_px: int = 8) -> None:
    """Hatch ``hidden`` (h, w) bool in place: grey diagonal lines and a grey outline (not observable)."""
    if not hidden.any():
        return
    yy, xx = np.indices(hidden.shape)
    lines = hidden & (((xx + yy) % spacing_px) < 2)
    panel[lines] = (200, 200, 200)
    contours, _ = cv2.findContours(hidden.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(panel, contours, -1, (200, 200, 200), 1, cv2.LINE_AA)


def _legend(width: int, counts: dict[str, int], hidden_share: float = 0.0, note: str = "") -> np.ndarray:
    bar = np.full((30, width, 3), 255, dtype=np.uint8)
    x = 8
    for cls, colour in COLOURS.items():
        cv2.rectangle(bar, (x, 8), (x + 16, 22), colour, -1)
        label = f"{cls} ({counts.get(cls, 0)})"
        cv2.putText(bar, label, (x + 22, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        x += 34 + 10 * len(label)
    cv2.putText(bar, "dashed = departed", (x, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if hidden_share > 0:
        x += 160
        cv2.putText(bar, f"hatched = not observable ({100 * hidden_share:.1f} %)", (x, 21), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 0, 0), 1, cv2.LINE_AA)
        x += 330
    if note:
        cv2.putText(bar, note, (x if hidden_share > 0 else x + 160, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return bar


def _draw(panel: np.ndarray, outlines: list[Outline]) -> None:
    for o in outlines:
        colour = COLOURS.get(o.cls, COLOURS["other"])
        pts = o.points.reshape(-1, 1, 2)
        if o.event == "departed":
            for i in range(0, len(o.points) - 1, 2):
                cv2.line(panel, tuple(map(int, o.points[i])), tuple(map(int, o.points[i + 1])), colour, 2, cv2.LINE_AA)
        else:
            cv2.polylines(panel, [pts], True, colour, 2, cv2.LINE_AA)


def place_labels(outlines: list[Outline], shape: tuple[int, int], font_scale: float = 0.45,
                 thickness: int = 1, reserved: Sequence[tuple[int, int, int, int]] = ()) -> dict[int, tuple[int, int]]:
    """Where each detection's id fits without overlapping another id: ``{id: (x, y)}`` text origins.

    Greedy: the largest outlines first (ties by id), each trying above, below, right and left of
    its bounding box; an id that fits nowhere inside the ``(h, w)`` panel, or only over a
    ``reserved`` box ``(x0, y0, x1, y1)`` (scale bar, north arrow), is left out (the report's table
    carries every detection). Deterministic for a given list.
    """
    h, w = shape
    taken = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in reserved:
        taken[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    order = sorted(outlines, key=lambda o: (-_box_area(o.points), o.id))
    out: dict[int, tuple[int, int]] = {}
    for o in order:
        (tw, th), base = cv2.getTextSize(str(o.id), cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness + 2)
        x0, y0 = int(o.points[:, 0].min()), int(o.points[:, 1].min())
        x1, y1 = int(o.points[:, 0].max()), int(o.points[:, 1].max())
        for x, y in ((x0, y0 - 3), (x0, y1 + th + 3), (x1 + 3, y0 + th), (x0 - tw - 3, y0 + th)):
            top, bottom = y - th - 1, y + base
            if x < 0 or top < 0 or x + tw >= w or bottom >= h:
                continue
            if not taken[top:bottom + 1, x:x + tw + 1].any():
                taken[max(0, top - 1):bottom + 2, max(0, x - 1):x + tw + 2] = True
                out[o.id] = (x, y)
                break
    return out


def _box_area(points: np.ndarray) -> int:
    return int(np.ptp(points[:, 0]) + 1) * int(np.ptp(points[:, 1]) + 1)


def _draw_labels(panel: np.ndarray, outlines: list[Outline], where: dict[int, tuple[int, int]]) -> None:
    for o in outlines:
        if o.id not in where:
            continue
        colour = COLOURS.get(o.cls, COLOURS["other"])
        cv2.putText(panel, str(o.id), where[o.id], cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 3, cv2.LINE_AA)
        cv2.putText(panel, str(o.id), where[o.id], cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def round_length_m(metres_per_px: float, max_px: float) -> float:
    """The longest round length (1, 2 or 5 times a power of ten metres) at most ``max_px`` panel pixels."""
    if not (metres_per_px > 0 and max_px > 0):
        raise ValueError(f"metres_per_px and max_px must be positive, got {metres_per_px}, {max_px}")
    limit = metres_per_px * max_px
    exp = int(np.floor(np.log10(limit)))
    for k in (5, 2, 1):
        if k * 10.0 ** exp <= limit:
            return k * 10.0 ** exp
    return 10.0 ** exp


def _length_text(m: float) -> str:
    return f"{m / 1000:g} km" if m >= 1000 else f"{m:g} m"


NORTH_BOX = 60, 62  # width, height of the north arrow's corner box
SCALE_BOX_H = 40  # height of the scale bar's box
Box = tuple[int, int, int, int]


def _covered(box: Box, outlines: Sequence[Outline]) -> int:
    """Pixels of ``box`` (x0, y0, x1, y1) under the detections' bounding boxes, summed over detections."""
    x0, y0, x1, y1 = box
    total = 0
    for o in outlines:
        ox0, oy0 = o.points.min(axis=0)
        ox1, oy1 = o.points.max(axis=0) + 1
        total += max(0, min(x1, int(ox1)) - max(x0, int(ox0))) * max(0, min(y1, int(oy1)) - max(y0, int(oy0)))
    return total


def _least_covered(corners: list[Box], outlines: Sequence[Outline]) -> Box:
    return min(corners, key=lambda box: (_covered(box, outlines), corners.index(box)))


def scale_length_px(shape: tuple[int, int], metres_per_px: float) -> tuple[float, int]:
    """The scale bar's round length in metres (at most a quarter of the panel's width) and in pixels."""
    length_m = round_length_m(metres_per_px, shape[1] / 4)
    return length_m, max(1, int(round(length_m / metres_per_px)))


def scale_box(shape: tuple[int, int], metres_per_px: float, outlines: Sequence[Outline] = ()) -> Box:
    """The box ``(x0, y0, x1, y1)`` of an ``(h, w)`` panel for the scale bar: bottom left, else bottom
    right, whichever covers less of the detections' bounding boxes (bottom left on a tie)."""
    h, w = shape
    bw = min(w, scale_length_px(shape, metres_per_px)[1] + 64)
    return _least_covered([(0, h - SCALE_BOX_H, bw, h), (w - bw, h - SCALE_BOX_H, w, h)], outlines)


def north_box(shape: tuple[int, int], outlines: Sequence[Outline] = (), scale: Box | None = None) -> Box:
    """The corner box ``(x0, y0, x1, y1)`` of an ``(h, w)`` panel for the north arrow: top right,
    else top left, else the bottom corner the scale bar's box ``scale`` (:func:`scale_box`) leaves
    free (bottom right without one), whichever covers the least of the detections' bounding boxes
    (the first on a tie)."""
    h, w = shape
    bw, bh = NORTH_BOX
    bottom = (0, h - bh, bw, h) if at_right(scale) else (w - bw, h - bh, w, h)
    return _least_covered([(w - bw, 0, w, bh), (0, 0, bw, bh), bottom], outlines)


def furniture(shape: tuple[int, int], metres_per_px: float | None, north_deg: float | None,
              outlines: Sequence[Outline] = ()) -> tuple[Box | None, Box | None]:
    """The boxes ``(x0, y0, x1, y1)`` of the scale bar (:func:`scale_box`; None without
    ``metres_per_px``) and of the north arrow (:func:`north_box`; None without ``north_deg``)."""
    bar = scale_box(shape, metres_per_px, outlines) if metres_per_px else None
    return bar, (north_box(shape, outlines, bar) if north_deg is not None else None)


def furniture_boxes(shape: tuple[int, int], metres_per_px: float | None, north_deg: float | None,
                    outlines: Sequence[Outline] = ()) -> list[Box]:
    """The boxes that the scale bar and the north arrow (:func:`furniture`) cover on an ``(h, w)`` panel."""
    return [b for b in furniture(shape, metres_per_px, north_deg, outlines) if b is not None]


def at_right(box: Box | None) -> bool:
    """True when a bottom corner box (:func:`scale_box`) is the bottom right one."""
    return box is not None and box[0] > 0


def scale_bar(panel: np.ndarray, metres_per_px: float, box: Box | None = None) -> None:
    """Draw a round-length scale bar in ``box`` (:func:`scale_box`; bottom left when None) of ``panel`` (in place)."""
    h, w = panel.shape[:2]
    length_m, n = scale_length_px((h, w), metres_per_px)
    text = _length_text(length_m)
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    x0, y0 = (w - 10 - max(n, tw) if at_right(box) else 10), h - 12
    cv2.rectangle(panel, (x0 - 6, y0 - 24), (x0 + max(n, tw) + 6, y0 + 7), (255, 255, 255), -1)
    cv2.rectangle(panel, (x0, y0 - 3), (x0 + n, y0 + 3), (0, 0, 0), -1)
    cv2.rectangle(panel, (x0 + n // 2, y0 - 2), (x0 + n - 1, y0 + 2), (255, 255, 255), -1)
    cv2.putText(panel, text, (x0, y0 - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def north_arrow(panel: np.ndarray, north_deg: float, box: tuple[int, int, int, int] | None = None) -> None:
    """Draw an arrow to true north, ``north_deg`` clockwise from the panel's up, in the corner ``box``
    (:func:`north_box`; top right when None) (in place)."""
    h, w = panel.shape[:2]
    x0, y0, x1, _ = box if box is not None else north_box((h, w))
    cx, cy, r = (x0 + 34 if x1 == w else x0 + 26), y0 + 30, 18
    cv2.circle(panel, (cx, cy), r + 6, (255, 255, 255), -1, cv2.LINE_AA)
    t = np.deg2rad(north_deg)
    ux, uy = np.sin(t), -np.cos(t)  # unit vector to north, in panel pixels (y down)
    px, py = -uy, ux
    tip = (cx + ux * r, cy + uy * r)
    tail = (cx - ux * r * 0.6, cy - uy * r * 0.6)
    left = (tail[0] + px * 7, tail[1] + py * 7)
    right = (tail[0] - px * 7, tail[1] - py * 7)
    tri = np.round(np.array([tip, left, (cx - ux * r * 0.2, cy - uy * r * 0.2), right])).astype(np.int32)
    cv2.fillPoly(panel, [tri], (0, 0, 0), cv2.LINE_AA)
    lx, ly = cx - ux * (r - 2) - 5, cy - uy * (r - 2) + 5
    cv2.putText(panel, "N", (int(round(lx)), int(round(ly))), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 180), 1,
                cv2.LINE_AA)


def north_angle_deg(crs: str | None, transform: tuple[float, ...] | list[float], width: int,
                    height: int) -> float | None:
    """Direction of true north at the grid's centre, in degrees clockwise from the grid's up (row 0).

    ``crs`` is any string GDAL reads (WKT, EPSG:n); ``transform`` the six affine coefficients
    (a, b, c, d, e, f) of pixel (col, row) to map coordinates. None without a CRS. Rotated grids
    and projections whose grid north differs from true north (convergence) are both accounted for:
    the centre is moved a small step north in geographic coordinates and taken back to pixels.
    """
    if not crs:
        return None
    from rasterio._err import CPLE_BaseError
    from rasterio.crs import CRS
    from rasterio.errors import RasterioError
    from rasterio.warp import transform as warp

    a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    fwd = Affine(a, b, c, d, e, f)
    x, y = fwd * (width / 2.0, height / 2.0)
    try:  # a local (engineering) CRS has no way to geographic coordinates: no arrow then
        src, geo = CRS.from_user_input(crs), CRS.from_epsg(4326)
        (lon,), (lat,) = warp(src, geo, [x], [y])
        step = -1e-4 if lat > 89.0 else 1e-4
        (x2,), (y2,) = warp(geo, src, [lon], [lat + step])
    except (ValueError, RasterioError, CPLE_BaseError):
        return None
    inv = ~fwd
    c0, r0 = inv * (x, y)
    c1, r1 = inv * (x2, y2)
    dx, dy = (c1 - c0) * np.sign(step), (r1 - r0) * np.sign(step)
    if not (np.isfinite(dx) and np.isfinite(dy)) or dx == dy == 0:
        return None
    return float(np.degrees(np.arctan2(dx, -dy)))


def render(before: np.ndarray, after: np.ndarray, outlines: list[Outline], counts: dict[str, int],
           title: str = "", hidden: np.ndarray | None = None, *, dates: tuple[str, str] = ("", ""),
           metres_per_px: float | None = None, north_deg: float | None = None) -> np.ndarray:
    """Compose the quick-look: three panels and a legend, (H, W, 3) uint8 BGR.

    Parameters
    ----------
    before, after : (h, w, 3) uint8 BGR panels of the same size.
    outlines : detections in panel pixels.
    counts : detections per class, for the legend.
    hidden : (h, w) bool, what is not observable on either date; hatched on the detections panel.
    dates : the two dates (or file names) shown in the panel titles; empty strings show none.
    metres_per_px : ground size of one panel pixel; draws a scale bar when given.
    north_deg : true north, clockwise from the panel's up (:func:`north_angle_deg`); draws an arrow.

    Notes
    -----
    Ids are written only where they fit without overlapping (:func:`place_labels`); the legend
    says how many are shown.
    """
    det = after.copy()
    share = 0.0
    if hidden is not None:
        hatch(det, hidden)
        share = float(hidden.mean())
    bar, corner = furniture(det.shape[:2], metres_per_px, north_deg, outlines)
    reserved = [b for b in (bar, corner) if b is not None]
    before, after = before.copy(), after.copy()
    # furniture first, in the corners with the fewest detections: outlines and ids are drawn over it,
    # and ids are kept off it
    for panel in (before, after, det):
        if metres_per_px:
            scale_bar(panel, metres_per_px, bar)
        if north_deg is not None:
            north_arrow(panel, north_deg, corner)
    _draw(det, outlines)
    where = place_labels(outlines, det.shape[:2], reserved=reserved)
    _draw_labels(det, outlines, where)
    # a departed object is only visible on the before date: outline it there too
    departed = [o for o in outlines if o.event == "departed"]
    _draw(before, departed)
    _draw_labels(before, departed, place_labels(departed, before.shape[:2], reserved=reserved))
    db, da = (f" {d}" if d else "" for d in dates)
    gap = np.full((before.shape[0] + 28, 6, 3), 255, dtype=np.uint8)
    row = np.hstack([_title(before, ("before (departed outlined)" if departed else "before") + db), gap,
                     _title(after, "after (registered)" + da), gap,
                     _title(det, f"detections {title}".strip())])
    ids = f"ids: {len(where)} of {len(outlines)} shown" if len(where) < len(outlines) else ""
    return np.vstack([row, _legend(row.shape[1], counts, share, ids)])


def encode_png(picture: np.ndarray) -> bytes:
    """The picture, (H, W, 3) uint8 BGR, as PNG bytes (OpenCV's encoder, the same bytes every time)."""
    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise ValueError(f"could not encode a {picture.shape} {picture.dtype} picture as PNG")
    return buf.tobytes()
