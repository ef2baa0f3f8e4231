"""The local cluster: a bundled job server and worker processes on this machine.

``gearnb.local()`` and the embedded default of ``gearnb.map`` start one. Its processes die
with the Python process that started them - also when a Jupyter kernel is restarted or
killed - because each child asks the kernel for a signal when its parent dies.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

from .admin import Admin
from .executor import Executor
from .pyexec.keys import KEY_ENV, KEY_FILE_ENV, new_key
from .pyexec.runner import PYEXEC
from .supervisor import PARENT_ENV, Supervisor

log = logging.getLogger("gearnb.cluster")

START_TIMEOUT = 60.0  # seconds for the server and every worker to come up
MONITOR_INTERVAL = 0.2
SERVER = "server"  # the job server's slot in the supervisor; workers are "worker N"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A job server process and ``workers`` worker processes, looked after by one thread.

    Every child is started from that thread (the parent-death signal is tied to the thread
    that forks), and a child that dies is started again (:class:`~gearnb.supervisor.Supervisor`).
    """

    def __init__(self, workers: int | None = None, *, port: int = 0, imports: tuple[str, ...] = (),
                 job_retries: int | None = None, max_packet_size: int | str | None = None) -> None:
        self.n_workers = workers or os.cpu_count() or 1
        self.job_retries = job_retries  # the job server's --job-retries (None: its default)
        self.port = port or _free_port()
        self.imports = imports
        # The one limit (gearnb.limits), for the server and the workers alike; unset, they read
        # GEARNB_MAX_PACKET_SIZE from the environment they inherit.
        self.limit_options = [] if max_packet_size is None else ["--max-packet-size", str(max_packet_size)]
        self.key = new_key()
        self.address = f"127.0.0.1:{self.port}"
        self.supervisor = Supervisor("local")
        self._closing = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._report: Callable[[str], None] | None = None

    @property
    def server(self) -> Any:
        """The job server's process (a ``subprocess.Popen``)."""
        return self.supervisor.proc(SERVER)

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, report: Callable[[str], None] | None = None) -> LocalCluster:
        """Start the server and the workers; returns once every worker serves pyexec.
        ``report(text)`` hears how far it got (``starting 4 workers… 1/4 ready``), on this thread."""
        self._report = report
        self._say(f"starting {self.n_workers} worker{'s' if self.n_workers != 1 else ''}…")
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

    def _env(self, worker: bool) -> dict[str, str]:
        env = dict(os.environ)
        env[PARENT_ENV] = str(os.getpid())
        env.pop(KEY_ENV, None)
        env.pop(KEY_FILE_ENV, None)  # the notebook's own key file is not this cluster's key
        if worker:
            env[KEY_ENV] = self.key.hex()  # the job server never needs the key
            env["GEARNB_WORKER_CHILD"] = "1"
            # Notebook-defined modules next to the notebook import in workers too.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        return env

    def _wait_listening(self) -> None:
        """Workers start once the server listens, so they do not log refused connections."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            server = self.server
            if server is not None and server.poll() is not None:
                raise RuntimeError(f"the local job server could not start (exit code {server.returncode}); "
                                   f"is port {self.port} free?")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"the local job server did not listen within {START_TIMEOUT:g} s")

    def _run(self) -> None:
        supervisor = self.supervisor
        try:
            server = [sys.executable, "-m", "gearnb", "server", "--host", "127.0.0.1", "--port", str(self.port),
                      *self.limit_options]
            if self.job_retries is not None:
                server += ["--job-retries", str(self.job_retries)]
            supervisor.start(SERVER, server, self._env(worker=False))
            self._wait_listening()
            env = self._env(worker=True)
            for i in range(self.n_workers):
                argv = [sys.executable, "-m", "gearnb", "worker", "--servers", self.address, "--client-id", f"local-{i}",
                        *self.limit_options]
                for module in self.imports:
                    argv += ["--import", module]
                supervisor.start(f"worker {i}", argv, env)
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
        self._started.set()
        while not self._closing.wait(MONITOR_INTERVAL):
            supervisor.poll()
        supervisor.stop(names=[n for n in supervisor.children if n != SERVER])
        supervisor.stop(names=[SERVER])

    def _say(self, text: str) -> None:
        if self._report is not None:
            try:
                self._report(text)
            except Exception as exc:  # noqa: BLE001 - a view that cannot draw must not stop the start
                log.debug("start report failed: %s", exc)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        ready = -1
        while time.monotonic() < deadline:
            try:
                with Admin(self.address, timeout=2) as admin:
                    count = sum(s.workers for s in admin.status() if s.function == PYEXEC)
                if count != ready:
                    ready = count
                    self._say(f"starting {self.n_workers} worker{'s' if self.n_workers != 1 else ''}… "
                              f"{min(count, self.n_workers)}/{self.n_workers} ready")
                if count >= self.n_workers:
                    return
            except OSError as exc:
                last = exc
            server = self.server
            if server is not None and server.poll() is not None:
                raise RuntimeError(f"the local job server could not start (exit code {server.returncode}); "
                                   f"is port {self.port} free?")
            time.sleep(0.05)
        raise TimeoutError(f"the local cluster did not start within {START_TIMEOUT:g} s ({last})")

    def worker_pids(self) -> list[int]:
        return self.supervisor.pids("worker ")

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(30)
        else:
            self.supervisor.stop()
        try:
            atexit.unregister(self.close)
        except Exception:  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return f"<LocalCluster {self.address} workers={len(self.worker_pids())}>"


class LocalExecutor(Executor):
    """An Executor over its own LocalCluster; closing it stops the cluster. ``on_start(text)``
    hears how the start goes (see :meth:`LocalCluster.start`). ``max_packet_size``
    (gearnb.limits) holds for the executor, the job server and the workers."""

    def __init__(self, workers: int | None = None, *, on_start: Callable[[str], None] | None = None,
                 **options: Any) -> None:
        self.cluster = LocalCluster(workers, imports=tuple(options.pop("imports", ())),
                                    job_retries=options.pop("job_retries", None),
                                    max_packet_size=options.get("max_packet_size")).start(on_start)
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
