#!/usr/bin/env python3
"""Many client connections at once, nothing lost: gearmand against the gearnb job server.

    python bench/many_connections.py            # 200 connections x 500 jobs
    python bench/many_connections.py --quick    # 200 connections x 100 jobs

For each job server (gearmand, then ``python -m gearnb server``), each started here on a free
127.0.0.1 port: ``--connections`` separate TCP client connections (default 200), opened by one
asyncio (uvloop) driver in this process with ``gearnb.protocol``, each submitting
``--jobs-per-connection`` foreground jobs (default 500), ``--window`` of them in flight per
connection, to ``--workers`` ``gearnb.Worker`` processes (default 3) doing x -> 2x. Every job
is accounted for: submitted, completed (right result), duplicated (a second WORK_COMPLETE
for a job, a handle given to two jobs, or a worker running a job twice), wrong, failed,
lost (submitted but never completed).

Every step has a time limit (``--timeout``), the whole run ``--deadline``; every process
started here is stopped on exit, error or Ctrl-C (and gets SIGKILL if this one dies). Exit
status 1 if a job was lost, duplicated, wrong or failed, or if something timed out. The memory
a queued job costs is measured by bench/queued_memory.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import gearnb  # noqa: E402
from gearnb.protocol import RES, Decoder, PacketType, request  # noqa: E402

from _harness import add_server_options, check_deadline, check_options, finish, print_table, run_guarded  # noqa: E402
from _processes import (  # noqa: E402 - bench/, next to this file
    BenchError, check_alive, cpu_seconds, function_status, spawn, start_server, stop, wait_until,
)

P = PacketType
LOAD_FUNCTION = "bench_load"


def worker_child(address: str, report: str) -> None:
    """A gearnb.Worker doing x -> 2x until SIGTERM; then writes how many jobs it ran."""
    worker = gearnb.Worker(address, client_id=f"bench-load-{os.getpid()}")
    runs = 0

    @worker.function(LOAD_FUNCTION)
    def double(job: gearnb.Job) -> bytes:
        nonlocal runs
        runs += 1
        return b"%d" % (2 * int(job.data))

    worker.work()  # until SIGTERM, which lets the current job finish
    Path(report).write_text(str(runs))


class LoadStats:
    def __init__(self) -> None:
        self.submitted = 0
        self.created = 0
        self.completed = 0      # distinct jobs completed with the right result
        self.duplicated = 0     # second WORK_COMPLETE for a job, or a handle given to two jobs
        self.wrong = 0
        self.failed = 0         # WORK_FAIL / WORK_EXCEPTION
        self.errors = 0         # ERROR packets
        self.unexpected = 0     # WORK_* for a handle this connection never got
        self.timed_out = False
        self.seen = 0           # client connections the server listed (`workers`) before the start
        self.handles: set[bytes] = set()


class LoadConnection(asyncio.Protocol):
    """One client connection: ``jobs`` SUBMIT_JOBs, ``window`` in flight, every reply accounted for."""

    def __init__(self, first: int, jobs: int, window: int, stats: LoadStats, done: asyncio.Future) -> None:
        self.first = first          # this connection's jobs carry the payloads first .. first+jobs-1
        self.jobs = jobs
        self.window = window
        self.stats = stats
        self.done = done            # set when this connection has nothing left in flight
        self.decoder = Decoder(RES)
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.awaiting_handle: deque[int] = deque()  # payloads waiting for JOB_CREATED, in order
        self.by_handle: dict[bytes, int] = {}       # handle -> payload, until its WORK_COMPLETE
        self.finished: set[int] = set()             # payloads completed
        self.closed_early = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        self._submit(min(self.window, self.jobs))

    def _submit(self, count: int) -> None:
        if count <= 0:
            return
        fn = LOAD_FUNCTION.encode()
        first = self.first + self.sent
        payloads = range(first, first + count)
        assert self.transport is not None
        self.transport.write(b"".join([request(P.SUBMIT_JOB, fn, b"", b"%d" % x) for x in payloads]))
        self.awaiting_handle.extend(payloads)
        self.sent += count
        self.stats.submitted += count

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        ended = 0
        for packet in self.decoder.feed(data):
            ptype = packet.type
            if ptype == P.JOB_CREATED:
                handle = packet.args[0]
                payload = self.awaiting_handle.popleft()
                stats.created += 1
                if handle in stats.handles:
                    stats.duplicated += 1  # a handle the server already gave to another job
                stats.handles.add(handle)
                self.by_handle[handle] = payload
            elif ptype == P.WORK_COMPLETE:
                handle, result = packet.args
                payload = self.by_handle.pop(handle, None)
                if payload is None:
                    if handle.rstrip(b"\0") in stats.handles:
                        stats.duplicated += 1  # a second WORK_COMPLETE for a job already done
                    else:
                        stats.unexpected += 1
                    continue
                ended += 1
                if payload in self.finished:
                    stats.duplicated += 1
                elif result != b"%d" % (2 * payload):
                    stats.wrong += 1
                else:
                    self.finished.add(payload)
                    stats.completed += 1
            elif ptype in (P.WORK_FAIL, P.WORK_EXCEPTION):
                if self.by_handle.pop(packet.args[0].rstrip(b"\0"), None) is not None:
                    ended += 1
                stats.failed += 1
            elif ptype == P.ERROR:
                stats.errors += 1
                if self.awaiting_handle:  # an ERROR answers a submit instead of JOB_CREATED
                    self.awaiting_handle.popleft()
                    ended += 1
            # WORK_STATUS / WORK_DATA: not sent by these workers; ignored
        self._submit(min(ended, self.jobs - self.sent))
        self._check_done()

    def _check_done(self) -> None:
        if self.sent >= self.jobs and not self.awaiting_handle and not self.by_handle and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.closed_early = True
            self.done.set_result(None)


async def _load_run(address: str, args: argparse.Namespace, stats: LoadStats) -> tuple[float, float]:
    """Open every connection, then start them all; returns (connect seconds, run seconds)."""
    loop = asyncio.get_running_loop()
    host, port = address.rsplit(":", 1)
    conns: list[tuple[asyncio.Transport, LoadConnection]] = []
    t0 = time.perf_counter()
    try:
        for i in range(args.connections):
            done = loop.create_future()
            transport, proto = await asyncio.wait_for(loop.create_connection(
                lambda i=i, done=done: LoadConnection(i * args.jobs_per_connection, args.jobs_per_connection,
                                                      args.window, stats, done), host, int(port)), 10)
            conns.append((transport, proto))
        connect_seconds = time.perf_counter() - t0
        # The server's own view: every connection it has that is not a worker, less this admin one.
        with gearnb.Admin(address, timeout=10) as admin:
            stats.seen = sum(1 for w in admin.workers() if not w.functions) - 1
        start = time.perf_counter()
        for _transport, proto in conns:
            proto.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(proto.done for _t, proto in conns)), args.timeout)
        except asyncio.TimeoutError:
            stats.timed_out = True  # what is missing is counted as lost
        seconds = time.perf_counter() - start
        check_deadline()  # an alarm inside the loop is only logged there
        early = sum(proto.closed_early for _t, proto in conns)
        if early:
            raise BenchError(f"the server closed {early} client connections")
        return connect_seconds, seconds
    finally:
        for transport, _proto in conns:
            transport.close()


def load_test(kind: str, args: argparse.Namespace, logdir: Path) -> dict:
    server, address, label = start_server(kind, logdir, ["--threads", str(args.gearmand_threads)],
                                          gearmand_quiet=("--backlog", "1024"))
    workers: list[subprocess.Popen] = []
    reports = [logdir / f"{kind}-runs-{i}.txt" for i in range(args.workers)]
    try:
        workers = [spawn([sys.executable, __file__, "--worker-child", address, str(report)],
                         logdir / f"{kind}-worker-{i}.log") for i, report in enumerate(reports)]
        wait_until(lambda: function_status(address, LOAD_FUNCTION)[2] >= args.workers, 20,
                   f"{args.workers} workers on {address}")
        print(f"# load: {label} on {address}, {args.connections} connections x {args.jobs_per_connection} jobs, "
              f"{args.workers} workers", file=sys.stderr, flush=True)
        from gearnb._loop import new_event_loop

        stats = LoadStats()
        loop = new_event_loop()
        cpu0 = cpu_seconds(server.pid)
        try:
            connect_seconds, seconds = loop.run_until_complete(_load_run(address, args, stats))
        finally:
            loop.close()
        server_cpu = cpu_seconds(server.pid) - cpu0
        total, running, _ = function_status(address, LOAD_FUNCTION)
        check_alive(workers, f"{label}: a worker", logdir)
        for proc in workers:
            stop(proc, grace=15)
        runs = sum(int(r.read_text()) if r.exists() else 0 for r in reports)
        missing_reports = sum(not r.exists() for r in reports)
        check_alive([server], f"{label}: the server", logdir)
    finally:
        for proc in workers:
            stop(proc)
        stop(server)
    # A job the workers ran more often than it completed ran twice (nothing here makes the
    # server requeue one); after a timeout the clients left with jobs still running, so no.
    extra_runs = 0 if stats.timed_out else max(0, runs - stats.completed - stats.failed)
    return {
        "label": label, "connections": stats.seen, "wanted_connections": args.connections,
        "expected": args.connections * args.jobs_per_connection, "submitted": stats.submitted,
        "completed": stats.completed, "duplicated": stats.duplicated + extra_runs,
        "lost": stats.submitted - stats.completed - stats.failed - stats.errors - stats.wrong,
        "wrong": stats.wrong, "failed": stats.failed + stats.errors + stats.unexpected,
        "timed_out": stats.timed_out, "timeout": args.timeout, "runs": runs, "missing_reports": missing_reports,
        "left": total, "seconds": seconds, "connect": connect_seconds, "server_cpu": server_cpu,
    }


# -- report ----------------------------------------------------------------------------------
def load_problems(r: dict) -> list[str]:
    problems = [f"not done within {r['timeout']:g} s"] if r["timed_out"] else []
    for key in ("lost", "duplicated", "wrong", "failed"):
        if r[key]:
            problems.append(f"{r[key]} {key}")
    if r["connections"] < r["wanted_connections"]:
        problems.append(f"the server saw {r['connections']} client connections, not {r['wanted_connections']}")
    if r["submitted"] != r["expected"]:
        problems.append(f"only {r['submitted']} of {r['expected']} submitted")
    if r["runs"] != r["completed"] and not r["missing_reports"] and not r["timed_out"]:
        problems.append(f"workers ran {r['runs']} jobs for {r['completed']} completions")
    if r["missing_reports"]:
        problems.append(f"{r['missing_reports']} workers did not report their runs")
    if r["left"]:
        problems.append(f"{r['left']} jobs left in the server")
    return problems


def print_load(args: argparse.Namespace, results: list[dict]) -> None:
    head = ("server", "connections seen", "submitted", "completed", "duplicated", "lost", "wrong/failed",
            "worker runs", "seconds", "jobs/s", "server CPU us/job", "check")
    table = [head]
    for r in results:
        problems = load_problems(r)
        table.append((r["label"], str(r["connections"]), f"{r['submitted']:,}", f"{r['completed']:,}",
                      str(r["duplicated"]), str(r["lost"]), f"{r['wrong']}/{r['failed']}", f"{r['runs']:,}",
                      f"{r['seconds']:.2f}", f"{r['completed'] / r['seconds']:,.0f}",
                      f"{1e6 * r['server_cpu'] / max(1, r['completed']):.1f}", "; ".join(problems) or "ok"))
    print(f"\nLoad: {args.connections} client connections x {args.jobs_per_connection} foreground jobs "
          f"(x -> 2x), {args.window} in flight per connection, {args.workers} gearnb.Worker processes; "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    print_table(table, right=tuple(range(1, 11)))



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run: 100 jobs per connection (unless given)")
    parser.add_argument("--connections", type=int, default=200, help="client connections (default 200)")
    parser.add_argument("--jobs-per-connection", type=int, default=None, help="default 500 (--quick: 100)")
    parser.add_argument("--window", type=int, default=50, help="jobs in flight per connection (default 50)")
    parser.add_argument("--workers", type=int, default=3, help="gearnb.Worker processes (default 3)")
    add_server_options(parser)
    parser.add_argument("--worker-child", nargs=2, metavar=("ADDRESS", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker_child:
        worker_child(*args.worker_child)
        return 0
    if args.jobs_per_connection is None:
        args.jobs_per_connection = 100 if args.quick else 500
    kinds = check_options(parser, args.servers, [args.connections, args.jobs_per_connection, args.window, args.workers])
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1024), hard))

    results: list[dict] = []

    def run(logdir: Path) -> None:
        for kind in kinds:
            results.append(load_test(kind, args, logdir))

    logdir, failure = run_guarded(args.deadline, run)
    if results:
        print_load(args, results)
    status = 0
    for r in results:
        problems = load_problems(r)
        if problems:
            print(f"FAIL load, {r['label']}: {'; '.join(problems)}", file=sys.stderr)
            status = 1
    return finish(status, failure, logdir)


if __name__ == "__main__":
    sys.exit(main())
