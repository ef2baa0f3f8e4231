#!/usr/bin/env python3
"""Jobs per second and one-at-a-time latency: gearmand against the gearnb job server.

    python bench/jobs_per_second.py [--jobs 20000] [--workers 2] [--latency-jobs 2000]

For each job server (gearmand with ``--threads 0`` and with its default 4, then
``python -m gearnb server``), started here on a free 127.0.0.1 port, the script starts ``--workers`` worker processes (``gearnb.Worker`` serving
``bench_double``: x -> 2x, payloads are small ASCII integers) and measures, on the same
server and workers:

* throughput with three clients, each keeping many jobs in flight on one connection:
  ``raw``      a pipelining client written with ``gearnb.protocol`` over a plain
               blocking socket (no gearnb Client code: measures the server and workers);
  ``TaskSet``  ``gearnb.Client`` + ``TaskSet``: every job added, then ``wait()``;
  ``AsyncClient`` ``gearnb.AsyncClient`` on a uvloop loop in this process;
* latency of one job at a time (``Client.do`` in a loop, and the raw socket doing the same).

The servers are measured in turn (run 1 on each, then run 2, ...), so that the machine's
drift over minutes does not land in the comparison. Last, the gearnb server's jobs/s over
each gearmand's and the Gearman-layer issue's targets.
Every result is checked (2x). Every step has a time limit, the whole run has ``--deadline``,
and every process started here is stopped on exit, error or Ctrl-C (children also get
SIGKILL from the kernel if this process dies: PR_SET_PDEATHSIG). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import gearnb  # noqa: E402
from gearnb.protocol import RES, Decoder, PacketType, request  # noqa: E402

P = PacketType
FUNCTION = "bench_double"
FUNCTION_B = FUNCTION.encode()
GEARNB_LABEL = "gearnb server (uvloop)"
# gearmand's own default for --threads (gearmand --help: "Default=4"); Debian runs it so.
GEARMAND_DEFAULT_THREADS = 4
# The targets of the Gearman-layer issue: gearnb client + workers through gearmand at least
# 10,000 jobs/s, through the gearnb server at least 0.7x that, one-at-a-time p50 <= 250 us.
TARGET_JOBS_PER_SECOND = 10_000
TARGET_RATIO = 0.7
TARGET_P50_SECONDS = 250e-6
# The latency runs alternate between the servers in this many slices (see bench_servers).
LATENCY_ROUNDS = 10
CLIENT_NAMES = {"raw": "raw socket", "taskset": "gearnb Client+TaskSet", "async": "gearnb AsyncClient"}


from _harness import check_deadline, check_options, finish, print_table, run_guarded  # noqa: E402 - bench/, next to this file
from _processes import (  # noqa: E402
    BenchError, check_alive, cpu_seconds, function_status, spawn, start_server, stop, wait_until,
)


def start_workers(address: str, count: int, logdir: Path) -> list[subprocess.Popen]:
    procs = [spawn([sys.executable, __file__, "--worker-child", address], logdir / f"worker-{i}.log")
             for i in range(count)]
    def ready() -> bool:
        for proc in procs:
            if proc.poll() is not None:
                raise BenchError(f"a worker exited with status {proc.returncode}; see {logdir}")
        return function_status(address, FUNCTION, timeout=2)[2] >= count

    wait_until(ready, 20, f"{count} workers on {address}")
    return procs


def worker_child(address: str) -> None:
    worker = gearnb.Worker(address, client_id=f"bench-{os.getpid()}")

    @worker.function(FUNCTION)
    def double(job: gearnb.Job) -> bytes:
        return b"%d" % (2 * int(job.data))

    worker.work()  # until SIGTERM


# -- clients ---------------------------------------------------------------------------------
def raw_socket(address: str, timeout: float) -> socket.socket:
    """A blocking socket whose recv/send fail after ``timeout`` s (SO_RCVTIMEO/SO_SNDTIMEO):
    one system call per recv or send, no poll() before each as ``settimeout`` would add."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    return sock


