"""Executor: a concurrent.futures.Executor that runs Python callables on Gearman workers.

``submit`` is a :class:`~gearnb.executor.runs.CallRun` (one call), ``map`` and its family
are :class:`~gearnb.executor.mapping.MapRun` s; both send their jobs through one
:class:`~gearnb.executor.calls.PyexecCalls`, so encoding, decoding, retries and cancelling
each exist once.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from ..addresses import ServerSpec
from ..admin import Admin
from ..client import Client
from ..pyexec.keys import load_key
from ..pyexec.signing import Signer
from ..pyexec.runner import PYEXEC
from ..pyexec.taskio import DEFAULT_OUTPUT_LIMIT
from ..visual.stream import TaskStream
from .calls import PyexecCalls
from .futures import GearnbFuture
from .mapping import MapRun
from .runs import DEFAULT_CRASH_ATTEMPTS, CallRun, cancel_calls

WORKER_COUNT_TTL = 5.0  # seconds a worker count from the admin protocol is trusted


class Executor(concurrent.futures.Executor):
    """Run callables on gearnb workers through Gearman job servers (gearmand or gearnb's).

    >>> ex = Executor("h1:4730,h2:4730", key=open("cluster.key").read())   # doctest: +SKIP
    >>> ex.submit(pow, 2, 10).result()                                      # doctest: +SKIP
    1024

    ``map`` keeps the concurrent.futures contract (an iterator); ``gmap``, ``imap`` and
    ``imap_unordered`` add chunking, retries, priorities and progress.
    """

    def __init__(self, servers: ServerSpec = None, key: bytes | str | None = None, *,
                 key_file: str | None = None, function: str = PYEXEC, show_output: bool = True,
                 ssl: Any = None, crash_attempts: int = DEFAULT_CRASH_ATTEMPTS,
                 output_limit: int = DEFAULT_OUTPUT_LIMIT, max_packet_size: int | str | None = None) -> None:
        resolved = load_key(key, key_file)
        # A task whose worker process dies (exits, segfaults, is killed) is tried this many
        # times in all, each time in a fresh process, then fails with gearnb.WorkerDied.
        self.crash_attempts = crash_attempts
        self._key = resolved  # for a forked child's executor (gearnb.api)
        # ssl: gearnb.tls.client_context(...), for every connection (jobs, worker count, cancel);
        # max_packet_size: gearnb.limits.
        self.client = Client(servers, ssl=ssl, max_packet_size=max_packet_size)
        self.servers = self.client.servers
        self.ssl = ssl
        # Without a key, plain Gearman calls (call()) still work; Python callables need one.
        # show_output: tasks' print() and stderr in the calling cell, each task's cut at
        # output_limit characters (a map's or submit's output_limit= overrides it).
        self.calls = PyexecCalls(self.client, Signer(resolved) if resolved else None, function.encode(),
                                 show_output=show_output, ssl=ssl, output_limit=output_limit)
        # The task stream of the latest map (from its start): which worker ran which chunk, when.
        self.last_task_stream: TaskStream | None = None
        self.function = self.calls.function
        self._shutdown = False
        self._futures: set[GearnbFuture] = set()
        self._lock = threading.Lock()
        self._workers_cache: tuple[float, int] = (0.0, 0)

    @property
    def signer(self) -> Signer:
        return self.calls.signer

    # -- concurrent.futures.Executor --------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, retries: int = 0, priority: str = "normal",
               **kwargs: Any) -> GearnbFuture:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a :class:`GearnbFuture`."""
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        future = GearnbFuture()
        run = CallRun(self.calls, fn, args, kwargs, future, retries=retries, priority=priority,
                      crash_attempts=self.crash_attempts)
        future.run = run
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        try:
            run.start()  # encodes: an argument that does not pickle raises here, to the caller
        except BaseException:
            with self._lock:
                self._futures.discard(future)
            raise
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:  # type: ignore[override]
        """concurrent.futures' map: an iterator of results in order; errors raise when reached."""
        options: dict[str, Any] = {"chunksize": chunksize, "timeout": timeout}
        if buffersize:
            options["window"] = buffersize
        run = MapRun(self, fn, iterables, **options)
        return (value for _, value in run)

    def cancel(self, futures: Iterable[GearnbFuture]) -> int:
        """Cancel many futures of this executor together (one admin round trip per job server):
        those whose job no worker has taken yet are dropped and cancelled; returns how many."""
        pending = [f for f in futures if not f.done() and f.run is not None]
        cancelled = 0
        for future, dropped in zip(pending, cancel_calls([f.run for f in pending])):  # type: ignore[misc]
            if dropped and concurrent.futures.Future.cancel(future):
                cancelled += 1
        return cancelled

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        with self._lock:
            futures = list(self._futures)
        if cancel_futures:
            self.cancel(futures)
        if wait:
            concurrent.futures.wait(futures)
        self.client.close()

    # -- gearnb's map family ------------------------------------------------------------------
    def gmap(self, fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any) -> list[Any]:
        """``map`` returning a list, with ``chunksize`` ("auto" or int), ``ordered``,
        ``timeout``, ``retries``, ``priority``, ``progress`` and ``output_limit``."""
        options.setdefault("chunksize", "auto")
        return MapRun(self, fn, iterables, **options).collect()

    def imap(self, fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any) -> Iterator[Any]:
        """Lazy ordered map: input consumed with a bounded window of jobs in flight."""
        run = MapRun(self, fn, iterables, ordered=True, **options)
        return (value for _, value in run)

    def imap_unordered(self, fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any) -> Iterator[Any]:
        """Lazy map yielding results as they complete."""
        run = MapRun(self, fn, iterables, ordered=False, **options)
        return (value for _, value in run)

    def call(self, function: str, data: Any = None, *, timeout: float | None = None, **options: Any) -> Any:
        """Call a plain Gearman function with msgpack data (a worker in any language)."""
        import msgpack

        reply = self.client.do(function, msgpack.packb(data, use_bin_type=True), timeout=timeout, **options)
        return msgpack.unpackb(reply, raw=False) if reply else None

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._futures.discard(future)  # type: ignore[arg-type]

    def worker_count(self) -> int:
        """Workers serving pyexec across the servers (from the admin ``status``), cached briefly."""
        stamp, count = self._workers_cache
        if time.monotonic() - stamp < WORKER_COUNT_TTL and count:
            return count
        count = 0
        for server in self.servers:
            try:
                with Admin(server, timeout=2, ssl=self.ssl) as admin:
                    count += sum(s.workers for s in admin.status() if s.function == self.function.decode())
            except OSError:
                continue
        self._workers_cache = (time.monotonic(), count)
        return max(count, 1)

    def __repr__(self) -> str:
        return f"<gearnb.Executor servers={self.servers}>"

    def _repr_html_(self) -> str:
        from ..display import executor_html

        return executor_html(self)
