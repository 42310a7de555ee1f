"""Run a batch's sites in parallel on dask.distributed: a local cluster of N processes, or an existing one.

Each site is one task (:func:`changedet.batch.run_site`), submitted with ``client.submit`` and gathered
with ``as_completed``; the records come back in manifest order, so ``batch_summary.json`` is the
serial batch's. A site's outputs do not depend on where it ran: the site runs the same
:func:`~changedet.pipeline.detect_pair`, with its library threads capped at one (results do not depend
on the thread count) so that N sites on N cores do not oversubscribe them.

A local cluster's workers fork from a fork server that imported what a site needs while the batch
read its manifest (:func:`prestart`): they start warm, and the imports are paid once, not per worker.

``distributed`` is imported here only, when a batch asks for more than one worker or a scheduler.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, OutputWriteError

if TYPE_CHECKING:
    from .batch import Site
    from .config import Config

log = logging.getLogger(__name__)

#: seconds to reach a scheduler before giving up: a wrong address fails at once, not after dask's 30 s
CONNECT_TIMEOUT_S = 3
#: environment of a local cluster's workers: one thread for every library a site uses
SINGLE_THREAD_ENV = {"CHANGEDET_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1", "GDAL_NUM_THREADS": "1"}
#: a local cluster's dask scratch folder (workers' and scheduler's), by id of the cluster: removed when it closes
_SCRATCH: dict[int, Any] = {}
#: what a site imports, imported once by the fork server the local workers fork from (about 2 s of a core);
#: a name this version of a library lacks is skipped. onnxruntime is not here: importing it starts a
#: thread, and a process with threads must not fork (it imports in 0.05 s)
WORKER_PRELOAD = ("distributed", "changedet.batch", "changedet.cluster", "changedet.series", "pyproj", "shapely",
                  "pystac.extensions.projection", "skimage.feature", "skimage.measure._find_contours",
                  "skimage.segmentation._watershed")

#: the start of the name of multiprocessing's temporary folder (``multiprocessing.util.get_temp_dir``)
MP_TEMP_PREFIX = "pymp-"

#: ``(done, failed, running, total)`` after every finished site
CountsFn = Callable[[int, int, int, int], None]


def prestart() -> bool:
    """Start the fork server a local cluster's workers fork from, with :data:`WORKER_PRELOAD` imported in it.

    Spawned workers would each import what a site needs (about 2 s of a core each, then the first
    site's own imports); forked from this server they start with it done, once for all of them. The
    server imports in the background: call this as soon as a local cluster is wanted, and this
    process's own work (its imports, the manifest) runs beside it. :func:`connect` calls it too.
    The server stays for the life of this process (Python's ``multiprocessing``), for the next cluster.

    Returns False off Linux, or when the server cannot start (its socket lives in TMPDIR, and a
    TMPDIR longer than about 75 characters makes the path too long for a Unix socket): the workers
    are then spawned (Windows has no fork server, and on macOS a child forked after numpy loaded
    Apple's Accelerate may hang).
    """
    import multiprocessing
    import sys

    if not sys.platform.startswith("linux") or "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    try:
        with _environ(SINGLE_THREAD_ENV):  # the libraries read their thread counts when the server imports them
            forkserver.ensure_running()  # no-op when it runs already
    except OSError as exc:  # its socket's path in TMPDIR is longer than AF_UNIX allows (108 bytes)
        log.info("no fork server (%s): the workers are spawned", exc)
        _mark_server_folder()  # the folder made for the socket goes like a killed batch's
        return False
    return True


def _mark_server_folder() -> None:
    """Mark multiprocessing's temporary folder (the fork server's socket) with this process as its owner.

    ``multiprocessing`` removes it at exit; a batch killed with ``kill -9`` cannot, and the next local
    cluster removes it then (:func:`connect`), as it does dask's scratch. Folders of that name without
    changedet's owner record belong to other programs and are left alone.
    """
    from multiprocessing import util

    from .io import OWNER_FILE, mark_owner

    folder = Path(util.get_temp_dir())
    if folder.name.startswith(MP_TEMP_PREFIX) and not (folder / OWNER_FILE).exists():
        mark_owner(folder)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block, as it was after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def connect(scheduler: str | None, workers: int) -> Any:
    """A ``distributed.Client``: to the cluster at ``scheduler``, or to a new local one of ``workers`` processes.

    Raises :class:`ConfigError` (one line, with the address and the fix) when the scheduler cannot be
    reached within :data:`CONNECT_TIMEOUT_S` or its address is malformed.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency; an install without it is broken
        raise ConfigError("--workers/--scheduler need the 'distributed' package; pip install distributed") from None
    if not logging.getLogger("distributed").isEnabledFor(logging.INFO - 1):  # dask's INFO lines only with -vv
        logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler is not None:
        return _client_at(scheduler, Client)
    import dask

    from .io import _ScratchDir, sweep_dead_runs, sweep_dead_scratch

    # dask's scratch (lock files, spilled data) in a folder of this run, marked with its owner: removed
    # when the cluster closes, and a killed batch's is swept by the next run (nothing left in TMPDIR)
    sweep_dead_scratch()
    sweep_dead_runs(Path(tempfile.gettempdir()), lambda name: name.startswith(MP_TEMP_PREFIX))
    scratch = _ScratchDir()
    try:
        method = "forkserver" if prestart() else "spawn"
        if method == "forkserver":
            _mark_server_folder()
        t0 = time.perf_counter()
        # dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers; any value turns off glibc's dynamic mmap
        # threshold, and every large array is then mapped and faulted in afresh: a site ran 1.5x slower.
        # A worker holds one site at a time (dask's default sends it a second to queue): the next site goes
        # to the first worker free, the largest first (run_sites)
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                              "distributed.scheduler.worker-saturation": 1.0,
                              "distributed.worker.multiprocessing-method": method,
                              "temporary-directory": str(scratch.path)}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   scheduler_kwargs={"dashboard": False}, silence_logs=logging.ERROR,
                                   env=SINGLE_THREAD_ENV, local_directory=str(scratch.path))
    except BaseException:
        scratch.close()
        raise
    _SCRATCH[id(cluster)] = scratch
    log.info("local cluster of %d workers up in %.2f s", workers, time.perf_counter() - t0)
    return Client(cluster, set_as_default=False)


