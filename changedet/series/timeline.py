"""``timeline.png``: tracks as bars over the dates, unobservable dates shaded, counts per class per date."""

from __future__ import annotations

import cv2
import numpy as np

from ..quicklook import COLOURS

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK = (0, 0, 0)
SHADE = (215, 215, 215)


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, colour: tuple[int, int, int] = BLACK) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def render(dates: list[str], date_ok: list[bool], tracks: list[dict[str, object]],
           counts: list[dict[str, int] | None], title: str, max_tracks: int = 60) -> np.ndarray:
    """The timeline picture (h, w, 3) uint8 BGR.

    Parameters
    ----------
    dates : ISO dates, sorted.
    date_ok : per date, observable enough (others are shaded and their counts left blank).
    tracks : each with ``class``, ``dates_present`` and ``track_id`` (the longest ``max_tracks`` are drawn).
    counts : per date the objects of each class present (None: not observable).
    title : the site and date range.
    """
    n = len(dates)
    col = max(14, min(40, 1100 // max(n, 1)))
    left, top = 130, 58
    shown = sorted(tracks, key=lambda t: (-len(t["dates_present"]), str(t["track_id"])))[:max_tracks]  # type: ignore[arg-type]
    shown.sort(key=lambda t: (str(t["first_seen"]), str(t["track_id"])))
    row_h = 14
    classes = ("vessel", "hut", "trench", "other")
    count_h = 18 * len(classes) + 10
    label_h = 80
    width = left + n * col + 20
    height = top + max(len(shown), 1) * row_h + 16 + count_h + label_h + 34
    img = np.full((height, max(width, 640), 3), 255, np.uint8)
    _text(img, title, 8, 22, 0.6)
    body_bottom = top + max(len(shown), 1) * row_h + 6 + count_h
    for t in range(n):  # not observable dates: shaded columns
        if not date_ok[t]:
            cv2.rectangle(img, (left + t * col, top - 4), (left + (t + 1) * col - 1, body_bottom), SHADE, -1)
    index = {d: i for i, d in enumerate(dates)}
    for k, tr in enumerate(shown):
        y = top + k * row_h
        colour = COLOURS.get(str(tr["class"]), BLACK)
        _text(img, f"{tr['track_id']} {tr['class']}", 6, y + 10, 0.38)
        for d in tr["dates_present"]:  # type: ignore[union-attr]
            t = index[str(d)]
            cv2.rectangle(img, (left + t * col + 1, y + 2), (left + (t + 1) * col - 2, y + row_h - 3), colour, -1)
    if not shown:
        _text(img, "no objects found", left + 6, top + 10, 0.4)
    y0 = top + max(len(shown), 1) * row_h + 12
    cv2.line(img, (left, y0 - 6), (left + n * col, y0 - 6), (150, 150, 150), 1)
    for j, cls in enumerate(classes):
        y = y0 + j * 18
        cv2.rectangle(img, (6, y + 2), (18, y + 14), COLOURS[cls], -1)
        _text(img, cls, 24, y + 13, 0.42)
        for t in range(n):
            if counts[t] is not None:
                _text(img, str(counts[t][cls]), left + t * col + 3, y + 13, 0.38)  # type: ignore[index]
    y_lab = body_bottom + 8
    for t, d in enumerate(dates):  # dates written upward under their column
        patch = np.full((col, label_h), 255, np.uint8)
        cv2.putText(patch, d, (2, col - 4), FONT, 0.36, 0, 1, cv2.LINE_AA)
        rot = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)
        x = left + t * col
        img[y_lab:y_lab + label_h, x:x + col] = np.minimum(img[y_lab:y_lab + label_h, x:x + col], rot[:, :, None])
    y_leg = y_lab + label_h + 20
    x = 8
    for cls in classes:
        cv2.rectangle(img, (x, y_leg - 11), (x + 14, y_leg + 1), COLOURS[cls], -1)
        _text(img, cls, x + 18, y_leg, 0.45)
        x += 30 + 10 * len(cls)
    cv2.rectangle(img, (x, y_leg - 11), (x + 14, y_leg + 1), SHADE, -1)
    _text(img, "not observable (counts blank)", x + 18, y_leg, 0.45)
    return img
