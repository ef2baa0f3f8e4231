"""The background event-loop thread behind every blocking call.

A Jupyter kernel already runs an asyncio loop on the main thread, so blocking calls cannot
``run_until_complete`` there. Instead all network I/O runs on one daemon thread with its own
loop; blocking calls hand coroutines to it and wait on a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed: it roughly doubles the job server's jobs/s on this machine."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    def __init__(self, name: str = "gearnb-io") -> None:
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the I/O thread and wait for its result here."""
        if self.in_loop_thread():
            raise RuntimeError("a blocking gearnb call was made on gearnb's own I/O thread "
                               "(from a callback?); use the async API there")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.in_loop_thread():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


_shared: LoopThread | None = None
_lock = threading.Lock()


def _forget_after_fork() -> None:
    """In a forked child: the parent's I/O thread does not exist here (and its lock may have
    been held at the fork); the child starts its own on first use."""
    global _shared, _lock
    _shared = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def io_loop() -> LoopThread:
    """The process-wide I/O thread, started on first use."""
    global _shared
    with _lock:
        if _shared is None or not _shared.thread.is_alive():
            _shared = LoopThread()
            atexit.register(_shared.stop)
        return _shared
