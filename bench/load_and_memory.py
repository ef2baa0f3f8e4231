#!/usr/bin/env python3
"""Many connections at once, and the memory a queued job costs: gearmand against the gearnb job server.

    python bench/load_and_memory.py            # 200 connections x 500 jobs; 1,000,000 queued jobs
    python bench/load_and_memory.py --quick    # 200 x 100 jobs; 100,000 queued jobs

For each job server (gearmand, then ``python -m gearnb server``), each started here on a free
127.0.0.1 port, in one run:

* **load**: ``--connections`` separate TCP client connections (default 200), opened by one
  asyncio (uvloop) driver in this process with ``gearnb.protocol``, each submitting
  ``--jobs-per-connection`` foreground jobs (default 500), ``--window`` of them in flight per
  connection, to ``--workers`` ``gearnb.Worker`` processes (default 3) doing x -> 2x. Every job
  is accounted for: submitted, completed (right result), duplicated (a second WORK_COMPLETE
  for a job, a handle given to two jobs, or a worker running a job twice), wrong, failed,
  lost (submitted but never completed). Anything lost, duplicated, wrong or failed fails the run.
* **memory**: ``--memory-jobs`` background jobs (default 1,000,000) with a 16-byte payload,
  queued with no worker by a pipelining raw-socket client, with a distinct 36-byte unique per job
  (as libgearman gives background jobs: a UUID) and, on a fresh server, with an empty unique.
  The server's VmRSS (``/proc/PID/status``) before and after gives bytes per queued job. Then a
  pipelining raw-socket worker in this process drains the queue (GRAB_JOB, WORK_COMPLETE), the
  RSS is read again, and the fill and drain are repeated (``--cycles``, default 2) to show
  whether the memory of the first round is reused or grows.

Every step has a time limit (``--timeout``), the whole run ``--deadline``; every process
started here is stopped on exit, error or Ctrl-C (and gets SIGKILL if this one dies). Exit
status 1 if a job was lost, duplicated, wrong or failed, if something timed out, or if the
gearnb server needs more bytes per queued job than gearmand (``--no-memory-target`` turns
that check off). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import gearnb  # noqa: E402
from gearnb.protocol import RES, Decoder, PacketType, request  # noqa: E402

P = PacketType
LOAD_FUNCTION = "bench_load"
MEM_FUNCTION = b"bench_mem"
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
HEADER = struct.Struct(">4sII")


from _processes import (  # noqa: E402 - bench/, next to this file
    BenchError, _die_with_parent, answers_echo, free_port, spawn, stop, stop_all, wait_until,
)


def function_status(address: str, name: str) -> tuple[int, int, int]:
    """(total, running, workers) of ``name`` in the server's ``status``; zeros if unknown."""
    with gearnb.Admin(address, timeout=10) as admin:
        for status in admin.status():
            if status.function == name:
                return status.total, status.running, status.workers
    return 0, 0, 0


