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


def _limit_and_tls_options(max_packet_size: str | int | None,
                           tls: tuple[str | None, str | None, str | None]) -> list[str]:
    """The options a worker's child or task process is given, as ``gearnb worker`` took them."""
    argv = [] if max_packet_size is None else ["--max-packet-size", str(max_packet_size)]
    for option, path in zip(("--ssl-ca", "--ssl-cert", "--ssl-key"), tls):
        if path:
            argv += [option, path]
    return argv


def run_one(servers: str | None, modules: Sequence[str], client_id: str | None,
            key_file: str | None = None, job_timeout: float | None = None,
            exception_packets: bool = True, max_packet_size: str | int | None = None,
            tls: tuple[str | None, str | None, str | None] = (None, None, None)) -> int:
    """One worker in this process: a guard whose task process runs pyexec (when a cluster key
    is set) and the functions of ``modules`` (gearnb/pyexec/isolation.py), and a control
    function that stops a running task on request (gearnb/pyexec/control.py). ``tls``:
    (--ssl-ca, --ssl-cert, --ssl-key), see gearnb.tls; the guard, its control worker and its
    task process all connect with them."""
    from .pyexec import load_key
    from .pyexec.control import ControlWorker
    from .pyexec.isolation import Guard
    from .supervisor import die_with_parent
    from .tls import client_context_from

    die_with_parent()
    ssl_context = client_context_from(*tls)
    key = load_key(None, key_file)
    if not key:
        log.warning("no cluster key (GEARNB_KEY / --key-file): serving only the functions of %s, not pyexec",
                    ", ".join(modules))
    argv = ["--servers", ",".join(parse_servers(servers))]
    for module in modules:
        argv += ["--import", module]
    if client_id:
        argv += ["--client-id", client_id]
    if job_timeout:
        # CAN_DO_TIMEOUT, so a server takes a job back from a worker that went silent (a cut
        # link). Works with gearnb's server; gearmand 1.1.20's is unreliable.
        argv += ["--job-timeout", str(job_timeout)]
    if not exception_packets:
        argv += ["--no-exception-packets"]
    argv += _limit_and_tls_options(max_packet_size, tls)
    guard = Guard(parse_servers(servers), key, argv, ssl_context=ssl_context)
    control = ControlWorker(servers, key, guard, client_id=client_id, ssl=ssl_context).start() if key else None
    try:
        return guard.run()
    finally:
        if control is not None:
            control.stop()


def run_workers(servers: str | None, processes: int, imports: Sequence[str] = (),
                client_id: str | None = None, key_file: str | None = None,
                job_timeout: float | None = None, exception_packets: bool = True,
                max_packet_size: str | int | None = None,
                tls: tuple[str | None, str | None, str | None] = (None, None, None)) -> int:
    """Run ``processes`` worker processes in the foreground and look after them."""
    from .pyexec import load_key

    if not imports and not load_key(None, key_file):
        raise SystemExit(NOTHING_TO_SERVE)
    if os.environ.get("GEARNB_WORKER_CHILD") == "1":
        return run_one(servers, imports, client_id, key_file, job_timeout, exception_packets, max_packet_size, tls)
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
    argv += _limit_and_tls_options(max_packet_size, tls)
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