def raw_pipelined(address: str, n: int, window: int, timeout: float) -> float:
    """SUBMIT_JOB over a plain socket with ``window`` jobs in flight; returns seconds.

    As little client work as possible: packets are encoded before the clock starts, and each
    turn is one recv() and one send() of as many new submits as jobs just completed.
    """
    packets = [request(P.SUBMIT_JOB, FUNCTION_B, b"", b"%d" % i) for i in range(n)]
    expected = [b"%d" % (2 * i) for i in range(n)]
    decoder = Decoder(RES)
    submitted: deque[int] = deque()  # job numbers waiting for JOB_CREATED, in order
    by_handle: dict[bytes, int] = {}
    done = bad = 0
    buffer = memoryview(bytearray(1 << 18))  # recv_into: no 256 KiB allocation per recv
    sock = raw_socket(address, timeout)
    try:
        start = time.perf_counter()
        deadline = start + timeout
        sent = min(window, n)
        sock.sendall(b"".join(packets[:sent]))
        submitted.extend(range(sent))
        while done < n:
            if time.perf_counter() > deadline:
                raise BenchError(f"raw client: {done}/{n} jobs done after {timeout:g} s")
            try:
                size = sock.recv_into(buffer)
            except BlockingIOError:
                raise BenchError(f"raw client: no reply for {timeout:g} s ({done}/{n} jobs done)") from None
            if not size:
                raise BenchError("raw client: the server closed the connection")
            finished = 0
            for packet in decoder.feed(buffer[:size]):
                ptype = packet.type
                if ptype == P.WORK_COMPLETE:
                    if packet.args[1] != expected[by_handle.pop(packet.args[0])]:
                        bad += 1
                    finished += 1
                elif ptype == P.JOB_CREATED:
                    by_handle[packet.args[0]] = submitted.popleft()
                else:
                    raise BenchError(f"raw client: unexpected {packet!r}")
            done += finished
            more = min(finished, n - sent)
            if more:
                sock.sendall(b"".join(packets[sent:sent + more]))
                submitted.extend(range(sent, sent + more))
                sent += more
        elapsed = time.perf_counter() - start
    finally:
        sock.close()
    if bad:
        raise BenchError(f"raw client: {bad} wrong results")
    return elapsed


def raw_latency(address: str, n: int, timeout: float) -> list[float]:
    """One SUBMIT_JOB at a time over a blocking socket; returns each job's seconds."""
    sock = raw_socket(address, timeout)
    decoder = Decoder(RES)
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            sock.sendall(request(P.SUBMIT_JOB, FUNCTION_B, b"", b"%d" % i))
            result = None
            while result is None:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    raise BenchError(f"raw latency: no reply for {timeout:g} s") from None
                if not data:
                    raise BenchError("raw latency: the server closed the connection")
                for packet in decoder.feed(data):
                    if packet.type == P.WORK_COMPLETE:
                        result = packet.args[1]
            times.append(time.perf_counter() - t0)
            if result != b"%d" % (2 * i):
                raise BenchError(f"raw latency: wrong result {result!r} for {i}")
    finally:
        sock.close()
    return times


def taskset_throughput(address: str, n: int, timeout: float) -> float:
    client = gearnb.Client(address)
    try:
        client.echo(timeout=10)  # connect outside the timing
        start = time.perf_counter()
        taskset = gearnb.TaskSet(client)
        tasks = [taskset.add(gearnb.Task(FUNCTION, b"%d" % i)) for i in range(n)]
        if not taskset.wait(timeout):
            raise BenchError(f"TaskSet: {sum(t.finished for t in tasks)}/{n} jobs done after {timeout:g} s")
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    bad = sum(1 for i, t in enumerate(tasks) if not t.successful or t.result != b"%d" % (2 * i))
    if bad:
        raise BenchError(f"TaskSet: {bad} jobs failed or gave wrong results")
    return elapsed


