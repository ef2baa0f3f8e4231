"""Real peers for the tests: the gearnb server, gearmand, the Perl job server and the libgearman tools.

Nothing here is a mock: gearmand and the ``gearman`` / ``gearadmin`` binaries come from
Debian's gearman-job-server and gearman-tools packages, the Perl Gearman::Server from
gearman-server (tests/run.sh installs them).
"""

from __future__ import annotations

import os
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


def find_gearmand(perl: bool = False) -> str | None:
    """The C gearmand (Debian gearman-job-server: /usr/sbin/gearmand) or, with ``perl``, the
    Perl Gearman::Server's (Debian gearman-server: /usr/bin/gearmand), whatever order PATH
    lists them in: both are called gearmand, and the Perl one is a script ("#!/usr/bin/perl")."""
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/usr/bin"]:
        path = os.path.join(directory or ".", "gearmand")
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        with open(path, "rb") as binary:
            first_line = binary.readline(200)
        if first_line.startswith(b"#!") and b"perl" in first_line:
            if perl:
                return path
        elif not perl and not first_line.startswith(b"#!"):
            return path
    return None


GEARMAND = find_gearmand()
PERL_GEARMAND = find_gearmand(perl=True)


def need(binary: str | None, what: str) -> str:
    """The path of a peer binary; missing peers fail under CI=true and skip elsewhere."""
    if binary:
        return binary
    message = (f"{what} is not installed (Debian packages gearman-job-server, gearman-tools, gearman-server; "
               "run tests/run.sh)")
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


class PerlGearmandProcess(GearmandProcess):
    """The Perl Gearman::Server (Debian gearman-server's /usr/bin/gearmand) on a free port;
    its warnings go to ``perl-gearmand.log`` in ``logdir``."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.binary = need(PERL_GEARMAND, "the Perl job server (gearman-server)")
        self.port = port or free_port()
        self.extra = extra
        self.proc = None
        self.logdir = tempfile.mkdtemp(prefix="perl-gearmand-")

    def start(self) -> PerlGearmandProcess:
        with open(os.path.join(self.logdir, "perl-gearmand.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--listen", "127.0.0.1", "--port", str(self.port), *self.extra],
                stdout=subprocess.DEVNULL, stderr=log)
        wait_port(self.port)
        return self


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


class RawConnection:
    """A blocking socket speaking raw binary Gearman (and admin text) to a job server.

    For tests that pin the server's behaviour packet by packet; short timeouts throughout.
    """

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        from gearnb.protocol import RES, Decoder

        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.decoder = Decoder(RES)
        self.pending: list = []
        self.text = b""

    def send(self, ptype: int, *args: bytes) -> None:
        from gearnb.protocol import request

        self.sock.sendall(request(ptype, *args))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None):
        """The next packet; raises TimeoutError if none arrives in time, EOFError on close."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no packet") from None
            if not chunk:
                raise EOFError("connection closed")
            self.pending.extend(self.decoder.feed(chunk))
        return self.pending.pop(0)

    def expect(self, ptype: int, timeout: float | None = None) -> tuple[bytes, ...]:
        """The next packet, which must be of ``ptype``; returns its arguments."""
        from gearnb.protocol import PacketType

        packet = self.recv(timeout)
        assert packet.type == ptype, f"expected {PacketType(ptype).name}, got {packet!r}"
        return packet.args

    def nothing(self, timeout: float = 0.3) -> None:
        """Assert that no packet arrives within ``timeout`` seconds."""
        try:
            packet = self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {packet!r}")

    def call(self, ptype: int, *args: bytes, reply: int) -> tuple[bytes, ...]:
        self.send(ptype, *args)
        return self.expect(reply)

    def sync(self) -> None:
        """Round-trip an ECHO: everything sent before has been processed by the server."""
        from gearnb.protocol import PacketType

        self.send(PacketType.ECHO_REQ, b"sync")
        assert self.expect(PacketType.ECHO_RES) == (b"sync",)

    def closed(self, timeout: float = 2.0) -> bool:
        """True when the server closes the connection (EOF or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                return False
            except ConnectionError:
                return True
        return False

    # admin text protocol on the same kind of socket
    def command(self, line: str, multiline: bool | None = None) -> bytes:
        """Send an admin line; return the raw reply (up to ``.\\n`` for list replies)."""
        self.sock.sendall(line.encode() + b"\r\n")
        deadline = time.monotonic() + self.timeout
        while True:
            if self.text:
                first_end = self.text.find(b"\n")
                if first_end >= 0:
                    first = self.text[:first_end + 1]
                    is_list = multiline if multiline is not None else not (
                        first.startswith(b"OK") or first.startswith(b"ERR "))
                    if not is_list:
                        self.text = self.text[first_end + 1:]
                        return first
                    if first == b".\n":
                        self.text = self.text[first_end + 1:]
                        return first
                    end = self.text.find(b"\n.\n")
                    if end >= 0:
                        reply, self.text = self.text[:end + 3], self.text[end + 3:]
                        return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete reply to {line!r}: {self.text!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.text += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerProcesses:
    """``gearnb worker --processes N`` as a real process tree, with a cluster key."""

    def __init__(self, servers: str, processes: int = 2, key: bytes = b"k" * 32, imports: tuple[str, ...] = (),
                 function: str = "pyexec", extra: tuple[str, ...] = ()) -> None:
        self.servers = servers
        self.processes = processes
        self.key = key
        self.imports = imports
        self.function = function
        self.extra = extra  # more `gearnb worker` options (--max-packet-size, --ssl-*)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> "WorkerProcesses":
        cmd = [sys.executable, "-m", "gearnb", "worker", "--servers", self.servers,
               "--processes", str(self.processes)]
        for module in self.imports:
            cmd += ["--import", module]
        cmd += self.extra
        env = dict(os.environ, GEARNB_KEY=self.key.hex())
        env.pop("GEARNB_WORKER_CHILD", None)
        self.proc = subprocess.Popen(cmd, env=env)
        if wait:
            for server in self.servers.split(","):
                wait_workers(server, self.function, self.processes, timeout=30)
        return self

    def child_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "WorkerProcesses":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: each process's parent; zombies, which are
    gone but not reaped yet, left out)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found
