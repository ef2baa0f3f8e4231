"""Executor: a concurrent.futures.Executor that runs Python callables on Gearman workers."""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from ..admin import Admin
from ..client import Client
from ..client.task import Task
from ..client.text_admin import cancel_jobs
from ..errors import JobFailed
from ..pyexec import envelope
from ..pyexec.keys import NO_KEY_HELP, RefusedPayload, Signer, load_key
from ..pyexec.runner import PYEXEC
from ..addresses import ServerSpec
from .futures import GearnbFuture
from .mapping import MapRun

log = logging.getLogger("gearnb.executor")

# Wait this long for JOB_CREATED of just-submitted jobs before cancelling them.
CANCEL_CREATED_WAIT = 2.0
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
                 ssl: Any = None) -> None:
        resolved = load_key(key, key_file)
        # Without a key, plain Gearman calls (call()) still work; Python callables need one.
        self._signer = Signer(resolved) if resolved else None
        self.client = Client(servers, ssl=ssl)  # ssl: gearnb.tls.client_context(...)
        self.servers = self.client.servers
        self.function = function.encode()
        self.show_output = show_output
        self._io = self.client._io
        self._core = self.client._core
        self._shutdown = False
        self._futures: set[GearnbFuture] = set()
        self._lock = threading.Lock()
        self._workers_cache: tuple[float, int] = (0.0, 0)

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            raise ValueError(NO_KEY_HELP)
        return self._signer

    # -- concurrent.futures.Executor --------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, retries: int = 0, priority: str = "normal",
               **kwargs: Any) -> GearnbFuture:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a :class:`GearnbFuture`."""
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        blob = envelope.FunctionBlob(fn)
        label = getattr(fn, "__name__", None) or type(fn).__name__
        future = GearnbFuture(self, label)
        parts = envelope.encode_call_parts(blob, [(args, kwargs)], with_code=True, chunk=False)
        payload = self.signer.sign_parts(self.function, parts)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        self._submit_call(future, payload, retries, priority)
        return future

    def _submit_call(self, future: GearnbFuture, payload: bytes, retries: int, priority: str) -> None:
        task = Task(self.function, payload, priority=priority)
        future.task = task

        def done(task: Task) -> None:
            if future.done():
                return
            try:
                values, errors = self._decode(task)
            except BaseException as exc:  # noqa: BLE001 - delivered to the future
                values, errors = [None], {0: exc}
            if 0 in errors:
                if retries > 0 and not isinstance(errors[0], (RefusedPayload, envelope.VersionMismatch)):
                    self._submit_call(future, payload, retries - 1, priority)
                    return
                future.set_exception(errors[0])
            else:
                future.set_result(values[0])

        task._done_hooks.append(done)
        self._attach_output(task, future.label, None, None)
        self._submit_tasks([task])

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:  # type: ignore[override]
        """concurrent.futures' map: an iterator of results in order; errors raise when reached."""
        options: dict[str, Any] = {"chunksize": chunksize, "timeout": timeout}
        if buffersize:
            options["window"] = buffersize
        run = MapRun(self, fn, iterables, **options)
        return (value for _, value in run)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        with self._lock:
            futures = list(self._futures)
        if cancel_futures:
            self._cancel_jobs([f.task for f in futures if f.task is not None and not f.done()])
            for f in futures:
                if not f.done():
                    concurrent.futures.Future.cancel(f)
        if wait:
            concurrent.futures.wait(futures)
        self.client.close()

    # -- gearnb's map family ------------------------------------------------------------------
    def gmap(self, fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any) -> list[Any]:
        """``map`` returning a list, with ``chunksize`` ("auto" or int), ``ordered``,
        ``timeout``, ``retries``, ``priority`` and ``progress``."""
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

    # -- plumbing (the I/O thread calls the hooks) ------------------------------------------
    def _submit_tasks(self, tasks: list[Task]) -> None:
        core = self._core

        def submit_all() -> None:
            for task in tasks:
                core.submit(task)

        self._io.call_soon(submit_all)

    def _decode(self, task: Task) -> tuple[list[Any], dict[int, BaseException]]:
        """Values and per-call exceptions of a finished pyexec task; raises for the whole job."""
        if task.error is not None:
            raise task.error
        if task.successful:
            payload = task.result or b""
        elif task.exception_data is not None:
            payload = task.exception_data
        else:
            raise JobFailed("the job failed on the job server (WORK_FAIL): its worker died more times than "
                            "the server's --job-retries allows, or it was cancelled")
        try:
            body = self.signer.verify(self.function, payload)
        except RefusedPayload:
            if not task.successful:  # the worker's own refusal, in plain text
                raise RefusedPayload(payload.decode(errors="replace")) from None
            raise RefusedPayload("the worker's answer is not signed with this cluster's key; "
                                 "is the worker started with the same GEARNB_KEY?") from None
        msg = envelope.decode_result(body)
        if msg.get("need_code"):
            raise envelope.NeedCode()
        if "fail" in msg:
            raise envelope.rebuild_error(msg["fail"])
        errors = {int(i): envelope.rebuild_error(r) for i, r in msg.get("e", {}).items()}
        return msg["values"], errors

    def _attach_output(self, task: Task, label: str, index: int | None, progress: Any,
                       context: contextvars.Context | None = None) -> None:
        """Worker print() (WORK_DATA) and stderr (WORK_WARNING) appear here, marked with the task.

        They are printed on the I/O thread but in the calling thread's context: ipykernel
        uses a context variable to decide which cell output belongs to.
        """
        if self.show_output:
            tag = f"[{label}{'' if index is None else f' #{index}'}] "
            ctx = context if context is not None else contextvars.copy_context()
            task.on_data(lambda data: ctx.run(_print_marked, "stdout", tag, data))
            task.on_warning(lambda data: ctx.run(_print_marked, "stderr", tag, data))
        if progress is not None:
            task.on_status(lambda n, d, t=task: progress.status(t, n, d))

    def _cancel_jobs(self, tasks: list[Task]) -> bool:
        """Cancel queued jobs on their servers; True if every one of them was dropped."""
        deadline = time.monotonic() + CANCEL_CREATED_WAIT
        while any(t.handle is None and not t.finished for t in tasks) and time.monotonic() < deadline:
            time.sleep(0.002)
        by_server: dict[str, list[Task]] = {}
        for task in tasks:
            task._done_hooks.clear()  # a late answer goes nowhere
            if task.handle is not None and task.server is not None and not task.finished:
                by_server.setdefault(task.server, []).append(task)
        all_dropped = True
        for server, group in by_server.items():
            try:
                dropped = self._io.run(cancel_jobs(server, [t.handle for t in group]), 30)  # type: ignore[misc]
            except (OSError, TimeoutError) as exc:
                log.warning("could not cancel %d jobs on %s: %s", len(group), server, exc)
                dropped = [False] * len(group)
            all_dropped = all_dropped and all(dropped)
        return all_dropped

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
                with Admin(server, timeout=2) as admin:
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


def _print_marked(stream_name: str, tag: str, data: bytes) -> None:
    stream = getattr(sys, stream_name)
    text = data.decode(errors="replace")
    lines = text.splitlines(keepends=True)
    stream.write("".join(tag + line for line in lines))
    if lines and not lines[-1].endswith("\n"):
        stream.write("\n")
    stream.flush()