def async_throughput(address: str, n: int, window: int, timeout: float) -> float:
    from gearnb._loop import new_event_loop

    async def run() -> float:
        async with gearnb.AsyncClient(address) as client:
            await client.echo()  # connect outside the timing
            start = time.perf_counter()
            inflight: deque[tuple[int, gearnb.Task]] = deque()
            bad = 0
            limit = window
            for i in range(n):
                if len(inflight) >= limit:
                    j, task = inflight.popleft()
                    await client.wait(task)
                    bad += task.result != b"%d" % (2 * j)
                inflight.append((i, client.submit(gearnb.Task(FUNCTION, b"%d" % i))))
            while inflight:
                j, task = inflight.popleft()
                await client.wait(task)
                bad += task.result != b"%d" % (2 * j)
            elapsed = time.perf_counter() - start
            if bad:
                raise BenchError(f"AsyncClient: {bad} jobs failed or gave wrong results")
            return elapsed

    async def bounded() -> float:
        return await asyncio.wait_for(run(), timeout)

    loop = new_event_loop()
    try:
        return loop.run_until_complete(bounded())
    except asyncio.TimeoutError:
        raise BenchError(f"AsyncClient: not done after {timeout:g} s") from None
    finally:
        loop.close()


def client_latency(address: str, n: int, timeout: float) -> list[float]:
    client = gearnb.Client(address)
    times = []
    try:
        client.echo(timeout=10)
        for i in range(n):
            t0 = time.perf_counter()
            result = client.do(FUNCTION, b"%d" % i, timeout=timeout)
            times.append(time.perf_counter() - t0)
            if result != b"%d" % (2 * i):
                raise BenchError(f"Client.do: wrong result {result!r} for {i}")
    finally:
        client.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# -- main ------------------------------------------------------------------------------------
def measured(run: Callable[[], float], server: subprocess.Popen, workers: list[subprocess.Popen]) -> tuple:
    """Run one throughput measurement; also the CPU seconds the server, the workers and
    this process (the client, all its threads) used meanwhile."""
    before = [cpu_seconds(server.pid), sum(cpu_seconds(w.pid) for w in workers), time.process_time()]
    seconds = run()
    after = [cpu_seconds(server.pid), sum(cpu_seconds(w.pid) for w in workers), time.process_time()]
    return (seconds, *(a - b for a, b in zip(after, before)))


class ServerUnderTest:
    """One job server and its worker processes, started once and kept for the whole run."""

    def __init__(self, kind: str, args: argparse.Namespace, logdir: Path, gearmand_threads: int = 0) -> None:
        self.server, self.address, self.label = start_server(
            kind, logdir, ["--threads", str(gearmand_threads)], gearnb_label=GEARNB_LABEL)
        if kind == "gearmand" and gearmand_threads == GEARMAND_DEFAULT_THREADS:
            self.label += " (its default)"
        self.workers: list[subprocess.Popen] = []
        try:
            self.workers = start_workers(self.address, args.workers, logdir)
        except BaseException:
            self.stop()
            raise
        print(f"# {self.label} on {self.address}, {args.workers} workers", file=sys.stderr, flush=True)
        raw_pipelined(self.address, min(2000, args.jobs), args.window, args.timeout)  # warm-up

    def throughput_runs(self, args: argparse.Namespace) -> list[tuple[str, str, Callable[[], float]]]:
        address = self.address
        return [
            ("raw", f"raw socket, {args.window} in flight",
             lambda: raw_pipelined(address, args.jobs, args.window, args.timeout)),
            ("taskset", "gearnb Client+TaskSet, all in flight",
             lambda: taskset_throughput(address, args.jobs, args.timeout)),
            ("async", f"gearnb AsyncClient, {args.window} in flight",
             lambda: async_throughput(address, args.jobs, args.window, args.timeout)),
        ]

    def stop(self) -> None:
        for proc in self.workers:
            stop(proc)
        stop(self.server)


