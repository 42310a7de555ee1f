"""The quick-look picture: before, after and the detections, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

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


def _legend(width: int, counts: dict[str, int], hidden_share: float = 0.0) -> np.ndarray:
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
        x, y = int(o.points[:, 0].min()), int(o.points[:, 1].min())
        cv2.putText(panel, str(o.id), (x, max(y - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 3,
                    cv2.LINE_AA)
        cv2.putText(panel, str(o.id), (x, max(y - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def render(before: np.ndarray, after: np.ndarray, outlines: list[Outline], counts: dict[str, int],
           title: str = "", hidden: np.ndarray | None = None) -> np.ndarray:
    """Compose the quick-look: three panels and a legend, (H, W, 3) uint8 BGR.

    Parameters
    ----------
    before, after : (h, w, 3) uint8 BGR panels of the same size.
    outlines : detections in panel pixels.
    counts : detections per class, for the legend.
    hidden : (h, w) bool, what is not observable on either date; hatched on the detections panel.
    """
    det = after.copy()
    share = 0.0
    if hidden is not None:
        hatch(det, hidden)
        share = float(hidden.mean())
    _draw(det, outlines)
    # a departed object is only visible on the before date: outline it there too
    before = before.copy()
    _draw(before, [o for o in outlines if o.event == "departed"])
    gap = np.full((before.shape[0] + 28, 6, 3), 255, dtype=np.uint8)
    row = np.hstack([_title(before, "before (departed outlined)" if any(o.event == "departed" for o in outlines)
                            else "before"), gap, _title(after, "after (registered)"), gap,
                     _title(det, f"detections {title}".strip())])
    return np.vstack([row, _legend(row.shape[1], counts, share)])


def encode_png(picture: np.ndarray) -> bytes:
    """The picture, (H, W, 3) uint8 BGR, as PNG bytes (OpenCV's encoder, the same bytes every time)."""
    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise ValueError(f"could not encode a {picture.shape} {picture.dtype} picture as PNG")
    return buf.tobytes()
