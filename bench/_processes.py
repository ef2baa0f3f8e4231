"""Process plumbing shared by the benchmarks: children that die with the benchmark, ports,
starting and waiting for a server, a child's CPU time. Imported as ``_processes`` (the
benchmarks run as ``python bench/X.py``)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import gearnb
from gearnb.protocol import RES, Decoder, PacketType, request

HERE = Path(__file__).resolve().parent
P = PacketType


def _c_gearmand() -> str:
    """The C gearmand (Debian gearman-job-server), not the Perl Gearman::Server's script that
    Debian's gearman-server installs under the same name (as tests/peers.py find_gearmand)."""
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin"]:
        path = os.path.join(directory or ".", "gearmand")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            with open(path, "rb") as binary:
                if binary.read(2) != b"#!":
                    return path
    return "/usr/sbin/gearmand"


GEARMAND = _c_gearmand()


class BenchError(RuntimeError):
    pass


# -- child processes -------------------------------------------------------------------------
_children: list[subprocess.Popen] = []


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (not Linux)
        pass


def spawn(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ)  # children import gearnb from this checkout too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent, close_fds=True, env=env)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(grace)
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_children)):  # workers before their server
        stop(proc)


atexit.register(stop_all)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_alive(procs: list[subprocess.Popen], what: str, logdir: Path) -> None:
    """BenchError if one of ``procs`` has exited: "``what`` exited early" (``what``: "LABEL: a worker")."""
    for proc in procs:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited early (status {proc.returncode}); logs in {logdir}")


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready within {timeout:g} s")
        time.sleep(0.05)


def answers_echo(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1) as sock:
        sock.sendall(request(P.ECHO_REQ, b"ping"))
        decoder = Decoder(RES)
        while True:
            data = sock.recv(4096)
            if not data:
                return False
            for packet in decoder.feed(data):
                return packet.type == P.ECHO_RES and packet.args[0] == b"ping"


# -- job servers -----------------------------------------------------------------------------
def start_server(kind: str, logdir: Path, gearmand_options: list[str], gearmand_quiet: tuple[str, ...] = (),
                 gearnb_label: str = "gearnb server") -> tuple[subprocess.Popen, str, str]:
    """Start ``gearmand`` (in-memory queue, ``gearmand_options`` shown in its label,
    ``gearmand_quiet`` not) or ``python -m gearnb server`` on a free 127.0.0.1 port and wait
    until it answers ECHO; returns (process, "host:port", label)."""
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        address = f"127.0.0.1:{port}"
        if kind == "gearmand":
            argv = [GEARMAND, "--listen", "127.0.0.1", "--port", str(port), *gearmand_options, *gearmand_quiet,
                    "--log-file", "none", "--pid-file", str(logdir / f"gearmand-{port}.pid")]
            label = " ".join(["gearmand", *gearmand_options])
        else:
            argv = [sys.executable, "-m", "gearnb", "server", "--host", "127.0.0.1", "--port", str(port)]
            label = gearnb_label
        proc = spawn(argv, logdir / f"{kind}-{port}.log")
        try:
            wait_until(lambda: answers_echo(address), 15, f"{label} on {address}", proc)
            return proc, address, label
        except BenchError:
            stop(proc)
    raise BenchError(f"could not start {kind}; see {logdir}")


def function_status(address: str, name: str, timeout: float = 10) -> tuple[int, int, int]:
    """(total, running, workers) of ``name`` in the server's ``status``; zeros if unknown."""
    with gearnb.Admin(address, timeout=timeout) as admin:
        for status in admin.status():
            if status.function == name:
                return status.total, status.running, status.workers
    return 0, 0, 0


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a child process so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")