def bench_servers(under_test: list[ServerUnderTest], args: argparse.Namespace, logdir: Path,
                  rows: list, lat_rows: list) -> None:
    """Every measurement is taken on each server in turn (run 1 on every server, then run 2,
    ...): this VM's speed drifts by 1.5-2x over minutes, and taking all of one server's runs
    before the next one's put that drift into the ratios. Idle servers' workers sleep."""
    for index, (key, name, _run) in enumerate(under_test[0].throughput_runs(args)):
        if key not in args.clients:
            continue
        runs: dict[str, list[tuple]] = {s.label: [] for s in under_test}
        for _ in range(args.repeat):
            for s in under_test:
                run = s.throughput_runs(args)[index][2]
                runs[s.label].append(measured(run, s.server, s.workers))
                check_deadline()
        rows.extend((s.label, name, args.jobs, runs[s.label], key) for s in under_test)
    if args.latency_jobs:
        # In LATENCY_ROUNDS slices, each server in turn, for the same reason.
        chunk = max(1, args.latency_jobs // LATENCY_ROUNDS)
        for client, measure in (("raw socket", raw_latency), ("gearnb Client.do", client_latency)):
            times: dict[str, list[float]] = {s.label: [] for s in under_test}
            for s in under_test:
                measure(s.address, 50, args.timeout)  # warm-up
            done = 0
            while done < args.latency_jobs:
                n = min(chunk, args.latency_jobs - done)
                for s in under_test:
                    times[s.label] += measure(s.address, n, args.timeout)
                done += n
                check_deadline()
            lat_rows.extend((s.label, client, times[s.label]) for s in under_test)
    for s in under_test:
        check_alive([s.server, *s.workers], f"{s.label}: a process", logdir)


def print_tables(args: argparse.Namespace, rows: list, lat_rows: list) -> None:
    several = args.repeat > 1
    head = ["server", "client", "jobs", "seconds", "jobs/s"]
    if several:
        head.append("median jobs/s")
    head += ["CPU us/job: server", "workers", "client"]
    table = [tuple(head)]
    for label, client, jobs, runs, _key in rows:
        best = min(runs)  # the fastest run; its CPU columns
        seconds, server_cpu, workers_cpu, client_cpu = best
        row = [label, client, str(jobs), f"{seconds:.3f}", f"{jobs / seconds:,.0f}"]
        if several:
            row.append(f"{jobs / statistics.median(r[0] for r in runs):,.0f}")
        row += [f"{1e6 * server_cpu / jobs:.1f}", f"{1e6 * workers_cpu / jobs:.1f}", f"{1e6 * client_cpu / jobs:.1f}"]
        table.append(tuple(row))
    lat = [("server", "client (one job at a time)", "jobs", "p50 ms", "p99 ms", "mean ms")]
    for label, client, times in lat_rows:
        lat.append((label, client, str(len(times)), f"{percentile(times, 50) * 1e3:.3f}",
                    f"{percentile(times, 99) * 1e3:.3f}", f"{statistics.fmean(times) * 1e3:.3f}"))
    print(f"\nThroughput: {args.jobs} jobs '{FUNCTION}' (x -> 2x), {args.workers} gearnb.Worker processes, "
          f"one client connection; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    if several:
        print(f"(best of {args.repeat} runs per row, and the median; CPU columns are for the best run)")
    print_table(table, right=tuple(range(2, len(head))))
    if len(lat) > 1:
        print(f"\nLatency: {args.latency_jobs} jobs one at a time (submit, wait for WORK_COMPLETE), same workers")
        print_table(lat, right=(2, 3, 4, 5))
    print_targets(rows, lat_rows)


def print_targets(rows: list, lat_rows: list) -> None:
    """The gearnb server's best jobs/s over each gearmand's, per client, and the targets."""
    best = {(label, key): jobs / min(runs)[0] for label, _client, jobs, runs, key in rows}
    keys = [k for k in CLIENT_NAMES if (GEARNB_LABEL, k) in best]
    gearmands = sorted({label for label, _ in best if label.startswith("gearmand")})
    if keys and gearmands:
        table = [("gearnb server jobs/s over", *(CLIENT_NAMES[k] for k in keys))]
        for label in gearmands:
            table.append((label, *(f"{best[(GEARNB_LABEL, k)] / best[(label, k)]:.2f}x"
                                   if (label, k) in best else "-" for k in keys)))
        print(f"\nRatio of best runs (target: {TARGET_RATIO}x or more for the gearnb clients)")
        print_table(table, right=tuple(range(1, len(keys) + 1)))
    for label, client, times in lat_rows:
        if label == GEARNB_LABEL and client == "gearnb Client.do":
            p50 = percentile(times, 50)
            verdict = "PASS" if p50 <= TARGET_P50_SECONDS else "MISS"
            print(f"gearnb Client.do through the gearnb server: p50 {p50 * 1e6:.0f} us "
                  f"(target <= {TARGET_P50_SECONDS * 1e6:.0f} us) {verdict}")
    for label in gearmands:
        rates = [best[(label, k)] for k in ("taskset", "async") if (label, k) in best]
        if rates:
            verdict = "PASS" if max(rates) >= TARGET_JOBS_PER_SECOND else "MISS"
            print(f"gearnb client + workers through {label}: {max(rates):,.0f} jobs/s "
                  f"(target >= {TARGET_JOBS_PER_SECOND:,}) {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per throughput run (default 20000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--latency-jobs", type=int, default=2000,
                        help="jobs for the one-at-a-time latency runs (default 2000; 0 skips them)")
    parser.add_argument("--window", type=int, default=1000,
                        help="jobs in flight for the raw and AsyncClient runs (default 1000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="throughput runs per client; the table shows the best and the median (default 3)")
    parser.add_argument("--servers", default="gearmand,gearnb", help="which servers, in order (default both)")
    parser.add_argument("--clients", default="raw,taskset,async",
                        help="which throughput clients: raw, taskset, async (default all three)")
    parser.add_argument("--gearmand-threads", default=f"0,{GEARMAND_DEFAULT_THREADS}",
                        help="gearmand --threads settings, each measured (default '0,4': one thread doing I/O "
                             "and processing, the fastest here; and gearmand's own default, 4 I/O threads)")
    parser.add_argument("--timeout", type=float, default=120, help="limit for each measurement, s (default 120)")
    parser.add_argument("--deadline", type=float, default=900, help="limit for the whole run, s (default 900)")
    parser.add_argument("--worker-child", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker_child:
        worker_child(args.worker_child)
        return 0
    kinds = check_options(parser, args.servers)
    args.clients = {c.strip() for c in args.clients.split(",") if c.strip()}
    if not args.clients <= {"raw", "taskset", "async"}:
        parser.error("unknown client in --clients (raw, taskset, async)")
    if args.jobs < 1 or args.workers < 1 or args.window < 1:
        parser.error("--jobs, --workers and --window must be at least 1")
    rows: list = []
    lat_rows: list = []

    try:
        threads = [int(t) for t in args.gearmand_threads.split(",") if t.strip()]
    except ValueError:
        parser.error("--gearmand-threads takes numbers, such as 0,4")

    def run(logdir: Path) -> None:
        under_test: list[ServerUnderTest] = []
        try:
            for kind in kinds:
                for count in threads if kind == "gearmand" else [0]:
                    under_test.append(ServerUnderTest(kind, args, logdir, gearmand_threads=count))
            bench_servers(under_test, args, logdir, rows, lat_rows)
        finally:
            for s in under_test:
                s.stop()

    logdir, failure = run_guarded(args.deadline, run)
    if rows or lat_rows or not failure:
        print_tables(args, rows, lat_rows)
    return finish(0, failure, logdir)


if __name__ == "__main__":
    sys.exit(main())
