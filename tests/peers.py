"""Real peers for the tests: the gearnb server, gearmand and the libgearman tools.

Nothing here is a mock: gearmand and the ``gearman`` / ``gearadmin`` binaries come from
Debian's gearman-job-server and gearman-tools packages (tests/run.sh installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

import gearnb
from gearnb.server import Server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
GEARMAND = shutil.which("gearmand") or ("/usr/sbin/gearmand" if os.path.exists("/usr/sbin/gearmand") else None)


def need(binary: str | None, what: str) -> str:
    """The path of a peer binary; missing peers fail under CI=true and skip elsewhere."""
    if binary:
        return binary
    message = f"{what} is not installed (Debian packages gearman-job-server, gearman-tools; run tests/run.sh)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class GearmandProcess:
    """A real gearmand on a free loopback port."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.binary = need(GEARMAND, "gearmand")
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.logdir = tempfile.mkdtemp(prefix="gearmand-")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> GearmandProcess:
        self.proc = subprocess.Popen(
            [self.binary, "--listen", "127.0.0.1", "--port", str(self.port), "--threads", "0",
             "--log-file", os.path.join(self.logdir, "gearmand.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class GearnbProcess(GearmandProcess):
    """The gearnb server as a separate process (``python -m gearnb server``)."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.proc = None

    def start(self) -> GearnbProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gearnb", "server", "--port", str(self.port), *self.extra])
        wait_port(self.port)
        return self


@contextmanager
def worker_thread(address: str | list[str], functions: dict[str, Callable], **options) -> Iterator[gearnb.Worker]:
    """A gearnb Worker serving ``functions`` on a thread; stopped on exit."""
    worker = gearnb.Worker(address, **options)
    for name, fn in functions.items():
        worker.register(name, fn)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)


def wait_until(predicate: Callable[[], object], timeout: float = 10, interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_workers(address: str, function: str, count: int = 1, timeout: float = 10) -> None:
    def ready() -> bool:
        with gearnb.Admin(address) as admin:
            return any(s.function == function and s.workers >= count for s in admin.status())
    wait_until(ready, timeout)


@contextmanager
def gearnb_server(**options) -> Iterator[Server]:
    server = Server("127.0.0.1", 0, **options).start_in_thread()
    try:
        yield server
    finally:
        server.stop_in_thread()
