"""Objects of a series: regions that stand out on some dates, linked into candidates, and per date
whether each candidate is in its "object" or its "empty" state (pure functions on arrays)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

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
    of the two with; the candidate's footprint is the union of its regions.
    """

    shape: tuple[int, int]
    min_overlap: float
    ids: np.ndarray = field(init=False)
    parent: list[int] = field(default_factory=lambda: [0])
    area: list[int] = field(default_factory=lambda: [0])
    members: list[list[int]] = field(default_factory=lambda: [[]])
    regions: list[Region] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = np.zeros(self.shape, np.int32)

    def _root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def add(self, reg: Region) -> None:
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
        merged = [g for g, k in sorted(overlap.items()) if k >= self.min_overlap * min(reg.area_px, self.area[g])]
        fresh = int(counts[vals == 0].sum()) if (vals == 0).any() else 0
        self.area.append(fresh + sum(self.area[g] for g in merged))
        for g in merged:
            self.parent[g] = new
            self.members[new].extend(self.members[g])
            self.members[g] = []
        # paint the region where it is free; pixels of candidates it did not join stay theirs
        view[reg.mask & (view == 0)] = new

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

    The ring is cut into ``sectors`` angular sectors about the region's centre; the region's mean is
    compared with each sector's mean. An empty berth is water like the open water on one side of
    it, bare ground like the ground on one side; a hull, a roof or a trench differs from every side.
    """
    if not inside.any() or not around.any():
        return float("nan")
    rows, cols = np.nonzero(inside)
    cy, cx = rows.mean(), cols.mean()
    rr, cc = np.nonzero(around)
    sector = ((np.arctan2(rr - cy, cc - cx) + np.pi) / (2 * np.pi) * sectors).astype(int) % sectors
    mean_in = image[:, inside].mean(axis=1)
    sig = np.asarray(band_sigma, np.float64)
    best = float("nan")
    vals = image[:, rr, cc]
    for k in range(sectors):
        sel = sector == k
        if sel.sum() < min_px:
            continue
        d = float(np.sqrt(np.mean(((mean_in - vals[:, sel].mean(axis=1)) / sig) ** 2)))
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


def two_levels(values: np.ndarray) -> tuple[float, float, float]:
    """The split of 1-D values into a low and a high group that maximises the between-group variance
    (Otsu's criterion on the sorted values): (threshold, low mean, high mean)."""
    v = np.sort(np.asarray(values, np.float64))
    n = v.size
    if n < 2:
        return float("inf"), float(v.mean()) if n else 0.0, float("nan")
    csum = np.cumsum(v)
    k = np.arange(1, n)  # low group: the k smallest
    lo = csum[:-1] / k
    hi = (csum[-1] - csum[:-1]) / (n - k)
    best = int(np.argmax(k * (n - k) * (hi - lo) ** 2))
    return float((v[best] + v[best + 1]) / 2.0), float(lo[best]), float(hi[best])


def lowest_level(values: np.ndarray, min_separation: float) -> tuple[float, float] | None:
    """The threshold above the lowest level of 1-D values, and the separation at that split.

    :func:`two_levels` splits the values; while its two groups are at least ``min_separation``
    apart, the low group is split again. A berth used by a small and a large hull has three levels
    (empty, small, large); the empty one is the lowest. None when the values do not split at all.
    """
    v = np.sort(np.asarray(values, np.float64))
    found = None
    while v.size >= 2:
        cut, lo, hi = two_levels(v)
        if not hi - lo >= min_separation:
            break
        found = (cut, hi - lo)
        v = v[v <= cut]
    return found


def decide_states(contrasts: np.ndarray, observed: np.ndarray, stood_out: np.ndarray,
                  min_separation: float, side: np.ndarray | None = None) -> States | None:
    """Which dates show a candidate's object state.

    Parameters
    ----------
    contrasts : (n, bands) region-minus-ring contrast per date (noise sigmas).
    observed : (n,) bool, the footprint observable on that date.
    stood_out : (n,) bool, the candidate had a region that stood out from the background that date.
    min_separation : the two states must differ by this much (noise sigmas; else None: not an object).
    side : (n,) distance to the most similar side of the ring (:func:`nearest_side`; None: the
        whole-ring contrast's norm is used instead).

    Notes
    -----
    The state of a date is read from the region against the side of its ring it most resembles:
    an empty berth is water like the open water beside it (not like the quay on its other side),
    bare ground like the ground beside it, while a hull, a roof or a trench differs from every side.
    The observed dates' values are split above their lowest level (:func:`lowest_level`): the empty
    state; every date above it shows the object.
    This holds whether the object is rare (a vessel: the dates that stood out from the background
    are its dates) or there most of the time (a hut built early is in the background, and its empty
    early dates are the ones that stood out), and for a berth used by hulls of several sizes.
    """
    value = side if side is not None else np.linalg.norm(np.nan_to_num(contrasts), axis=1)
    obs = observed & np.isfinite(value) & np.isfinite(contrasts).all(axis=1)
    if not (obs & stood_out).any() or obs.sum() < 2:
        return None
    split = lowest_level(value[obs], min_separation)
    if split is None:
        return None
    cut, sep = split
    present = obs & (value > cut)
    if not present.any() or present.sum() == obs.sum():
        return None
    # the object is new to the background when the dates that stood out are (mostly) its dates
    obj_new = int((present & stood_out).sum()) >= int((~present & obs & stood_out).sum())
    return States(present, obs, float(sep), obj_new)
