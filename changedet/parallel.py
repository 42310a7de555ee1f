"""Run independent per-window work on a pool of threads, results in input order.

numpy, OpenCV and onnxruntime release the GIL in their kernels, so threads use every core
without copying windows between processes. Results come back in the order of the inputs
whatever the worker count, so outputs do not depend on thread timing.

The whole-scene passes of the decision stages (labelling by windows, masks by windows) take their
thread count from :func:`window_threads`, set once around a stage, rather than through every
function between the stage and the window loop: :func:`map_windows` is :func:`ordered_map` with it
(one thread, i.e. a plain loop, unless set). The setting is per thread of the caller, so a pass
called from inside a worker runs on that worker alone, never as a pool within a pool.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

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


@contextmanager
def capped_blas_threads(workers: int) -> Iterator[int]:
    """Cap BLAS's threads (numpy's matrix products) while ``workers`` threads run; yields the cap.

    OpenBLAS runs every large product on a thread per core, which then spin while they wait for
    the next: from two workers at once, four threads share two cores (measured on the learned
    stage at 2745² with 2 workers: 17 % more CPU time for the same work). The setting is
    process-wide and restored on exit. The numbers do not change: OpenBLAS splits a product's rows
    and columns between its threads, never one element's sum.
    """
    per = library_threads(workers)
    if workers <= 1:
        yield per
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=per, user_api="blas"):
        yield per


_WINDOW_THREADS: ContextVar[int] = ContextVar("changedet_window_threads", default=1)


@contextmanager
def window_threads(workers: int) -> Iterator[int]:
    """Within this block, :func:`map_windows` (in this thread) runs on ``workers`` threads; yields it."""
    n = max(1, int(workers))
    token = _WINDOW_THREADS.set(n)
    try:
        yield n
    finally:
        _WINDOW_THREADS.reset(token)


def map_windows(fn: Callable[[T], R], items: Iterable[T], ahead: int | None = None) -> Iterator[R]:
    """:func:`ordered_map` on the threads :func:`window_threads` set (one thread outside it)."""
    return ordered_map(fn, items, _WINDOW_THREADS.get(), ahead)


class Later(Generic[R]):
    """``fn(*args)`` on a thread of its own, started at once: work that overlaps the run's next stages
    (hashing the inputs, encoding a finished raster). Calling the object waits for it and returns its
    result, or raises its exception; :meth:`wait` only waits.

    The thread is a daemon: a process that stops on an error does not wait for work it no longer
    needs. Whoever owns what the work writes waits for it before removing it.
    """

    def __init__(self, fn: Callable[..., R], *args: Any, name: str = "changedet-later") -> None:
        self._result: R | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., R], args: tuple[Any, ...]) -> None:
        try:
            self._result = fn(*args)
        except BaseException as exc:  # handed to the caller at its turn
            self._error = exc

    def wait(self) -> None:
        self._thread.join()

    def __call__(self) -> R:
        self.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
