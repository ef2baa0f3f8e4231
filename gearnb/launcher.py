"""``gearnb worker``: N worker processes, restarted when they die, stopped on SIGTERM/Ctrl-C."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
from typing import Sequence

from .addresses import parse_servers
from .supervisor import Supervisor
from .worker import Worker

log = logging.getLogger("gearnb.launcher")

POLL = 0.2  # seconds between looks at the children


NOTHING_TO_SERVE = (
    "gearnb worker: no cluster key, so no pyexec, and no --import MODULE: nothing to serve. "
    "Set GEARNB_KEY or pass --key-file (the key gearnb.connect() uses).")


def load_functions(worker: Worker, modules: Sequence[str]) -> None:
    """Let each module add its functions: ``register(worker)`` or a ``GEARMAN_FUNCTIONS`` dict."""
    for name in modules:
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        table = getattr(module, "GEARMAN_FUNCTIONS", None)
        if callable(register):
            register(worker)
        elif isinstance(table, dict):
            for fname, fn in table.items():
                worker.register(fname, fn)
        else:
            raise SystemExit(f"gearnb worker: module {name} has neither register(worker) nor GEARMAN_FUNCTIONS")


def run_one(servers: str | None, modules: Sequence[str], client_id: str | None,
            key_file: str | None = None, job_timeout: float | None = None,
            exception_packets: bool = True) -> int:
    """One worker in this process: pyexec (when a cluster key is set) plus imported functions."""
    from .pyexec import PYEXEC, load_key
    from .pyexec.control import ControlWorker
    from .pyexec.isolation import IsolatedRunner
    from .supervisor import die_with_parent

    die_with_parent()
    worker = Worker(servers, client_id=client_id, exception_packets=exception_packets)
    key = load_key(None, key_file)
    runner = control = None
    if key:
        # Tasks run in a task process of this worker: one that dies fails its task, not this
        # worker (gearnb/pyexec/isolation.py); a control function stops one on request.
        # job_timeout: CAN_DO_TIMEOUT, so a server takes a job back from a worker that went
        # silent (a cut link). Works with gearnb's server; gearmand 1.1.20's is unreliable.
        runner = IsolatedRunner(key)
        runner.process.ensure_started()  # before the first job, not while it waits
        worker.register(PYEXEC, runner, timeout=job_timeout)
        control = ControlWorker(servers, key, runner, client_id=client_id).start()
    load_functions(worker, modules)
    if not key:
        log.warning("no cluster key (GEARNB_KEY / --key-file): serving only %s, not pyexec",
                    ", ".join(n.decode() for n in worker.functions))
    try:
        worker.work()
    finally:
        if control is not None:
            control.stop()
        if runner is not None:
            runner.close()
    return 0


def run_workers(servers: str | None, processes: int, imports: Sequence[str] = (),
                client_id: str | None = None, key_file: str | None = None,
                job_timeout: float | None = None, exception_packets: bool = True) -> int:
    """Run ``processes`` worker processes in the foreground and look after them."""
    from .pyexec import load_key

    if not imports and not load_key(None, key_file):
        raise SystemExit(NOTHING_TO_SERVE)
    if os.environ.get("GEARNB_WORKER_CHILD") == "1":
        return run_one(servers, imports, client_id, key_file, job_timeout, exception_packets)
    spec = ",".join(parse_servers(servers))
    argv = [sys.executable, "-m", "gearnb", "worker", "--servers", spec]
    for module in imports:
        argv += ["--import", module]
    if client_id:
        argv += ["--client-id", client_id]
    if key_file:
        argv += ["--key-file", key_file]
    if job_timeout:
        argv += ["--job-timeout", str(job_timeout)]
    if not exception_packets:
        argv += ["--no-exception-packets"]
    env = dict(os.environ, GEARNB_WORKER_CHILD="1")
    # Imported modules may live in the current directory, as with "python -m".
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    supervisor = Supervisor("worker process")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    previous = [signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        for slot in range(processes):
            supervisor.start(str(slot), argv, env)
        log.info("started %d worker processes for %s", processes, spec)
        while not stopping:
            time.sleep(POLL)
            if not stopping:
                supervisor.poll()
    finally:
        supervisor.stop()  # each worker finishes its current job, then exits
        for sig, handler in zip((signal.SIGTERM, signal.SIGINT), previous):
            signal.signal(sig, handler)
    return 0
