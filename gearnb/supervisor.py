"""Child processes kept running: the one supervisor behind ``gearnb worker`` and the local cluster.

Order of calls: the owner :meth:`Supervisor.start` s each child in a slot, then calls
:meth:`Supervisor.poll` now and then from the same thread (a child that died is started
again, after a pause if it died young, so a child that crashes at import does not spin),
and :meth:`Supervisor.stop` at the end (SIGTERM, then SIGKILL after a grace period).

Every child runs in a session of its own: a signal meant for the owner's terminal or
process group - Ctrl-C, Jupyter's interrupt, which signals the kernel's whole process group -
reaches only the owner, which decides what its children do. A child started with
:data:`PARENT_ENV` set exits when its owner dies (:func:`die_with_parent`), even by SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Mapping

log = logging.getLogger("gearnb.supervisor")

PARENT_ENV = "GEARNB_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# A child that dies within this many seconds of starting is restarted only after a pause.
QUICK_DEATH = 2.0
RESTART_PAUSE = 1.0
STOP_GRACE = 10.0  # seconds children get to finish their current job after SIGTERM


def die_with_parent() -> None:
    """In a child started with PARENT_ENV: exit when the parent process goes away.

    The kernel's parent-death signal is tied to the thread that forked the child, so the
    supervisor's owner starts every child from one long-lived thread.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            pass
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(0)


def describe_exit(returncode: int) -> str:
    """``exited with 1``, ``was killed by SIGSEGV``, ``was killed by SIGKILL (out of memory? ...)``."""
    if returncode >= 0:
        return f"exited with {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}" + (" (out of memory? the kernel's OOM killer sends SIGKILL)"
                                  if -returncode == signal.SIGKILL else "")


class Child:
    __slots__ = ("name", "argv", "env", "proc", "started", "restart_at")

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restart_at = 0.0  # when a child that died young may start again


class Supervisor:
    """Processes in named slots, kept running until :meth:`stop`."""

    def __init__(self, what: str = "process") -> None:
        self.what = what  # for log lines: "local worker", "worker process"
        self.children: dict[str, Child] = {}
        self.restarts = 0
        self.stopping = False

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        child = self.children.get(name) or Child(name, argv, env)
        self.children[name] = child
        child.proc = subprocess.Popen(child.argv, env=child.env, stdin=subprocess.DEVNULL, start_new_session=True)
        child.started = time.monotonic()
        return child.proc

    def proc(self, name: str) -> subprocess.Popen[bytes] | None:
        child = self.children.get(name)
        return child.proc if child is not None else None

    def pids(self, prefix: str = "") -> list[int]:
        """Pids of the live children whose slot name starts with ``prefix``."""
        return [c.proc.pid for name, c in self.children.items()
                if name.startswith(prefix) and c.proc is not None and c.proc.poll() is None]

    def poll(self) -> list[tuple[str, int]]:
        """Start again every child that died; returns (slot, exit code) of those that died."""
        died = []
        now = time.monotonic()
        for name, child in self.children.items():
            proc = child.proc
            if self.stopping:
                break
            if proc is not None and proc.poll() is not None:
                died.append((name, proc.returncode))
                log.warning("%s %s (pid %d) %s; starting another", self.what, name, proc.pid,
                            describe_exit(proc.returncode))
                child.proc = None
                child.restart_at = now + (RESTART_PAUSE if now - child.started < QUICK_DEATH else 0.0)
            if child.proc is None and now >= child.restart_at:
                self.start(name, child.argv, child.env)
                self.restarts += 1
        return died

    def stop(self, grace: float = STOP_GRACE, names: list[str] | None = None) -> None:
        """SIGTERM the children (those in ``names``, in that order, or all), wait up to
        ``grace`` seconds, then SIGKILL what is left."""
        self.stopping = True
        procs = [c.proc for n, c in self.children.items() if (names is None or n in names) and c.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
