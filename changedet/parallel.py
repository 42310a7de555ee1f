"""Run independent per-window work on a pool of threads, results in input order.

numpy, OpenCV and onnxruntime release the GIL in their kernels, so threads use every core
without copying windows between processes. Results come back in the order of the inputs
whatever the worker count, so outputs do not depend on thread timing.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """Cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(n: int | None) -> int:
    """The number of worker threads for ``n``: 0 or None = every core, otherwise ``n`` (at least 1)."""
    if n is None or n <= 0:
        return cpu_count()
    return int(n)


def library_threads(workers: int) -> int:
    """Threads each library call (OpenCV, onnxruntime) may use so that workers x threads ~ cores."""
    return max(1, cpu_count() // max(1, workers))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, yielded in input order.

    ``items`` is consumed lazily in the caller's thread (so it may read files the workers must
    not touch), with at most ``ahead`` (default ``2 * workers``) results pending, which keeps
    memory bounded. With one worker nothing is threaded. An exception in ``fn`` is raised at
    that item's turn; pending work is cancelled.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    limit = max(1, ahead or 2 * workers)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="changedet") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


@contextmanager
def capped_library_threads(workers: int) -> Iterator[int]:
    """Cap OpenCV's threads while ``workers`` threads run; yields the threads each library call may use.

    OpenCV's setting is process-wide and restored on exit; onnxruntime takes the yielded count
    per session (``model.threads`` = 0).
    """
    import cv2

    per = library_threads(workers)
    before = cv2.getNumThreads()
    cv2.setNumThreads(per if workers > 1 else before)
    try:
        yield per
    finally:
        cv2.setNumThreads(before)
