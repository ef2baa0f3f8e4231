#!/usr/bin/env python3
"""Large payloads through a job server: gearmand against the gearnb server.

    python bench/big_transfer.py                      # 64 MiB x 5 and 1 GiB x 2 round trips
    python bench/big_transfer.py --mib 64,256 --rounds 3
    python bench/big_transfer.py --only gearnb

For each job server (``gearmand``, then ``python -m gearnb server``), started here on a free
127.0.0.1 port: one ``gearnb.Worker`` process serving ``echo`` (the job's data back as its
result) and a ``gearnb.Client`` in this process send ``--mib`` MiB payloads through the server
and back, ``--rounds`` round trips each size. Per size: the median round trip, MB/s counting
2 x size moved per round trip (there and back; MB = 10^6 bytes), the job server's CPU time per
round trip (/proc), and its peak resident memory (VmHWM) after all sizes. Every result is
compared with what was sent. No Python-level Gearman work happens in gearmand, so the gearnb
column shows what the Python server's receive and send paths cost on top of the same
client and worker. See bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import gearnb  # noqa: E402

from _processes import (  # noqa: E402 - bench/, next to this file
    BenchError, answers_echo, cpu_seconds, free_port, spawn, start_server, stop, wait_until,
)

FUNCTION = "bench_echo"
# Room above the largest payload for the packet's other fields (the protocol's field is 32 bits).
LIMIT = 0xFFFFFFFF


def worker_child(address: str) -> None:
    worker = gearnb.Worker(address, max_packet_size=LIMIT)
    worker.register(FUNCTION, lambda job: job.data)
    worker.work()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def payload(size: int) -> bytes:
    pattern = bytes(range(256))
    return pattern * (size // 256) + pattern[: size % 256]


def run_server(kind: str, sizes: list[int], rounds: int, logdir: Path) -> dict[int, dict[str, float]]:
    if kind == "gearmand":
        server, address, _ = start_server(kind, logdir, [], ("--threads", "0"))
    else:  # with a limit above the largest payload (the default differs between trees)
        port = free_port()
        address = f"127.0.0.1:{port}"
        server = spawn([sys.executable, "-m", "gearnb", "server", "--port", str(port),
                        "--max-packet-size", str(LIMIT)], logdir / f"gearnb-{port}.log")
        wait_until(lambda: answers_echo(address), 15, f"gearnb server on {address}", server)
    worker = spawn([sys.executable, str(Path(__file__).resolve()), "--child-worker", address],
                   logdir / f"worker-{kind}.log")
    results: dict[int, dict[str, float]] = {}
    client = gearnb.Client(address, max_packet_size=LIMIT)
    try:
        wait_until(lambda: any(s.function == FUNCTION and s.workers for s in gearnb.Admin(address).status()),
                   30, f"the echo worker on {kind}", worker)
        for size in sizes:
            data = payload(size)
            times = []
            cpu = []
            for _ in range(rounds):
                before = cpu_seconds(server.pid)
                started = time.perf_counter()
                back = client.do(FUNCTION, data, timeout=600)
                times.append(time.perf_counter() - started)
                cpu.append(cpu_seconds(server.pid) - before)
                if back != data:
                    raise BenchError(f"{kind}: the {size}-byte payload came back different")
                del back
            median = statistics.median(times)
            results[size] = {"s": median, "MB/s": 2 * size / median / 1e6, "cpu": statistics.median(cpu)}
            del data
        peak = peak_rss_mib(server.pid)
        for size in sizes:
            results[size]["rss"] = peak
    finally:
        client.close()
        stop(worker)
        stop(server)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", default="64,1024", help="payload sizes in MiB (default 64,1024)")
    parser.add_argument("--rounds", type=int, default=0, help="round trips per size (default 5, 2 from 512 MiB)")
    parser.add_argument("--only", default="gearmand,gearnb")
    parser.add_argument("--child-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_worker:
        worker_child(args.child_worker)
        return 0
    sizes = [int(float(m) * 1024 * 1024) for m in args.mib.split(",")]
    logdir = Path(tempfile.mkdtemp(prefix="gearnb-big-transfer-"))
    table: dict[str, dict[int, dict[str, float]]] = {}
    for kind in args.only.split(","):
        table[kind] = {}
        for size in sizes:
            rounds = args.rounds or (2 if size >= 512 * 1024 * 1024 else 5)
            table[kind].update(run_server(kind, [size], rounds, logdir))
    print(f"payload round trips through the job server (median; logs in {logdir})")
    print(f"{'size MiB':>8} | {'server':<8} | {'round trip s':>12} | {'MB/s':>7} | {'server CPU s':>12} | "
          f"{'server peak RSS MiB':>19} | {'s / gearmand':>12}")
    for size in sizes:
        for kind in table:
            row = table[kind][size]
            base = table.get("gearmand", {}).get(size)
            ratio = f"{row['s'] / base['s']:.2f}x" if base else "-"
            print(f"{size / 2**20:>8.0f} | {kind:<8} | {row['s']:>12.3f} | {row['MB/s']:>7.0f} | {row['cpu']:>12.3f} | "
                  f"{row['rss']:>19.0f} | {ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
