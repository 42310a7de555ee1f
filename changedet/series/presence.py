"""Objects of a series: regions that stand out on some dates, linked into candidates, and per date
whether each candidate is in its "object" or its "empty" state (pure functions on arrays)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from scipy import ndimage

from ..objects import ring


@dataclass(frozen=True)
class Region:
    """One region that stands out from the background on one date."""

    date: int
    row0: int
    col0: int
    mask: np.ndarray  # (h, w) bool crop

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), exclusive ends."""
        return self.row0, self.col0, self.row0 + self.mask.shape[0], self.col0 + self.mask.shape[1]


def regions_of(mask: np.ndarray, date: int, min_px: int) -> list[Region]:
    """8-connected regions of a (h, w) uint8 mask of at least ``min_px`` pixels, by position."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    out = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area >= max(min_px, 1):
            out.append(Region(date, y, x, labels[y:y + h, x:x + w] == k))
    return sorted(out, key=lambda r: (r.row0, r.col0))


@dataclass
class Linker:
    """Regions of all dates linked into candidates by overlapping footprints (union-find on a label image).

    A region joins every candidate whose footprint it shares at least ``min_overlap`` of the smaller
    of the two with, if the larger is at most ``max_size_ratio`` times the smaller or is (holds) a
    lasting step's region: a haze patch at a cloud's edge does not swallow the hut it covers on one
    date, while the whole of a trench (its lasting step) gathers the pieces it stands out in on each
    date. The candidate's footprint is the union of its regions.
    """

    shape: tuple[int, int]
    min_overlap: float
    max_size_ratio: float = 10.0
    ids: np.ndarray = field(init=False)
    parent: list[int] = field(default_factory=lambda: [0])
    area: list[int] = field(default_factory=lambda: [0])
    members: list[list[int]] = field(default_factory=lambda: [[]])
    regions: list[Region] = field(default_factory=list)
    lasting: list[bool] = field(default_factory=lambda: [False])

    def __post_init__(self) -> None:
        self.ids = np.zeros(self.shape, np.int32)

    def _root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _joins(self, g: int, overlap: int, area: int, lasting: bool) -> bool:
        small, large = min(area, self.area[g]), max(area, self.area[g])
        big_is_lasting = self.lasting[g] if self.area[g] >= area else lasting
        return overlap >= self.min_overlap * small and (large <= self.max_size_ratio * small or big_is_lasting)

    def add(self, reg: Region, lasting: bool = False) -> None:
        """Link one region (``lasting``: a lasting step's region, not one date's)."""
        r0, c0, r1, c1 = reg.bbox
        view = self.ids[r0:r1, c0:c1]
        new = len(self.parent)
        self.parent.append(new)
        self.members.append([len(self.regions)])
        self.regions.append(reg)
        vals, counts = np.unique(view[reg.mask], return_counts=True)
        overlap: dict[int, int] = {}
        for v, k in zip(vals.tolist(), counts.tolist()):
            if v:
                g = self._root(v)
                overlap[g] = overlap.get(g, 0) + k
        merged = [g for g, k in sorted(overlap.items()) if self._joins(g, k, reg.area_px, lasting)]
        # paint the region where it is free, and over a much larger candidate it did not join (a haze
        # patch); pixels of other candidates it did not join stay theirs
        over = [g for g in overlap if g not in merged and max(self.area[g], 1) > self.max_size_ratio * reg.area_px]
        paint = reg.mask & (view == 0)
        if over:
            roots = {v: self._root(v) for v in vals.tolist() if v}
            paint |= reg.mask & np.isin(view, [v for v, g in roots.items() if g in over])
        self.area.append(int(paint.sum()) + sum(self.area[g] for g in merged))
        self.lasting.append(lasting or any(self.lasting[g] for g in merged))
        for g in merged:
            self.parent[g] = new
            self.members[new].extend(self.members[g])
            self.members[g] = []
        view[paint] = new

    def candidates(self) -> list[Candidate]:
        """The linked candidates, ordered by position (top row, then left column)."""
        out = []
        for g in sorted({self._root(i) for i in range(1, len(self.parent))}):
            regs = [self.regions[k] for k in self.members[g]]
            if not regs:
                continue
            r0 = min(r.row0 for r in regs)
            c0 = min(r.col0 for r in regs)
            r1 = max(r.bbox[2] for r in regs)
            c1 = max(r.bbox[3] for r in regs)
            foot = np.zeros((r1 - r0, c1 - c0), bool)
            for r in regs:
                foot[r.row0 - r0:r.bbox[2] - r0, r.col0 - c0:r.bbox[3] - c0] |= r.mask
            out.append(Candidate(r0, c0, foot, sorted(regs, key=lambda r: (r.date, r.row0, r.col0))))
        out.sort(key=lambda c: (c.row0, c.col0))
        return out


@dataclass
class Candidate:
    """An object candidate: its footprint (the union of its regions) and the regions of each date."""

    row0: int
    col0: int
    footprint: np.ndarray  # (h, w) bool
    regions: list[Region]

    def dates(self) -> set[int]:
        return {r.date for r in self.regions}


def contrast(image: np.ndarray, inside: np.ndarray, around: np.ndarray, band_sigma: np.ndarray) -> np.ndarray:
    """Mean of a region minus the mean of its ring, per band, in noise sigmas ((bands,) float64; NaN if either empty)."""
    if not inside.any() or not around.any():
        return np.full(image.shape[0], np.nan)
    return (image[:, inside].mean(axis=1) - image[:, around].mean(axis=1)) / np.asarray(band_sigma, np.float64)


def nearest_side(image: np.ndarray, inside: np.ndarray, around: np.ndarray, band_sigma: np.ndarray,
                 sectors: int = 8, min_px: int = 4) -> float:
    """How far a region is from the side of its ring it most resembles (noise sigmas; NaN if unknown).

    Each ring pixel belongs to the side of the region it faces: the direction from the region's
    nearest pixel to it, cut into ``sectors``; the region's mean is compared with each side's
    median (a side beyond a strip's end also catches a few pixels round its corners).
    An empty berth is water like the open water on one side of it, bare ground like the ground on
    one side; a hull, a roof or a trench differs from every side. A side is taken outward from the
    outline, not as an angle about the centre: along a long quay strip the centre's eastern sector
    holds the water above and below its eastern half, while the strip's own continuation is what
    lies beyond its end.
    """
    if not inside.any() or not around.any():
        return float("nan")
    _, (near_r, near_c) = ndimage.distance_transform_edt(~inside, return_indices=True)
    rr, cc = np.nonzero(around)
    angle = np.arctan2(rr - near_r[rr, cc], cc - near_c[rr, cc])
    sector = np.floor((angle + np.pi) / (2 * np.pi) * sectors + 0.5).astype(int) % sectors
    mean_in = image[:, inside].mean(axis=1)
    sig = np.asarray(band_sigma, np.float64)
    best = float("nan")
    vals = image[:, rr, cc]
    for k in range(sectors):
        sel = sector == k
        if sel.sum() < min_px:
            continue
        d = float(np.sqrt(np.mean(((mean_in - np.median(vals[:, sel], axis=1)) / sig) ** 2)))
        best = d if not best <= d else best
    return best


def ring_of(footprint: np.ndarray, width_px: int, others: np.ndarray) -> np.ndarray:
    """The ring around a footprint without other candidates' footprints (``others``, bool, same shape)."""
    return ring(footprint, width_px) & ~others


@dataclass(frozen=True)
class States:
    """Per date of one candidate: present (object state), absent (empty state), or unobserved."""

    present: np.ndarray  # (n,) bool
    observed: np.ndarray  # (n,) bool
    separation: float  # distance between the two states' mean contrasts, noise sigmas
    object_is_new: bool  # True: the object state is the one the background lacks (it stands out when present)
    value: np.ndarray | None = None  # (n,) the value the states were split on (NaN where not observed)


def two_levels(values: np.ndarray) -> tuple[float, float, float, float]:
    """The split of 1-D values into a low and a high group that maximises the between-group variance
    (Otsu's criterion on the sorted values): (threshold, low mean, high mean, pooled spread within
    the groups; NaN with fewer than three values)."""
    v = np.sort(np.asarray(values, np.float64))
    n = v.size
    if n < 2:
        return float("inf"), float(v.mean()) if n else 0.0, float("nan"), float("nan")
    csum = np.cumsum(v)
    qsum = np.cumsum(v * v)
    k = np.arange(1, n)  # low group: the k smallest
    lo = csum[:-1] / k
    hi = (csum[-1] - csum[:-1]) / (n - k)
    best = int(np.argmax(k * (n - k) * (hi - lo) ** 2))
    kb = best + 1
    within = qsum[-1] - kb * lo[best] ** 2 - (n - kb) * hi[best] ** 2
    spread = float(np.sqrt(max(within, 0.0) / (n - 2))) if n > 2 else float("nan")
    return float((v[best] + v[best + 1]) / 2.0), float(lo[best]), float(hi[best]), spread


def lowest_level(values: np.ndarray, wide: float, narrow: float = float("inf"),
                 sharpness: float = 0.0) -> tuple[float, float] | None:
    """The threshold above the lowest level of 1-D values, and the separation at that split.

    :func:`two_levels` splits the values; while its two groups are two states, the low group is
    split again. Two states: at least ``wide`` apart, or, at the first split, at least ``narrow``
    apart and ``sharpness`` times the spread within the groups (not one state's scatter, nor a slow
    drift). A berth used by a small and a large hull has three levels (empty, small, large); the
    empty one is the lowest. Below the first split only levels ``wide`` apart count: an empty
    berth under thin haze is a little off the empty level, not a hull. None when the values do not
    split at all.
    """
    v = np.sort(np.asarray(values, np.float64))
    found = None
    while v.size >= 2:
        cut, lo, hi, spread = two_levels(v)
        gap = hi - lo
        tight = found is None and gap >= narrow and (not spread > 0 or gap >= sharpness * spread)
        if not (gap >= wide or tight):
            break
        found = (cut, gap)
        v = v[v <= cut]
    return found


def _separation(cue: np.ndarray, high: np.ndarray, low: np.ndarray) -> float:
    """How far a cue's mean over the ``high`` dates lies above its mean over the ``low`` dates, in
    units of its pooled scatter within them (signed; 0 when either group is empty)."""
    if not (high.any() and low.any()):
        return 0.0
    d = float(cue[high].mean() - cue[low].mean())
    spread = math.sqrt((float(((cue[high] - cue[high].mean()) ** 2).sum())
                        + float(((cue[low] - cue[low].mean()) ** 2).sum())) / max(cue.size - 2, 1))
    return d / spread if spread > 0 else math.copysign(math.inf, d) if d else 0.0


def state_axis(contrasts: np.ndarray, side: np.ndarray | None) -> np.ndarray:
    """Per date a value that grows with the object's presence: the dates' contrasts projected on
    their main direction of change, oriented so that the dates more unlike their surroundings are
    high. (n,) float64.

    Two cues tell which group of dates is unlike its surroundings: ``side`` (:func:`nearest_side`)
    and the contrast's norm; the one that separates the two groups more clearly (against its own
    scatter within them) decides. A hull, a roof or a trench differs from every side of its ring
    and from the ring as a whole; an empty berth is water like the open water beside it, but may
    differ from a ring half quay; a hut on a field's edge is like the bare side and differs from
    the ring as a whole, while the empty ground there, half field, is like neither side.
    """
    x = np.asarray(contrasts, np.float64)
    centred = x - x.mean(axis=0)
    if x.shape[0] < 2 or not np.any(centred):
        return np.zeros(x.shape[0])
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ axis
    cut = two_levels(proj)[0]
    high, low = proj > cut, proj <= cut
    cues = [np.linalg.norm(x, axis=1)] + ([np.asarray(side, np.float64)] if side is not None else [])
    seps = [_separation(c, high, low) for c in cues]
    if seps[int(np.argmax(np.abs(seps)))] < 0:
        proj = -proj
    return proj


def decide_states(contrasts: np.ndarray, observed: np.ndarray, stood_out: np.ndarray,
                  min_separation: float, side: np.ndarray | None = None,
                  min_sharpness: float = 4.0) -> States | None:
    """Which dates show a candidate's object state.

    Parameters
    ----------
    contrasts : (n, bands) region-minus-ring contrast per date (noise sigmas).
    observed : (n,) bool, the footprint observable on that date.
    stood_out : (n,) bool, the candidate had a region that stood out from the background that date.
    min_separation : the two states must differ by this much (noise sigmas; else None: not an object),
        or by a third of it when they are twice ``min_sharpness`` times the scatter within them.
    side : (n,) distance to the most similar side of the ring (:func:`nearest_side`): which state
        is the object's (None: the contrast's norm).
    min_sharpness : the two states must differ by this many times the dates' scatter within them.

    Notes
    -----
    First the dates' distance to the side of the ring each resembles most is split above its lowest
    level (:func:`lowest_level`): the empty state; every date above it shows the object. A hull, a
    roof or a trench differs from every side whatever its colour, so a berth used by dark and bright
    hulls of several sizes has one empty level below them all; an object rare (a vessel) or there
    most of the time (a hut built early) is found alike. When that does not split (a trench across
    a field edge: the ring's own variety is as large as the trench's contrast), the contrasts are
    put on one axis (:func:`state_axis`) and split there, provided the two groups are tight
    (``min_sharpness``) and the object dates are unlike every side of the ring: by
    ``min_separation``, or by more than on the empty dates (half ``min_sharpness`` times the
    scatter; a faint trench dug into a field is a little unlike the field, but only since it was dug).
    """
    ok = np.isfinite(contrasts).all(axis=1)
    if side is not None:
        ok &= np.isfinite(side)
    obs = observed & ok
    if not (obs & stood_out).any() or obs.sum() < 2:
        return None
    value = np.full(len(observed), np.nan)
    split = None
    if side is not None:  # a hull, a roof: unlike every side of its ring, whatever its colour
        value[obs] = side[obs]
        split = lowest_level(value[obs], min_separation, min_separation / 3.0, 2.0 * min_sharpness)
    axis = split is None
    if axis:  # a faint structure in varied surroundings: two tight groups of contrasts
        value[obs] = state_axis(contrasts[obs], None if side is None else side[obs])
        split = lowest_level(value[obs], float("inf"), min_separation, min_sharpness)
    if split is None:
        return None
    cut, sep = split
    present = obs & (value > cut)
    if not axis:
        present = _with_contrast_level(contrasts, obs, present, side, min_separation, min_sharpness)
        present = _with_like_dates(contrasts, obs, present, min_separation, min_sharpness)
    if not present.any() or present.sum() == obs.sum():
        return None
    if axis and side is not None and not (np.median(side[present]) >= min_separation
                                          or _separation(side, present, obs & ~present) >= min_sharpness / 2.0):
        return None  # a patch of what is around it: like one side of its ring, on its "object" dates as on the others
    # the object is new to the background when the dates that stood out are (mostly) its dates
    obj_new = int((present & stood_out).sum()) >= int((~present & obs & stood_out).sum())
    return States(present, obs, float(sep), obj_new, value)


def _with_contrast_level(contrasts: np.ndarray, obs: np.ndarray, present: np.ndarray, side: np.ndarray,
                         min_separation: float, min_sharpness: float) -> np.ndarray:
    """``present`` (found on the side distance) with the dates its contrast's norm puts with them.

    A trench under a changed season can be only a little unlike the nearest side of its ring on a
    few dates (between the empty level and its other dates, less than ``min_separation`` above
    the empty one), while its contrast with the ring as a whole is as strong as on its other dates.
    When the norm splits the dates into two tight groups (``min_separation`` apart and
    ``min_sharpness`` times their scatter) whose high group holds every date the side found, the
    high group is the object's. When its groups are the side's, the other way round, the cue that
    separates them more clearly against its own scatter says which is the object's (as in
    :func:`state_axis`): a thin footprint across a field edge is, empty, half one field and half
    the other and unlike either side, but like the ring as a whole.
    """
    norm = np.full(len(obs), np.nan)
    norm[obs] = np.linalg.norm(contrasts[obs], axis=1)
    split = lowest_level(norm[obs], float("inf"), min_separation, min_sharpness)
    if split is None:
        return present
    high = obs & (norm > split[0])
    if high.sum() == obs.sum():
        return present
    if (high >= present).all():
        return high
    if np.array_equal(high, obs & ~present) and \
            _separation(norm, high, present) > _separation(side, present, high):
        return high
    return present


def _with_like_dates(contrasts: np.ndarray, obs: np.ndarray, present: np.ndarray, min_separation: float,
                     sharpness: float) -> np.ndarray:
    """``present`` with the absent dates whose contrasts are those of one of its dates.

    A small hull in a footprint left by a larger one is unlike the nearest side of its ring by
    little, and on one of its dates by less than the split (:func:`lowest_level`), while its
    contrasts (every band) are those of its other dates. An absent date joins the present ones
    when it lies outside the other empty dates' cloud (``min_separation`` and ``sharpness`` times
    their scatter from their mean) and closer to a present date than ``1 / sharpness`` of that distance.
    """
    x = np.asarray(contrasts, np.float64)
    empty = obs & ~present
    if empty.sum() < 3 or not present.any():
        return present
    out = present.copy()
    for t in np.flatnonzero(empty):
        others = empty.copy()
        others[t] = False  # the empty dates' cloud without the date in question
        mean = x[others].mean(axis=0)
        scatter = math.sqrt(float(((x[others] - mean) ** 2).sum()) / (int(others.sum()) - 1))
        d_empty = float(np.linalg.norm(x[t] - mean))
        d_present = float(np.linalg.norm(x[present] - x[t], axis=1).min())
        if d_empty >= max(min_separation, sharpness * scatter) and d_present * sharpness <= d_empty:
            out[t] = True
    return out


def doubt_absence(states: States, surely_seen: np.ndarray) -> States | None:
    """``states`` with absent dates whose footprint is not ``surely_seen`` made unobserved; None when
    the object is then present on every observed date (it is part of the site, not a track)."""
    observed = states.observed & (states.present | surely_seen)
    if observed.sum() == states.present.sum() or not states.present.any():
        return None
    return replace(states, observed=observed)


def doubt_hazy_presence(states: States, contrasts: np.ndarray, surely_seen: np.ndarray,
                        sharpness: float) -> States | None:
    """``states`` with present dates in a cloud's haze that look empty made unobserved.

    On a date whose footprint is seen but its buffer is not (``surely_seen`` False), haze can lift
    the nearest-side distance of an empty berth above the split. Such a date whose contrasts lie
    nearer those of a date seen empty than ``1 / sharpness`` of their distance to those of any
    other present date cannot be called present; nor, in haze, absent. None when the object is then
    present on no observed date or on every one (as :func:`doubt_absence`).
    """
    x = np.asarray(contrasts, np.float64)
    empty = states.observed & ~states.present
    hazy = np.flatnonzero(states.present & ~surely_seen)
    if not (empty.any() and hazy.size):
        return states
    present, observed = states.present.copy(), states.observed.copy()
    for t in hazy:
        others = states.present & surely_seen
        others[t] = False
        if not others.any():
            continue
        d_empty = float(np.linalg.norm(x[empty] - x[t], axis=1).min())
        d_present = float(np.linalg.norm(x[others] - x[t], axis=1).min())
        if d_empty * sharpness <= d_present:
            present[t] = observed[t] = False
    if not present.any() or present.sum() == observed.sum():
        return None
    return replace(states, present=present, observed=observed)


def union(cands: list[Candidate]) -> Candidate:
    """One candidate of several: the union of their footprints and their regions."""
    r0 = min(c.row0 for c in cands)
    c0 = min(c.col0 for c in cands)
    r1 = max(c.row0 + c.footprint.shape[0] for c in cands)
    c1 = max(c.col0 + c.footprint.shape[1] for c in cands)
    foot = np.zeros((r1 - r0, c1 - c0), bool)
    for c in cands:
        h, w = c.footprint.shape
        foot[c.row0 - r0:c.row0 - r0 + h, c.col0 - c0:c.col0 - c0 + w] |= c.footprint
    regions = sorted((r for c in cands for r in c.regions), key=lambda r: (r.date, r.row0, r.col0))
    return Candidate(r0, c0, foot, regions)


def touching(a: Candidate, b: Candidate, gap_px: int) -> bool:
    """Whether two footprints come within ``gap_px`` pixels of each other (chessboard distance
    between their nearest pixels; 1: touching)."""
    pad = gap_px + 1
    r0, c0 = min(a.row0, b.row0) - pad, min(a.col0, b.col0) - pad
    r1 = max(a.row0 + a.footprint.shape[0], b.row0 + b.footprint.shape[0]) + pad
    c1 = max(a.col0 + a.footprint.shape[1], b.col0 + b.footprint.shape[1]) + pad
    if (a.row0 - b.row0 - b.footprint.shape[0] > gap_px or b.row0 - a.row0 - a.footprint.shape[0] > gap_px
            or a.col0 - b.col0 - b.footprint.shape[1] > gap_px or b.col0 - a.col0 - a.footprint.shape[1] > gap_px):
        return False
    canvas = np.zeros((r1 - r0, c1 - c0), np.uint8)
    ha, wa = a.footprint.shape
    canvas[a.row0 - r0:a.row0 - r0 + ha, a.col0 - c0:a.col0 - c0 + wa][a.footprint] = 1
    grown = cv2.dilate(canvas, np.ones((2 * gap_px + 1, 2 * gap_px + 1), np.uint8)) if gap_px > 0 else canvas
    hb, wb = b.footprint.shape
    return bool(grown[b.row0 - r0:b.row0 - r0 + hb, b.col0 - c0:b.col0 - c0 + wb][b.footprint].any())


def same_object_groups(keys: list[tuple[int, ...]], cands: list[Candidate], gap_px: int,
                       joined: Callable[[int, int], bool] | None = None) -> list[list[int]]:
    """Groups of items (one per track: its present dates and its candidate) that are one object:
    the same dates exactly, footprints within ``gap_px`` and, when given, ``joined(i, j)``
    (transitively). Groups in item order."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_key: dict[tuple[int, ...], list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    for items in by_key.values():
        for x in range(len(items)):
            for y in range(x + 1, len(items)):
                i, j = items[x], items[y]
                if root(i) != root(j) and touching(cands[i], cands[j], gap_px) and (joined is None or joined(i, j)):
                    parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return [groups[r] for r in sorted(groups)]


def level_changes(value: np.ndarray, run: list[int], min_separation: float, sharpness: float) -> list[int]:
    """Dates of a run of presence on which the object changed: its values fall into two levels
    (:func:`two_levels`; at least ``min_separation`` apart and ``sharpness`` times the spread within
    them), and the level differs from that of the previous present date. A crane run out over a
    moored ship for three days: ``changed`` when it appears and when it is gone."""
    v = np.asarray([value[t] for t in run], np.float64)
    if v.size < 2 or not np.isfinite(v).all():
        return []
    cut, lo, hi, spread = two_levels(v)
    gap = hi - lo
    if not (gap >= min_separation and (not spread > 0 or gap >= sharpness * spread)):
        return []
    high = v > cut
    return [run[k] for k in range(1, len(run)) if high[k] != high[k - 1]]


def handovers(contrasts: np.ndarray, run: list[int], observed: np.ndarray, min_separation: float,
              sharpness: float) -> list[int]:
    """Dates of a run of presence on which another object stands where one stood before the
    unobserved dates just ahead of them: a vessel left and another moored while the berth was under
    cloud.

    The run's contrasts (``(n, bands)``, noise sigmas; NaN on dates that cannot be judged, such as
    a footprint in a cloud's haze) before and after such a gap form two groups whose means lie at
    least ``min_separation`` apart and ``sharpness`` times the scatter within them; the clearest
    such gap splits the run, then each part is tried again. A hull seen on both sides of the gap
    keeps its contrast within its scatter. The scatter needs two degrees of freedom: with fewer
    than four dates that can be judged the run is not split.
    """
    x = np.asarray(contrasts, np.float64)
    judged = [t for t in run if np.isfinite(x[t]).all()]
    best, best_ratio = None, 1.0
    for k in range(1, len(run)):
        if observed[run[k - 1] + 1:run[k]].all():
            continue  # no unobserved date between them: a change seen happening is an event, not a new object
        a, b = x[[t for t in judged if t < run[k]]], x[[t for t in judged if t >= run[k]]]
        if len(judged) < 4 or not (len(a) and len(b)):
            continue
        d = float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)))
        within = float(((a - a.mean(axis=0)) ** 2).sum() + ((b - b.mean(axis=0)) ** 2).sum())
        spread = math.sqrt(within / (len(judged) - 2))
        ratio = d / (sharpness * spread) if spread > 0 else math.inf
        if d >= min_separation and ratio >= best_ratio:
            best, best_ratio = k, ratio
    if best is None:
        return []
    return handovers(x, run[:best], observed, min_separation, sharpness) + [run[best]] + \
        handovers(x, run[best:], observed, min_separation, sharpness)


def covered_dates(cands: list[Candidate], n_dates: int, max_ratio: float, min_share: float = 0.5) -> np.ndarray:
    """(G, n) bool: on that date, a region of another candidate more than ``max_ratio`` times the
    candidate's size covers at least ``min_share`` of its footprint.

    Under a haze patch past a cloud's edge, or a large hull moored over it, an object cannot be
    seen: that date tells neither its presence nor its absence.
    """
    areas = np.array([int(c.footprint.sum()) for c in cands])
    out = np.zeros((len(cands), n_dates), bool)
    for k, big in enumerate(cands):
        for reg in big.regions:
            r0, c0, r1, c1 = reg.bbox
            for g, cd in enumerate(cands):
                if g == k or reg.area_px <= max_ratio * areas[g] or out[g, reg.date]:
                    continue
                h, w = cd.footprint.shape
                rr0, cc0 = max(r0, cd.row0), max(c0, cd.col0)
                rr1, cc1 = min(r1, cd.row0 + h), min(c1, cd.col0 + w)
                if rr1 <= rr0 or cc1 <= cc0:
                    continue
                inter = (reg.mask[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
                         & cd.footprint[rr0 - cd.row0:rr1 - cd.row0, cc0 - cd.col0:cc1 - cd.col0]).sum()
                out[g, reg.date] = inter >= min_share * areas[g]
    return out


def overlap_px(a: Candidate, b: Candidate) -> int:
    """Pixels two footprints share."""
    ha, wa = a.footprint.shape
    hb, wb = b.footprint.shape
    r0, c0 = max(a.row0, b.row0), max(a.col0, b.col0)
    r1, c1 = min(a.row0 + ha, b.row0 + hb), min(a.col0 + wa, b.col0 + wb)
    if r1 <= r0 or c1 <= c0:
        return 0
    return int((a.footprint[r0 - a.row0:r1 - a.row0, c0 - a.col0:c1 - a.col0]
                & b.footprint[r0 - b.row0:r1 - b.row0, c0 - b.col0:c1 - b.col0]).sum())


def parts_of_larger(objs: list[tuple[Candidate, set[int]]], min_inside: float = 0.5,
                    min_shared_dates: float = 0.8) -> set[int]:
    """Indexes of objects that are parts of a larger one: at least ``min_inside`` of the footprint
    inside the larger's, and at least ``min_shared_dates`` of its dates among the larger's (a deck
    house of a moored hull is the hull; a hut under a one-date haze patch is not the patch)."""
    areas = [int(c.footprint.sum()) for c, _ in objs]
    out = set()
    for i, (ci, di) in enumerate(objs):
        for j, (cj, dj) in enumerate(objs):
            if j == i or areas[j] <= areas[i] or not di:
                continue
            if len(di & dj) >= min_shared_dates * len(di) and overlap_px(ci, cj) >= min_inside * areas[i]:
                out.add(i)
                break
    return out
