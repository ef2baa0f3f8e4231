"""Reaching a job server that runs in this process, on its own thread.

The server's state belongs to its event loop's thread. Whatever the pictures read or
install there goes through :func:`on_server_thread`, so it never races the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from ..server.core import JobServer

T = TypeVar("T")
# How long a call waits for the server's loop; a loop busy for longer than this is stuck.
SERVER_THREAD_TIMEOUT = 10.0


class ServerStopped(RuntimeError):
    """The in-process server's loop has stopped: there is nothing to read or install."""


def job_server(server: Any) -> JobServer | None:
    """The in-process JobServer behind ``server`` (a gearnb.server.Server or a JobServer)."""
    from ..server.core import JobServer

    if isinstance(server, JobServer):
        return server
    core = getattr(server, "job_server", None)
    return core if isinstance(core, JobServer) else None


def on_server_thread(server: Any, fn: Callable[[], T], timeout: float = SERVER_THREAD_TIMEOUT) -> T:
    """Run ``fn()`` on the thread of ``server``'s event loop and return its result.

    ``server`` started with ``Server.start_in_thread()`` has its loop there (raises
    ServerStopped once it stopped); a server started with ``await server.start()`` in the
    caller's loop, or a bare JobServer, is called here.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(server, "_loop", None)
    if loop is None:
        return fn()
    if loop.is_closed():  # (not running yet is fine: start_in_thread returns just before it runs)
        raise ServerStopped(f"the job server {getattr(server, 'address', '')} is not running (stopped?)")
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    if current is loop:
        return fn()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:  # closed meanwhile
        raise ServerStopped(f"the job server {getattr(server, 'address', '')} is not running (stopped?)") from None
    return future.result(timeout)