def _client_at(address: str, client_class: Any) -> Any:
    """A client of the scheduler at ``address``, or :class:`ConfigError` within about :data:`CONNECT_TIMEOUT_S`."""
    fix = "give the address 'dask scheduler' prints, e.g. tcp://10.0.0.5:8786, or use --workers N for a local cluster"
    if not _well_formed(address):  # checked first: a Client made on a bad address complains again when collected
        raise ConfigError(f"--scheduler {address}: not a dask scheduler address; {fix}")
    reason = _unreachable(address)
    if reason is None:
        try:
            return client_class(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - whatever answered there is not a dask scheduler we can use
            reason = f"no dask scheduler answered ({type(exc).__name__})"
        _collect_quietly()  # the half-made Client's __del__ would print a traceback at exit
    raise ConfigError(f"--scheduler {address}: {reason}; start one ('dask scheduler') or {fix}")


def _collect_quietly() -> None:
    """Collect garbage with unraisable-exception reports off (a failed Client's ``__del__`` times out)."""
    import gc
    import sys

    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _unreachable(address: str) -> str | None:
    """Why nothing can answer at a tcp address (refused, no such host, timed out); None when something listens."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, loc = parse_address(address, strict=False)
    if scheme not in ("tcp", "tls"):
        return None  # dask's own connect tells
    host, port = parse_host_port(loc)
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=CONNECT_TIMEOUT_S):
            return None
    except socket.gaierror:
        return f"no such host {host!r}"
    except TimeoutError:
        return f"nothing answered within {CONNECT_TIMEOUT_S} s"
    except OSError as exc:
        return f"nothing listens there ({exc.strerror or type(exc).__name__})"


def _well_formed(address: str) -> bool:
    """True when ``address`` is one dask can parse: a known scheme, and for tcp/tls a host and a port 1-65535."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, loc = parse_address(address, strict=False)
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            host, port = parse_host_port(loc)
            return bool(host) and 0 < int(port) < 65536
        return True
    except (ValueError, TypeError):
        return False


def close(client: Any) -> None:
    """Close ``client`` and the local cluster it started (an existing cluster is left running)."""
    t0 = time.perf_counter()
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()
        scratch = _SCRATCH.pop(id(cluster), None)
        if scratch is not None:
            scratch.close()
    log.info("cluster closed in %.2f s", time.perf_counter() - t0)


def _site_task(site: Site, out: Path, cfg: Config) -> dict[str, Any]:
    """One site on a worker, its library threads capped at one (a worker may hold several sites at once)."""
    import cv2

    from .batch import run_site

    os.environ["CHANGEDET_THREADS"] = "1"  # onnxruntime's intra-op threads (learned.features.default_threads)
    cv2.setNumThreads(1)
    return run_site(site, out, cfg, None)


def input_bytes(site: Site) -> int:
    """The size of a site's two input files, a guess of its work; 0 for a remote input or a missing file."""
    from .stac import is_remote

    total = 0
    for path in (site.before, site.after):
        if not is_remote(path):
            try:
                total += os.path.getsize(path)
            except OSError:
                pass  # the site fails on its worker, with the message a serial batch gives
    return total


def run_sites(client: Any, sites: list[Site], out_dir: Path, configs: dict[str, Config],
              site_callback: Callable[[str, dict[str, Any]], None] | None = None,
              counts: CountsFn | None = None) -> list[dict[str, Any]]:
    """Run every site on ``client``'s cluster; their records in the order of ``sites``.

    A site whose worker died (killed, out of memory) is recorded as ``error``; an
    :class:`~changedet.errors.OutputWriteError` (the output disk) stops the batch, as serially.
    """
    from distributed import as_completed

    t0 = time.perf_counter()
    run = uuid.uuid4().hex[:12]  # keys unique to this batch: a shared scheduler would merge equal keys of two batches
    # the largest first (dask runs higher priorities first): a long site left for the end keeps one worker
    # busy while the others idle. The keys make one task group: dask queues a group of more tasks than
    # twice the threads on the scheduler and hands them out as workers free up (connect: one at a time)
    futures = {client.submit(_site_task, s, out_dir / s.name, configs[s.name], pure=False, priority=input_bytes(s),
                             key=(f"changedet-batch-{run}", s.name)): s for s in sites}
    slots = max(1, sum(client.nthreads().values()))
    records: dict[str, dict[str, Any]] = {}
    done = failed = 0
    if counts:
        counts(0, 0, min(slots, len(sites)), len(sites))
    try:
        for fut in as_completed(list(futures), loop=client.loop):
            site = futures[fut]
            try:
                rec = fut.result()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - a worker lost mid-site fails that site alone
                if isinstance(exc, OutputWriteError):
                    raise
                rec = {"name": site.name, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                       "out_dir": str(out_dir / site.name), "n_detections": None, "changed_area_m2": None,
                       "seconds": None}
            records[site.name] = rec
            log.info("site %s: %s in %s s, done %.2f s after the first was sent", site.name, rec["status"],
                     rec["seconds"], time.perf_counter() - t0)
            done += 1
            failed += rec["status"] in ("failed", "error")
            if site_callback:
                site_callback(site.name, rec)
            if counts:
                counts(done, failed, min(slots, len(sites) - done), len(sites))
    finally:
        for fut in futures:
            fut.cancel()
    return [records[s.name] for s in sites]
