"""Process plumbing shared by the benchmarks: children that die with the benchmark, ports,
waiting for a server. Imported as ``_processes`` (the benchmarks run as ``python bench/X.py``)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from gearnb.protocol import RES, Decoder, PacketType, request

HERE = Path(__file__).resolve().parent
P = PacketType


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
