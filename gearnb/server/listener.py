"""Starting and stopping the job server: in this process (tests, the local cluster) or as
the ``gearnb server`` command."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import signal
import threading
from typing import Any

from .._loop import new_event_loop
from ..addresses import DEFAULT_PORT
from .connections import Connection
from .core import JobServer

log = logging.getLogger("gearnb.server")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """What to say when the server listens beyond loopback (None when it does not)."""
    if is_loopback(host):
        return None
    return (f"the job server listens on {host or 'every address'}, not only on loopback: the Gearman "
            "protocol has no authentication of its own, so anyone who can reach this port can submit "
            "and take jobs. Firewall it, use TLS with client certificates (--ssl-cert/--ssl-key/--ssl-ca), "
            "or listen on 127.0.0.1")


class Server:
    """A gearnb job server bound to ``host:port`` (port 0 picks a free one).

    ``await server.start()`` inside a running loop, or ``server.start_in_thread()`` to run it
    on a thread of its own; ``server.address`` is then ``"host:port"``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, ssl: Any = None,
                 **options: Any) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl  # an ssl.SSLContext (gearnb.tls.server_context) for TLS connections
        self.options = options
        self.job_server: JobServer | None = None  # made by start()
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        warning = exposure_warning(self.host)
        if warning:
            log.warning("%s", warning)
        loop = asyncio.get_running_loop()
        job_server = self.job_server = JobServer(timers=loop, **self.options)
        job_server.restore()  # background jobs kept in a persistent queue run again
        tls: dict[str, Any] = {}
        if self.ssl is not None:
            # A TLS handshake that does not finish counts as a connection that sent nothing.
            tls = {"ssl": self.ssl, "ssl_handshake_timeout": job_server.bounds.first_packet_timeout}
        self._server = await loop.create_server(
            lambda: Connection(job_server), self.host or None, self.port, reuse_address=True, backlog=1024, **tls)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("gearnb job server listening on %s", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.job_server.connections if self.job_server else ()):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None
        if self.job_server is not None and self.job_server.queue is not None:
            self.job_server.queue.close()

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not main thread
                pass
        await stop.wait()
        await self.stop()

    # -- on a thread of its own ---------------------------------------------------------
    def start_in_thread(self) -> Server:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"gearnb-server-{self.port}", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop_in_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Server:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_in_thread()


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to its hard limit, as gearmand does by default
    (its --file-descriptors): each connection takes one. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # pragma: no cover - a hard limit we may not take
            log.info("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, ssl: Any = None, **options: Any) -> None:
    """Run a job server in the foreground until SIGTERM or Ctrl-C."""
    raise_open_files_limit()
    loop = new_event_loop()
    try:
        loop.run_until_complete(Server(host, port, ssl=ssl, **options).serve_forever())
    finally:
        loop.close()
