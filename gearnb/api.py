"""The module-level API: ``gearnb.map``, ``submit``, ``connect``, ``local`` and friends.

With no set-up, the first call starts a local cluster (bundled job server plus one worker
process per CPU) and later calls reuse it; while it starts, the map's progress panel (or, for
other calls, a line) says so. ``connect()`` - or GEARMAN_SERVERS together with GEARNB_KEY in
the environment - points them at existing job servers instead. Inside a task (a nested map)
they use the cluster running the task: its job server and key (:func:`~gearnb.pyexec.runner.task_cluster`).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from .cluster import LocalExecutor
from .executor import Executor, GearnbFuture
from .executor.mapping import PROGRESS_POLL
from .progress import ProgressTracker, StartNotice, make_progress, start_notice
from .pyexec.keys import load_key
from .pyexec.runner import report, task_cluster  # noqa: F401 - report is re-exported
from .visual.stream import TaskStream

_default: Executor | None = None
_lock = threading.Lock()
# In a forked child (multiprocessing.Pool with the fork start method): the parent's default
# executor, to connect to again - its client's I/O thread did not come along with the fork.
_inherited: Executor | None = None


def _forget_after_fork() -> None:
    global _default, _inherited, _lock
    _inherited, _default = _default, None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def connect(servers: str | list[str], key: bytes | str | None = None, *, key_file: str | None = None,
            ssl: Any = None, max_packet_size: int | str | None = None) -> Executor:
    """Use these job servers (and this cluster key) for the module-level calls.

    ``ssl``: a ``gearnb.tls.client_context(ca, cert, key)`` for job servers that speak TLS
    (every connection, the worker count and cancelling included). ``max_packet_size``: the
    largest job or result sent or taken (gearnb.limits; default ``GEARNB_MAX_PACKET_SIZE``,
    else the protocol's 4 GiB - 1).
    """
    global _default
    executor = Executor(servers, key, key_file=key_file, ssl=ssl, max_packet_size=max_packet_size)
    with _lock:
        old, _default = _default, executor
    if old is not None:
        old.shutdown(wait=False)
    return executor


def local(workers: int | None = None, **options: Any) -> LocalExecutor:
    """Start a local cluster (bundled server + ``workers`` processes); use it as a context manager.

    ``max_packet_size=`` (gearnb.limits) holds for the executor, its job server and workers."""
    return LocalExecutor(workers, **options)


def default_executor(starting: ProgressTracker | None = None) -> Executor:
    """The executor the module-level calls use, started on first use.

    Inside a task, the cluster running it (nested maps: no cluster of its own); in a forked
    child, its parent's; with GEARMAN_SERVERS and a key in the environment, those servers; else
    a local cluster, whose start ``starting`` (a map's progress panel) or a line reports."""
    global _default
    with _lock:
        if _default is None:
            cluster = task_cluster()
            if cluster is not None:
                _default = Executor(cluster.servers, cluster.key, ssl=cluster.ssl)
            elif _inherited is not None:  # a forked child: the parent's servers and key
                _default = Executor(_inherited.servers, _inherited._key, ssl=_inherited.ssl,
                                    crash_attempts=_inherited.crash_attempts,
                                    max_packet_size=_inherited.client.max_packet_size)
            elif os.environ.get("GEARMAN_SERVERS") and load_key():
                _default = Executor()
            else:
                _default = _start_local(starting)
        return _default


def _start_local(starting: ProgressTracker | None) -> LocalExecutor:
    notice = starting if starting is not None else start_notice()
    began = time.monotonic()
    executor = LocalExecutor(on_start=notice.starting if notice is not None else None)
    if isinstance(notice, StartNotice):
        n = executor.cluster.n_workers
        notice.close(f"gearnb: a local cluster of {n} worker{'s' if n != 1 else ''} started in "
                     f"{time.monotonic() - began:.1f} s ({executor.servers[0]})")
    return executor


def _for_map(fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], progress: Any) -> tuple[Executor, Any]:
    """The executor for a map, and its ``progress``: when the local cluster has to start
    first, the map's panel appears at once and says so."""
    if _default is not None or progress is False or (progress is not None and progress is not True):
        return default_executor(), progress
    try:
        total = min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        total = None
    label = getattr(fn, "__name__", None) or type(fn).__name__
    tracker = make_progress(progress, total=total, label=label, workers=1)
    return default_executor(starting=tracker), (tracker if tracker is not None else progress)


def last_task_stream() -> TaskStream:
    """The task stream of the latest map of the module-level calls: a bar per chunk on the
    lane of the worker that ran it, from the workers' own timings. Display it (SVG),
    ``.plot()`` for a matplotlib figure, ``.records`` for the data; also
    ``executor.last_task_stream`` on any Executor."""
    stream = _default.last_task_stream if _default is not None else None
    if stream is None:
        raise LookupError("no gearnb.map has run yet in this process: the task stream is that of the latest map")
    return stream


def shutdown() -> None:
    """Stop the default executor (and its local cluster, if it started one)."""
    global _default
    with _lock:
        old, _default = _default, None
    if old is not None:
        old.shutdown(wait=False)


def map(fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int | str = "auto", ordered: bool = True,
        timeout: float | None = None, retries: int = 0, priority: str = "normal", progress: Any = None,
        output_limit: int | None = None) -> list[Any]:
    """``[fn(*args) for args in zip(*iterables)]``, run on the workers. Returns a list.

    ``output_limit``: characters of each task's print() output shown (default 256 KiB; the
    rest is cut with a note)."""
    executor, progress = _for_map(fn, iterables, progress)
    return executor.gmap(fn, *iterables, chunksize=chunksize, ordered=ordered, timeout=timeout,
                         retries=retries, priority=priority, progress=progress, output_limit=output_limit)


def imap(fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any) -> Iterator[Any]:
    """Lazy, ordered; the input is consumed with a bounded window of jobs in flight."""
    options.setdefault("chunksize", 1)
    executor, options["progress"] = _for_map(fn, iterables, options.get("progress"))
    return executor.imap(fn, *iterables, **options)


def imap_unordered(fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any) -> Iterator[Any]:
    """Lazy, in completion order."""
    options.setdefault("chunksize", 1)
    executor, options["progress"] = _for_map(fn, iterables, options.get("progress"))
    return executor.imap_unordered(fn, *iterables, **options)


def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> GearnbFuture:
    """Run ``fn(*args, **kwargs)`` on a worker; returns a concurrent.futures.Future (awaitable)."""
    return default_executor().submit(fn, *args, **kwargs)


def call(function: str, data: Any = None, **options: Any) -> Any:
    """Call a plain Gearman function with msgpack data: ``gearnb.call("addition", [2, 3])``."""
    return default_executor().call(function, data, **options)


def as_completed(futures: Iterable[concurrent.futures.Future], timeout: float | None = None, *,
                 progress: Any = None) -> Iterator[concurrent.futures.Future]:
    """concurrent.futures.as_completed, with the progress panel (``progress=False``: none)."""
    futures = list(dict.fromkeys(futures))
    workers = _default.worker_count() if _default is not None else 1
    tracker = make_progress(progress, total=len(futures), label="as_completed", workers=workers)
    if tracker is None:
        yield from concurrent.futures.as_completed(futures, timeout)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(futures)
    tracker.submitted(len(pending))
    for future in futures:
        run = getattr(future, "run", None)
        if run is not None:
            run.progress = tracker  # its job's WORK_STATUS (gearnb.report) drives a task bar
    try:
        while pending:
            wait_for = PROGRESS_POLL if deadline is None else min(PROGRESS_POLL, deadline - time.monotonic())
            if wait_for <= 0:
                raise concurrent.futures.TimeoutError(f"{len(pending)} (of {len(futures)}) futures unfinished")
            done, pending = concurrent.futures.wait(pending, wait_for, concurrent.futures.FIRST_COMPLETED)
            for future in done:
                failed = not future.cancelled() and future.exception() is not None
                run = getattr(future, "run", None)
                tracker.finished(1, int(failed), run.job if run is not None else None)
            tracker.tick(force=bool(done))
            yield from done
    finally:
        tracker.close()


def wait(futures: Iterable[concurrent.futures.Future], timeout: float | None = None,
         return_when: str = concurrent.futures.ALL_COMPLETED) -> concurrent.futures._base.DoneAndNotDoneFutures:
    return concurrent.futures.wait(futures, timeout, return_when)
