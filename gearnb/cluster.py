"""The local cluster: a bundled job server and worker processes on this machine.

``gearnb.local()`` and the embedded default of ``gearnb.map`` start one. Its processes die
with the Python process that started them - also when a Jupyter kernel is restarted or
killed - because each child asks the kernel for a signal when its parent dies.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from .admin import Admin
from .executor import Executor
from .pyexec.keys import KEY_ENV, new_key
from .pyexec.runner import PYEXEC

log = logging.getLogger("gearnb.cluster")

PARENT_ENV = "GEARNB_DIE_WITH_PARENT"
START_TIMEOUT = 60.0  # seconds for the server and every worker to come up
MONITOR_INTERVAL = 0.2
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """In a child started by a LocalCluster: exit when the parent process goes away."""
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A job server process and ``workers`` worker processes, looked after by one thread.

    Every child is started from that thread (the parent-death signal is tied to the thread
    that forks), and a worker that dies is started again.
    """

    def __init__(self, workers: int | None = None, *, port: int = 0, imports: tuple[str, ...] = ()) -> None:
        self.n_workers = workers or os.cpu_count() or 1
        self.port = port or _free_port()
        self.imports = imports
        self.key = new_key()
        self.address = f"127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._closing = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> LocalCluster:
        self._thread = threading.Thread(target=self._run, name="gearnb-local-cluster", daemon=True)
        self._thread.start()
        self._started.wait(START_TIMEOUT)
        if self._error is not None:
            self.close()
            raise self._error
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        atexit.register(self.close)
        return self

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[PARENT_ENV] = str(os.getpid())
        env[KEY_ENV] = self.key.hex()
        env["GEARNB_WORKER_CHILD"] = "1"
        # Notebook-defined modules next to the notebook import in workers too.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        return env

    def _spawn_worker(self, env: dict[str, str], index: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "gearnb", "worker", "--servers", self.address,
               "--client-id", f"local-{index}"]
        for module in self.imports:
            cmd += ["--import", module]
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def _spawn_server(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "gearnb", "server", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdin=subprocess.DEVNULL)

    def _wait_listening(self) -> None:
        """Workers start once the server listens, so they do not log refused connections."""
        import socket

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError(f"the local job server could not start (exit code {self.server.returncode}); "
                                   f"is port {self.port} free?")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"the local job server did not listen within {START_TIMEOUT:g} s")

    def _run(self) -> None:
        env = self._env()
        try:
            self.server = self._spawn_server(env)
            self._wait_listening()
            self.workers = [self._spawn_worker(env, i) for i in range(self.n_workers)]
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
        self._started.set()
        while not self._closing.wait(MONITOR_INTERVAL):
            if self.server is not None and self.server.poll() is not None:
                log.error("the local job server exited with %s; starting it again", self.server.returncode)
                self.server = self._spawn_server(env)
            for i, proc in enumerate(self.workers):
                if proc.poll() is not None and not self._closing.is_set():
                    log.warning("local worker %d (pid %d) exited with %s; starting another",
                                i, proc.pid, proc.returncode)
                    self.workers[i] = self._spawn_worker(env, i)
                    self.restarts += 1
        self._stop_children()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with Admin(self.address, timeout=2) as admin:
                    if sum(s.workers for s in admin.status() if s.function == PYEXEC) >= self.n_workers:
                        return
            except OSError as exc:
                last = exc
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError(f"the local job server could not start (exit code {self.server.returncode}); "
                                   f"is port {self.port} free?")
            time.sleep(0.05)
        raise TimeoutError(f"the local cluster did not start within {START_TIMEOUT:g} s ({last})")

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.workers if p.poll() is None]

    def _stop_children(self) -> None:
        procs = [p for p in self.workers if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(30)
        else:
            self._stop_children()
        try:
            atexit.unregister(self.close)
        except Exception:  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return f"<LocalCluster {self.address} workers={len(self.worker_pids())}>"


class LocalExecutor(Executor):
    """An Executor over its own LocalCluster; closing it stops the cluster."""

    def __init__(self, workers: int | None = None, **options: Any) -> None:
        self.cluster = LocalCluster(workers, imports=tuple(options.pop("imports", ()))).start()
        super().__init__(self.cluster.address, key=self.cluster.key, **options)

    def worker_pids(self) -> list[int]:
        """Pids of the cluster's live worker processes."""
        return self.cluster.worker_pids()

    def worker_count(self) -> int:
        return self.cluster.n_workers

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            super().shutdown(wait, cancel_futures=cancel_futures)
        finally:
            self.cluster.close()

    def __repr__(self) -> str:
        return f"<gearnb.LocalExecutor {self.servers[0]} workers={self.cluster.n_workers}>"
