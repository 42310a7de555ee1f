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


def decide_states(contrasts: np.ndarray, observed: np.ndarray, stood_out: np.ndarray,
                  min_separation: float, side: np.ndarray | None = None, rounds: int = 5) -> States | None:
    """Which dates show a candidate's object state.

    Parameters
    ----------
    contrasts : (n, bands) region-minus-ring contrast per date (noise sigmas).
    observed : (n,) bool, the footprint observable on that date.
    stood_out : (n,) bool, the candidate had a region that stood out from the background that date.
    min_separation : the two states' mean contrasts must differ by this much (else None: not an object).
    side : (n,) distance to the most similar side of the ring (:func:`nearest_side`); the object
        state is the one farther from it (None: the one whose whole-ring contrast is larger).

    Notes
    -----
    Two-state clustering (k-means, k = 2) of the observed dates' contrast vectors, started from the
    split into dates that stood out from the background and the rest (or, when every date stood
    out, as when the object is there on half the dates, from the two most different dates). The
    object state is the one whose region differs more from the side of its ring it most resembles:
    an empty berth is water like the open water beside it (though not like the quay on its other
    side), a hut differs from the ground all round it. A structure present on most dates
    is in the background, so its early, empty dates are the ones that stood out; the clustering
    tells them apart all the same.
    """
    obs = observed & np.isfinite(contrasts).all(axis=1)
    if not (obs & stood_out).any() or obs.sum() < 2:
        return None
    x = np.where(obs[:, None], contrasts, 0.0)
    a, b = obs & stood_out, obs & ~stood_out
    if b.any():
        c1, c2 = x[a].mean(axis=0), x[b].mean(axis=0)
    else:
        norm = np.where(obs, np.linalg.norm(x, axis=1), np.nan)
        c1, c2 = x[int(np.nanargmax(norm))], x[int(np.nanargmin(norm))]
    in1 = a
    for _ in range(rounds):
        in1 = obs & (np.linalg.norm(x - c1, axis=1) <= np.linalg.norm(x - c2, axis=1))
        in2 = obs & ~in1
        if not in1.any() or not in2.any():
            return None
        c1, c2 = x[in1].mean(axis=0), x[in2].mean(axis=0)
    sep = float(np.sqrt(np.mean((c1 - c2) ** 2)))
    if sep < min_separation:
        return None
    if side is not None and np.isfinite(side[in1]).any() and np.isfinite(side[obs & ~in1]).any():
        one_is_object = float(np.nanmean(side[in1])) >= float(np.nanmean(side[obs & ~in1]))
    else:
        one_is_object = float(np.linalg.norm(c1)) >= float(np.linalg.norm(c2))
    present = in1 if one_is_object else obs & ~in1
    # the object is new to the background when the dates that stood out are (mostly) its dates
    obj_new = int((present & stood_out).sum()) >= int((~present & obs & stood_out).sum())
    return States(present, obs, sep, obj_new)
