#!/usr/bin/env python3
"""The memory a queued job costs: gearmand against the gearnb job server.

    python bench/queued_memory.py              # 1,000,000 queued jobs
    python bench/queued_memory.py --quick      # 100,000 queued jobs
    python bench/queued_memory.py --breakdown  # ... and where a queued job's bytes go in the gearnb server

For each job server (gearmand, then ``python -m gearnb server``), each started here on a free
127.0.0.1 port: ``--memory-jobs`` background jobs (default 1,000,000) with a 16-byte payload,
queued with no worker by a pipelining raw-socket client, with a distinct 36-byte unique per job
(as libgearman gives background jobs: a UUID) and, on a fresh server, with an empty unique.
The server's VmRSS (``/proc/PID/status``) before and after gives bytes per queued job. Then a
pipelining raw-socket worker in this process drains the queue (GRAB_JOB, WORK_COMPLETE), the
RSS is read again, and the fill and drain are repeated (``--cycles``, default 2) to show
whether the memory of the first round is reused or grows.

Every step has a time limit (``--timeout``), the whole run ``--deadline``; every process
started here is stopped on exit, error or Ctrl-C (and gets SIGKILL if this one dies). Exit
status 1 if something failed or timed out, or if the gearnb server needs more bytes per queued
job than gearmand (``--no-memory-target`` turns that check off). Many connections at once are
measured by bench/many_connections.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from gearnb.protocol import PacketType, request  # noqa: E402

from _harness import add_server_options, check_options, finish, print_table, run_guarded  # noqa: E402
from _processes import (  # noqa: E402 - bench/, next to this file
    BenchError, _die_with_parent, check_alive, function_status, start_server, stop, wait_until,
)

P = PacketType
MEM_FUNCTION = b"bench_mem"
HEADER = struct.Struct(">4sII")
UNIQUES = {"both": (True, False), "distinct": (True,), "none": (False,)}  # --uniques: distinct uniques or none


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


# -- filling and draining the queue ----------------------------------------------------------
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


def exchange(address: str, timeout: float, what: str, more: Callable[[], bytes],
             on_packet: Callable[[int, memoryview], None], finished: Callable[[], bool]) -> float:
    """One new connection to the server, ``pump``ed until ``finished()``, every response packet
    to ``on_packet``; seconds from connected to finished."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    start = time.perf_counter()
    try:
        pump(sock, timeout, what, more, lambda buf: parse_packets(buf, on_packet), finished)
    finally:
        sock.close()
    return time.perf_counter() - start


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

    seconds = exchange(address, timeout, "fill", more, on_packet, lambda: state["created"] + state["errors"] >= n)
    if state["errors"]:
        raise BenchError(f"fill: {state['errors']} submits answered with ERROR")
    return seconds


def drain(address: str, n: int, window: int, timeout: float) -> float:
    """A raw worker in this process: CAN_DO, ``window`` GRAB_JOBs in flight, WORK_COMPLETE each
    job (result = payload), until ``n`` jobs are done; then ECHO so the server has handled them all."""
    grab = request(P.GRAB_JOB)
    state = {"outstanding": 0, "done": 0, "echoed": False, "echo_sent": False, "bad": 0}
    pending = [request(P.CAN_DO, MEM_FUNCTION)]  # sent first, then GRAB_JOBs

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

    seconds = exchange(address, timeout, "drain", more, on_packet, lambda: state["echoed"])
    if state["bad"]:
        raise BenchError(f"drain: {state['bad']} ERROR replies")
    return seconds


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
    buckets = gearmand_buckets(args)
    options = ["--threads", str(args.gearmand_threads)] + (["--hashtable-buckets", str(buckets)] if buckets else [])
    server, address, label = start_server(kind, logdir, options, gearmand_quiet=("--backlog", "1024"))
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
        check_alive([server], f"{label}: the server", logdir)
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
    submit = server.submit
    for i in range(n):
        # New bytes objects per job, as the server's decoder makes them.
        unique = b"%08x-0000-4000-8000-%012x" % (1, i) if uniques else b""
        submit(1, True, None, (MEM_FUNCTION, unique, b"%016d" % i))
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
    for uniques in UNIQUES[args.uniques]:
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
        print_table(table, right=(1,))


# -- report ----------------------------------------------------------------------------------
def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


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
    print_table(table, right=tuple(range(2, len(head))))


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
    parser.add_argument("--quick", action="store_true", help="a short run: 100,000 queued jobs (unless given)")
    parser.add_argument("--memory-jobs", type=int, default=None, help="default 1,000,000 (--quick: 100,000)")
    parser.add_argument("--uniques", choices=("both", "distinct", "none"), default="both",
                        help="with distinct 36-byte uniques, with none, or both (default)")
    parser.add_argument("--cycles", type=int, default=2, help="fill+drain rounds (default 2)")
    parser.add_argument("--fill-window", type=int, default=20000, help="submits in flight while filling")
    parser.add_argument("--drain-window", type=int, default=200, help="GRAB_JOBs in flight while draining")
    parser.add_argument("--breakdown", action="store_true",
                        help="also show where a queued job's bytes go in the gearnb server (in a child process)")
    parser.add_argument("--no-memory-target", action="store_true",
                        help="do not fail when gearnb needs more bytes per queued job than gearmand")
    parser.add_argument("--gearmand-buckets", type=int, default=None,
                        help="gearmand --hashtable-buckets (default: memory jobs / 4; "
                             "gearmand's own default, 991, is very slow with 1M jobs)")
    add_server_options(parser)
    parser.add_argument("--breakdown-child", nargs=2, metavar=("UNIQUES", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.breakdown_child:
        import json

        print(json.dumps(breakdown(int(args.breakdown_child[1]), args.breakdown_child[0] == "distinct")))
        return 0
    if args.memory_jobs is None:
        args.memory_jobs = 100_000 if args.quick else 1_000_000
    kinds = check_options(parser, args.servers, [args.memory_jobs, args.cycles, args.fill_window, args.drain_window])

    results: list[dict] = []
    breakdowns: list[tuple[bool, list, float]] = []

    def run(logdir: Path) -> None:
        for uniques in UNIQUES[args.uniques]:
            for kind in kinds:
                results.append(memory_test(kind, uniques, args, logdir))
        if args.breakdown and "gearnb" in kinds:
            print("# memory: where the bytes go (gearnb server code in a child process)", file=sys.stderr, flush=True)
            breakdowns.extend(run_breakdowns(args))

    logdir, failure = run_guarded(args.deadline, run)
    if results:
        print_memory(args, results)
    if breakdowns:
        print_breakdowns(args, breakdowns)
    verdicts = memory_verdicts(results)
    if verdicts:
        print("\nMemory target (gearnb at most gearmand's bytes per queued job):")
        print("\n".join("  " + v for v in verdicts))
    status = 1 if any(v.startswith("FAIL") for v in verdicts) and not args.no_memory_target else 0
    return finish(status, failure, logdir)


if __name__ == "__main__":
    sys.exit(main())
