"""Tracks: one object over the dates, with when it was first and last seen and its events (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Track:
    """One object on successive observed dates (date indexes into the series)."""

    candidate: int
    present: list[int]
    unobserved: list[int]
    events: list[tuple[str, int]]
    cls: str = "other"
    confidence: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return self.present[0]

    @property
    def last(self) -> int:
        return self.present[-1]


def split_runs(present: np.ndarray, observed: np.ndarray) -> list[list[int]]:
    """Runs of present dates not interrupted by an observed absent date (unobserved dates do not break a run)."""
    runs: list[list[int]] = []
    cur: list[int] = []
    for t in range(len(present)):
        if not observed[t]:
            continue
        if present[t]:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def track_events(run: list[int], observed: np.ndarray, changed: list[int] = ()) -> list[tuple[str, int]]:
    """``appeared`` at the first date when an earlier date was observed without it; ``departed`` at the
    first observed date after the last without it; ``changed`` at the given dates."""
    events: list[tuple[str, int]] = []
    if observed[:run[0]].any():
        events.append(("appeared", run[0]))
    events.extend(("changed", t) for t in changed)
    after = np.flatnonzero(observed[run[-1] + 1:])
    if after.size:
        events.append(("departed", run[-1] + 1 + int(after[0])))
    return events


def unobserved_within(run: list[int], observed: np.ndarray) -> list[int]:
    """Dates between the first and last sighting, and before the departure was seen, when the object
    could not be seen."""
    after = np.flatnonzero(observed[run[-1] + 1:])
    end = run[-1] + 1 + int(after[0]) if after.size else len(observed)
    return [t for t in range(run[0], end) if not observed[t]]


def _cut(run: list[int], before: list[int]) -> list[list[int]]:
    """``run`` cut into parts that start at its first date and at each date of ``before``."""
    starts = [0] + [run.index(t) for t in before]
    return [run[a:b] for a, b in zip(starts, starts[1:] + [len(run)])]


def tracks_of(candidate: int, present: np.ndarray, observed: np.ndarray,
              changed: list[int] = (), splits: Callable[[list[int]], list[int]] = lambda run: []) -> list[Track]:
    """The tracks of one candidate: one per run of presence (:func:`split_runs`), each run cut again
    before the dates ``splits`` gives for it (another object in the same place)."""
    out = []
    for run in (part for whole in split_runs(present, observed) for part in _cut(whole, splits(whole))):
        ch = [t for t in changed if run[0] < t <= run[-1]]
        out.append(Track(candidate, run, unobserved_within(run, observed), track_events(run, observed, ch)))
    return out