def start_server(kind: str, args: argparse.Namespace, logdir: Path, buckets: int = 0) -> tuple[subprocess.Popen, str, str]:
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        address = f"127.0.0.1:{port}"
        if kind == "gearmand":
            argv = [GEARMAND, "--listen", "127.0.0.1", "--port", str(port), "--threads", str(args.gearmand_threads),
                    "--backlog", "1024", "--log-file", "none", "--pid-file", str(logdir / f"gearmand-{port}.pid")]
            label = f"gearmand --threads {args.gearmand_threads}"
            if buckets:
                argv += ["--hashtable-buckets", str(buckets)]
                label += f" --hashtable-buckets {buckets}"
        else:
            argv = [sys.executable, "-m", "gearnb", "server", "--host", "127.0.0.1", "--port", str(port)]
            label = "gearnb server"
        proc = spawn(argv, logdir / f"{kind}-{port}.log")
        try:
            wait_until(lambda: answers_echo(address), 15, f"{label} on {address}", proc)
            return proc, address, label
        except BenchError:
            stop(proc)
    raise BenchError(f"could not start {kind}; see {logdir}")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int) -> int:
    """VmRSS once it stops moving (the server may still be freeing or writing)."""
    last = rss_bytes(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_bytes(pid)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


# -- load: many connections ------------------------------------------------------------------
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
        early = sum(proto.closed_early for _t, proto in conns)
        if early:
            raise BenchError(f"the server closed {early} client connections")
        return connect_seconds, seconds
    finally:
        for transport, _proto in conns:
            transport.close()


def load_test(kind: str, args: argparse.Namespace, logdir: Path) -> dict:
    server, address, label = start_server(kind, args, logdir)
    workers: list[subprocess.Popen] = []
    reports = [logdir / f"{kind}-runs-{i}.txt" for i in range(args.workers)]
    try:
        workers = [spawn([sys.executable, __file__, "--worker-child", address, str(report)],
                         logdir / f"{kind}-worker-{i}.log") for i, report in enumerate(reports)]
        wait_until(lambda: function_status(address, LOAD_FUNCTION)[2] >= args.workers, 20,
                   f"{args.workers} workers on {address}")
        print(f"# load: {label} on {address}, {args.connections} connections x {args.jobs_per_connection} jobs, "
              f"{args.workers} workers", file=sys.stderr, flush=True)
        from gearnb.server.listener import new_event_loop

        stats = LoadStats()
        loop = new_event_loop()
        cpu0 = cpu_seconds(server.pid)
        try:
            connect_seconds, seconds = loop.run_until_complete(_load_run(address, args, stats))
        finally:
            loop.close()
        server_cpu = cpu_seconds(server.pid) - cpu0
        total, running, _ = function_status(address, LOAD_FUNCTION)
        for proc in workers:
            if proc.poll() is not None:
                raise BenchError(f"{label}: a worker exited early (status {proc.returncode}); logs in {logdir}")
        for proc in workers:
            stop(proc, grace=15)
        runs = sum(int(r.read_text()) if r.exists() else 0 for r in reports)
        missing_reports = sum(not r.exists() for r in reports)
        if server.poll() is not None:
            raise BenchError(f"{label}: the server exited (status {server.returncode}); logs in {logdir}")
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


# -- memory: many queued jobs ----------------------------------------------------------------
def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def pump(sock: socket.socket, timeout: float, what: str,
         more: Callable[[], bytes], consume: Callable[[memoryview], int], finished: Callable[[], bool]) -> None:
    """One-thread non-blocking loop: write what ``more()`` gives, hand what arrives to ``consume``
    (which returns how many bytes it used), until ``finished()``; at most ``timeout`` s without progress."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    out = memoryview(b"")
    inbuf = bytearray()
    chunk = bytearray(1 << 20)
    view = memoryview(chunk)
    last_progress = time.monotonic()
    try:
        while not finished():
            if not out:
                out = memoryview(more())
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
            events = sel.select(1.0)
            if not events and time.monotonic() - last_progress > timeout:
                raise BenchError(f"{what}: no progress for {timeout:g} s")
            for _key, mask in events:
                if mask & selectors.EVENT_READ:
                    try:
                        n = sock.recv_into(view)
                    except BlockingIOError:
                        n = -1
                    if n == 0:
                        raise BenchError(f"{what}: the server closed the connection")
                    if n > 0:
                        inbuf += view[:n]
                        used = consume(memoryview(inbuf))
                        del inbuf[:used]
                        last_progress = time.monotonic()
                if mask & selectors.EVENT_WRITE and out:
                    try:
                        n = sock.send(out)
                    except BlockingIOError:
                        n = 0
                    out = out[n:]
                    if n:
                        last_progress = time.monotonic()
    finally:
        sel.close()


def parse_packets(buf: memoryview, on_packet: Callable[[int, memoryview], None]) -> int:
    """Call ``on_packet(type, body)`` for each whole response packet in ``buf``; bytes used."""
    pos = 0
    end = len(buf)
    unpack = HEADER.unpack_from
    while end - pos >= 12:
        magic, ptype, size = unpack(buf, pos)
        if magic != b"\0RES":
            raise BenchError(f"bad magic {magic!r} from the server")
        if end - pos - 12 < size:
            break
        on_packet(ptype, buf[pos + 12:pos + 12 + size])
        pos += 12 + size
    return pos


def fill(address: str, n: int, uniques: bool, tag: int, window: int, timeout: float) -> float:
    """Queue ``n`` SUBMIT_JOB_BG with a 16-byte payload, pipelined, ``window`` in flight; seconds."""
    # Every packet has the same size: function, a 36-byte unique (or none), 16 payload bytes.
    sample = b"%08x-0000-4000-8000-%012x" % (tag, 0) if uniques else b""
    body_size = len(MEM_FUNCTION) + 1 + len(sample) + 1 + 16
    head = (HEADER.pack(b"\0REQ", P.SUBMIT_JOB_BG, body_size) + MEM_FUNCTION + b"\0").replace(b"%", b"%%")
    if uniques:
        template = head + b"%08x-0000-4000-8000-%%012x\0%%016d" % tag

        def encode(lo: int, hi: int) -> bytes:
            return b"".join([template % (i, i) for i in range(lo, hi)])
    else:
        template = head + b"\0%016d"

        def encode(lo: int, hi: int) -> bytes:
            return b"".join([template % i for i in range(lo, hi)])
    if encode(7, 8) != request(P.SUBMIT_JOB_BG, MEM_FUNCTION, sample[:-12] + b"%012x" % 7 if uniques else b"",
                               b"%016d" % 7):
        raise BenchError("fill: packet template does not match gearnb.protocol.request")
    state = {"sent": 0, "created": 0, "errors": 0}

    def more() -> bytes:
        inflight = state["sent"] - state["created"] - state["errors"]
        count = min(n - state["sent"], window - inflight, 8192)
        if count < window // 4 and state["sent"] < n and inflight > window // 2:
            return b""  # wait for replies before writing a small chunk
        if count <= 0:
            return b""
        lo = state["sent"]
        state["sent"] += count
        return encode(lo, lo + count)

    def on_packet(ptype: int, body: memoryview) -> None:
        if ptype == P.JOB_CREATED:
            state["created"] += 1
        elif ptype == P.ERROR:
            state["errors"] += 1
        else:
            raise BenchError(f"fill: unexpected packet type {ptype}")

    sock = connect(address)
    start = time.perf_counter()
    try:
        pump(sock, timeout, "fill", more, lambda buf: parse_packets(buf, on_packet),
             lambda: state["created"] + state["errors"] >= n)
    finally:
        sock.close()
    seconds = time.perf_counter() - start
    if state["errors"]:
        raise BenchError(f"fill: {state['errors']} submits answered with ERROR")
    return seconds


def drain(address: str, n: int, window: int, timeout: float) -> float:
    """A raw worker in this process: CAN_DO, ``window`` GRAB_JOBs in flight, WORK_COMPLETE each
    job (result = payload), until ``n`` jobs are done; then ECHO so the server has handled them all."""
    grab = request(P.GRAB_JOB)
    state = {"outstanding": 0, "done": 0, "echoed": False, "echo_sent": False, "bad": 0}
    pending: list[bytes] = []

    def more() -> bytes:
        out = pending[:]
        pending.clear()
        want = min(window, n - state["done"]) - state["outstanding"]
        if want > 0:
            out.append(grab * want)
            state["outstanding"] += want
        if state["done"] >= n and not state["echo_sent"]:
            out.append(request(P.ECHO_REQ, b"drained"))
            state["echo_sent"] = True
        return b"".join(out)

    def on_packet(ptype: int, body: memoryview) -> None:
        if ptype == P.JOB_ASSIGN:
            state["outstanding"] -= 1
            handle, _function, data = bytes(body).split(b"\0", 2)
            pending.append(request(P.WORK_COMPLETE, handle, data))
            state["done"] += 1
        elif ptype == P.NO_JOB:
            state["outstanding"] -= 1
        elif ptype == P.NOOP:
            pass
        elif ptype == P.ECHO_RES:
            state["echoed"] = True
        elif ptype == P.ERROR:
            state["bad"] += 1
        else:
            raise BenchError(f"drain: unexpected packet type {ptype}")

    sock = connect(address)
    start = time.perf_counter()
    try:
        sock.setblocking(True)
        sock.sendall(request(P.CAN_DO, MEM_FUNCTION))
        sock.setblocking(False)
        pump(sock, timeout, "drain", more, lambda buf: parse_packets(buf, on_packet), lambda: state["echoed"])
    finally:
        sock.close()
    if state["bad"]:
        raise BenchError(f"drain: {state['bad']} ERROR replies")
    return time.perf_counter() - start


def wait_total(address: str, expected: int, timeout: float) -> None:
    wait_until(lambda: function_status(address, MEM_FUNCTION.decode())[0] == expected, timeout,
               f"status showing {expected} jobs of {MEM_FUNCTION.decode()}")


def gearmand_buckets(args: argparse.Namespace) -> int:
    """gearmand's --hashtable-buckets for the memory test: its default 991 makes every lookup
    walk a chain of ~jobs/991 entries (1M jobs: ~2,600 submits/s and ~3,800 completions/s here),
    so by default one bucket per 4 queued jobs (4 bytes of the per-job figure at 16 bytes a bucket
    pair); ``--gearmand-buckets 991`` measures gearmand's default."""
    if args.gearmand_buckets is not None:
        return args.gearmand_buckets
    return max(991, args.memory_jobs // 4 + 1)


def memory_test(kind: str, uniques: bool, args: argparse.Namespace, logdir: Path) -> dict:
    n = args.memory_jobs
    server, address, label = start_server(kind, args, logdir, buckets=gearmand_buckets(args))
    try:
        print(f"# memory: {label} on {address}, {n:,} background jobs, "
              f"{'distinct uniques' if uniques else 'no unique'}", file=sys.stderr, flush=True)
        # Warm up (every code path once, buffers allocated), then the baseline.
        fill(address, 1000, uniques, 0xFFFF, args.fill_window, args.timeout)
        drain(address, 1000, args.drain_window, args.timeout)
        wait_total(address, 0, args.timeout)
        before = settled_rss(server.pid)
        cycles = []
        for cycle in range(args.cycles):
            fill_s = fill(address, n, uniques, cycle, args.fill_window, args.timeout)
            wait_total(address, n, args.timeout)
            full = settled_rss(server.pid)
            drain_s = drain(address, n, args.drain_window, args.timeout)
            wait_total(address, 0, args.timeout)
            drained = settled_rss(server.pid)
            cycles.append({"full": full, "drained": drained, "fill_s": fill_s, "drain_s": drain_s})
            print(f"#   cycle {cycle + 1}: RSS full {full / 2**20:.1f} MiB, drained {drained / 2**20:.1f} MiB; "
                  f"fill {n / fill_s:,.0f} jobs/s, drain {n / drain_s:,.0f} jobs/s", file=sys.stderr, flush=True)
        if server.poll() is not None:
            raise BenchError(f"{label}: the server exited (status {server.returncode}); logs in {logdir}")
    finally:
        stop(server)
    return {"label": label, "uniques": uniques, "jobs": n, "before": before, "cycles": cycles,
            "per_job": (cycles[0]["full"] - before) / n}


def breakdown(n: int, uniques: bool) -> tuple[list[tuple[str, float]], float]:
    """Where a queued job's bytes go in the gearnb server: the same jobs queued on a
    ``JobServer`` in this process, each object's ``sys.getsizeof`` rounded up to pymalloc's
    16-byte size classes (objects of more than 512 bytes, the containers' tables, are not
    rounded). Returns (rows of (what, bytes per job), this process's RSS growth per job)."""
    import gc
    from collections import Counter

    from gearnb.server.core import JobServer

    def rounded(size: int) -> int:
        return (size + 15) // 16 * 16 if size <= 512 else size

    server = JobServer()
    server.function(MEM_FUNCTION)
    gc.collect()
    rss0 = rss_bytes(os.getpid())
    add = server.add_job
    for i in range(n):
        # New bytes objects per job, as the server's decoder makes them.
        unique = b"%08x-0000-4000-8000-%012x" % (1, i) if uniques else b""
        add(None, MEM_FUNCTION, unique, b"%016d" % i, 1, True)
    rss1 = rss_bytes(os.getpid())
    per_slot: Counter[str] = Counter()
    kinds: dict[str, str] = {}
    job_size = 0
    for job in server.jobs.values():
        job_size += rounded(sys.getsizeof(job))
        seen = set()
        for slot in type(job).__slots__:
            value = getattr(job, slot, None)
            # Count the objects this job has for itself, each once (Job.key is Job.unique);
            # not the ones shared by many jobs (b"0", b"", (), the Function, small ints).
            if (isinstance(value, (bytes, list, tuple, dict)) and id(value) not in seen
                    and sys.getrefcount(value) < 100):
                seen.add(id(value))
                per_slot[slot] += rounded(sys.getsizeof(value))
                kinds[slot] = type(value).__name__
    function = server.functions[MEM_FUNCTION]
    slots = len(type(next(iter(server.jobs.values()))).__slots__)
    rows = [(f"Job object ({slots} __slots__)", job_size / n)]
    rows += [(f"Job.{slot} ({kinds[slot]})", size / n) for slot, size in per_slot.items()]
    rows.append(("JobServer.jobs dict (handle -> job)", sys.getsizeof(server.jobs) / n))
    rows.append(("Function.by_unique dict (unique -> job)", sys.getsizeof(function.by_unique) / n))
    queues = function.queues
    empty = sum(sys.getsizeof(type(q)()) for q in queues)
    rows.append((f"Function.queues ({type(queues[0]).__name__})", (sum(sys.getsizeof(q) for q in queues) - empty) / n))
    del server, function, queues
    gc.collect()
    return rows, (rss1 - rss0) / n


def run_breakdowns(args: argparse.Namespace) -> list[tuple[bool, list, float]]:
    import json

    results = []
    for uniques in {"both": (True, False), "distinct": (True,), "none": (False,)}[args.uniques]:
        # A fresh process each, so that its RSS growth is not helped by memory freed earlier.
        child = subprocess.run([sys.executable, __file__, "--breakdown-child", "distinct" if uniques else "none",
                                str(args.memory_jobs)], capture_output=True, text=True, timeout=args.timeout,
                               preexec_fn=_die_with_parent)
        if child.returncode:
            raise BenchError(f"breakdown: {child.stderr.strip()[-2000:]}")
        rows, rss_per_job = json.loads(child.stdout)
        results.append((uniques, rows, rss_per_job))
    return results


def print_breakdowns(args: argparse.Namespace, results: list[tuple[bool, list, float]]) -> None:
    for uniques, rows, rss_per_job in results:
        table = [("what", "bytes/job")]
        table += [(what, f"{size:,.1f}") for what, size in rows]
        table.append(("sum", f"{sum(size for _w, size in rows):,.1f}"))
        table.append(("RSS growth of that process", f"{rss_per_job:,.1f}"))
        print(f"\nWhere a queued job's bytes go in the gearnb server ({args.memory_jobs:,} background jobs queued "
              f"on a JobServer in a fresh process, {'36-byte distinct uniques' if uniques else 'no unique'}):")
        _print_table(table, right=(1,))


# -- report ----------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def _print_table(table: list[tuple[str, ...]], right: tuple[int, ...]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print(" | ".join(cells).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


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
    _print_table(table, right=tuple(range(1, 11)))


def print_memory(args: argparse.Namespace, results: list[dict]) -> None:
    head = ["server", "unique", "queued jobs", "RSS before MiB", "RSS full MiB", "bytes/job"]
    for c in range(1, args.cycles + 1):
        if c > 1:
            head.append(f"full #{c} MiB")
        head.append(f"drained #{c} MiB" if args.cycles > 1 else "drained MiB")
    head += ["fill jobs/s", "drain jobs/s"]
    table = [tuple(head)]
    for r in results:
        row = [r["label"], "36-byte distinct" if r["uniques"] else "none", f"{r['jobs']:,}", mib(r["before"]),
               mib(r["cycles"][0]["full"]), f"{r['per_job']:,.0f}"]
        for c, cycle in enumerate(r["cycles"]):
            if c > 0:
                row.append(mib(cycle["full"]))
            row.append(mib(cycle["drained"]))
        row += [f"{r['jobs'] / r['cycles'][0]['fill_s']:,.0f}", f"{r['jobs'] / r['cycles'][0]['drain_s']:,.0f}"]
        table.append(tuple(row))
    print(f"\nMemory: {args.memory_jobs:,} queued background jobs, 16-byte payload, no worker; "
          f"server VmRSS before, when full (bytes/job = growth / jobs), after a raw worker drained them"
          + (f"; {args.cycles} fill+drain cycles" if args.cycles > 1 else ""))
    _print_table(table, right=tuple(range(2, len(head))))


def memory_verdicts(results: list[dict]) -> list[str]:
    """gearnb's bytes per queued job against gearmand's, for each unique setting measured on both."""
    lines = []
    for uniques in (True, False):
        ref = [r for r in results if r["uniques"] == uniques and r["label"].startswith("gearmand")]
        ours = [r for r in results if r["uniques"] == uniques and r["label"].startswith("gearnb")]
        if ref and ours:
            a, b = ref[0]["per_job"], ours[0]["per_job"]
            ok = b <= a
            lines.append(f"{'ok  ' if ok else 'FAIL'} {'distinct uniques' if uniques else 'no unique'}: gearnb "
                         f"{b:,.0f} bytes/job vs gearmand {a:,.0f} ({b / a:.0%})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 100 jobs per connection and 100,000 queued jobs (unless given)")
    parser.add_argument("--parts", default="load,memory", help="load, memory or both (default)")
    parser.add_argument("--servers", default="gearmand,gearnb", help="which servers, in order (default both)")
    parser.add_argument("--connections", type=int, default=200, help="client connections for the load test")
    parser.add_argument("--jobs-per-connection", type=int, default=None, help="default 500 (--quick: 100)")
    parser.add_argument("--window", type=int, default=50, help="jobs in flight per load connection (default 50)")
    parser.add_argument("--workers", type=int, default=3, help="gearnb.Worker processes for the load test")
    parser.add_argument("--memory-jobs", type=int, default=None, help="default 1,000,000 (--quick: 100,000)")
    parser.add_argument("--uniques", choices=("both", "distinct", "none"), default="both",
                        help="memory test with distinct 36-byte uniques, with none, or both (default)")
    parser.add_argument("--cycles", type=int, default=2, help="fill+drain rounds in the memory test (default 2)")
    parser.add_argument("--fill-window", type=int, default=20000, help="submits in flight while filling")
    parser.add_argument("--drain-window", type=int, default=200, help="GRAB_JOBs in flight while draining")
    parser.add_argument("--breakdown", action="store_true",
                        help="also show where a queued job's bytes go in the gearnb server (in this process)")
    parser.add_argument("--no-memory-target", action="store_true",
                        help="do not fail when gearnb needs more bytes per queued job than gearmand")
    parser.add_argument("--gearmand-threads", type=int, default=0, help="gearmand --threads (default 0)")
    parser.add_argument("--gearmand-buckets", type=int, default=None,
                        help="gearmand --hashtable-buckets in the memory test (default: memory jobs / 4; "
                             "gearmand's own default, 991, is very slow with 1M jobs)")
    parser.add_argument("--timeout", type=float, default=300, help="limit for each step, s (default 300)")
    parser.add_argument("--deadline", type=float, default=1800, help="limit for the whole run, s (default 1800)")
    parser.add_argument("--worker-child", nargs=2, metavar=("ADDRESS", "REPORT"), help=argparse.SUPPRESS)
    parser.add_argument("--breakdown-child", nargs=2, metavar=("UNIQUES", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker_child:
        worker_child(*args.worker_child)
        return 0
    if args.breakdown_child:
        import json

        print(json.dumps(breakdown(int(args.breakdown_child[1]), args.breakdown_child[0] == "distinct")))
        return 0
    if args.jobs_per_connection is None:
        args.jobs_per_connection = 100 if args.quick else 500
    if args.memory_jobs is None:
        args.memory_jobs = 100_000 if args.quick else 1_000_000
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or not parts <= {"load", "memory"}:
        parser.error("--parts takes load, memory or load,memory")
    for kind in kinds:
        if kind not in ("gearmand", "gearnb"):
            parser.error(f"unknown server {kind!r} (gearmand or gearnb)")
    if "gearmand" in kinds and not os.access(GEARMAND, os.X_OK):
        parser.error(f"gearmand not found ({GEARMAND}); install it or pass --servers gearnb")
    if min(args.connections, args.jobs_per_connection, args.window, args.workers, args.memory_jobs,
           args.cycles, args.fill_window, args.drain_window) < 1:
        parser.error("counts must be at least 1")
    if "load" in parts:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < args.connections + 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1024), hard))

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else BenchError(f"stopped by signal {signum}")

    def on_alarm(_signum: int, _frame: object) -> None:
        raise BenchError(f"the whole run took longer than --deadline {args.deadline:g} s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.deadline)))
    load_results: list[dict] = []
    memory_results: list[dict] = []
    logdir = Path(tempfile.mkdtemp(prefix="gearnb-bench-"))
    failure = None
    breakdowns: list[tuple[bool, list, float]] = []
    try:
        if "load" in parts:
            for kind in kinds:
                load_results.append(load_test(kind, args, logdir))
        if "memory" in parts:
            variants = {"both": (True, False), "distinct": (True,), "none": (False,)}[args.uniques]
            for uniques in variants:
                for kind in kinds:
                    memory_results.append(memory_test(kind, uniques, args, logdir))
            if args.breakdown and "gearnb" in kinds:
                print("# memory: where the bytes go (gearnb server code in a child process)", file=sys.stderr,
                      flush=True)
                breakdowns = run_breakdowns(args)
    except (BenchError, KeyboardInterrupt) as exc:
        failure = f"benchmark aborted: {exc or type(exc).__name__}; logs in {logdir}"
    finally:
        signal.alarm(0)
        stop_all()
    if load_results:
        print_load(args, load_results)
    if memory_results:
        print_memory(args, memory_results)
    if breakdowns:
        print_breakdowns(args, breakdowns)
    verdicts = memory_verdicts(memory_results)
    if verdicts:
        print("\nMemory target (gearnb at most gearmand's bytes per queued job):")
        print("\n".join("  " + v for v in verdicts))
    status = 0
    for r in load_results:
        problems = load_problems(r)
        if problems:
            print(f"FAIL load, {r['label']}: {'; '.join(problems)}", file=sys.stderr)
            status = 1
    if any(v.startswith("FAIL") for v in verdicts) and not args.no_memory_target:
        status = 1
    if failure:
        print(f"\n{failure}", file=sys.stderr)
        return 1
    if status == 0:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"logs in {logdir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
