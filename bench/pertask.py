#!/usr/bin/env python3
"""Where a pyexec task's CPU goes: each step in one process, then each process of a real run.

    python bench/pertask.py                 # 10,000 tasks x 3 runs per mode, 1,000 round trips
    python bench/pertask.py --tasks 2000 --runs 1

Part 1 times each step of one unchunked task in this process (``timeit``, the minimum of 5
repeats, so other load on the machine matters little): the caller encodes and signs the call,
makes its Submission; the worker verifies it, admits it past the replay guard, decodes it, runs
it (output redirected) and encodes and signs the result; the caller verifies and decodes that.

Part 2 runs ``Executor.gmap(inc, range(N), chunksize=1)`` and one-at-a-time ``submit().result()``
through a gearnb job server (a process of its own) with 2 worker processes, in two modes, one
after the other ``--runs`` times (the VM's speed drifts: alternating keeps that out of the
comparison):

* ``isolated``: ``gearnb worker --processes 2``: each worker is a guard whose task process grabs
  and runs the jobs on connections the guard holds copies of (gearnb/pyexec/isolation.py: a
  task that crashes fails only itself);
* ``in-process``: 2 worker processes that run ``PyexecRunner`` themselves (no task process).

It prints tasks/s, the round trip's p50, and CPU microseconds per task of each process: this
one (the caller: its map thread, I/O thread and value store), the job server, the workers, the
task processes. The difference between the modes is what isolation costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _harness import finish, print_table, run_guarded  # noqa: E402
from _processes import cpu_seconds, spawn, start_server, wait_until  # noqa: E402

import gearnb  # noqa: E402

KEY = b"pertask-bench-key".ljust(32, b"k")
IN_PROCESS_WORKER = """
import sys
from gearnb import Worker
from gearnb.pyexec import PyexecRunner
worker = Worker(sys.argv[1])
worker.register("pyexec", PyexecRunner(bytes.fromhex(sys.argv[2])))
worker.work()
"""


def inc(x):
    return x + 1


def steps() -> list[tuple[str, str]]:
    """Part 1: (step, microseconds) for one unchunked call of ``inc``."""
    from gearnb.client.submission import Submission
    from gearnb.pyexec import envelope
    from gearnb.pyexec.runner import PyexecRunner
    from gearnb.pyexec.sharing import ValueStore
    from gearnb.pyexec.signing import Signer

    signer, function = Signer(KEY), b"pyexec"
    blob = envelope.FunctionBlob(inc)
    store = ValueStore()
    runner = PyexecRunner(KEY)
    runner.functions[blob.digest] = (inc, frozenset(), 0)

    class Job:
        handle, function, unique, server = b"H:bench:1", "pyexec", b"", ""

        def send_data(self, data: bytes) -> None: ...

        def send_warning(self, data: bytes) -> None: ...

    def encode() -> tuple[bytes, object]:
        return signer.sign_call(function, envelope.encode_map_chunk(blob, [[5]], False, None, store.address))

    payload, call = encode()
    body, _ = signer.verify_call(function, payload)
    msg = envelope.decode_call(body)
    job = Job()
    job.data = payload  # type: ignore[attr-defined]
    calls = [encode() for _ in range(30_000)]  # 5 x 5,000 fresh calls: fewer than the guard remembers
    pending = iter(calls)

    def run_job() -> bytes:
        job.data = next(pending)[0]  # a fresh call each time: the replay guard admits it
        return runner(job)

    result = runner(type("J", (Job,), {"data": encode()[0]})())
    answer_call = encode()[1]
    answer = signer.sign_result(function, answer_call, envelope.encode_result_parts([6], {}))
    out = []
    for name, fn, number in [
        ("caller: encode + sign the call", encode, 20_000),
        ("caller: Submission()", lambda: Submission(function, payload, listener=None), 20_000),
        ("worker: verify the call", lambda: signer.verify_call(function, payload), 20_000),
        ("worker: decode the call", lambda: envelope.decode_call(body), 20_000),
        ("worker: run it, output redirected", lambda: runner._run(job, inc, envelope.call_columns(msg), True), 20_000),
        ("worker: encode + sign the result", lambda: signer.sign_result(
            function, call, envelope.encode_result_parts([6], {})), 20_000),
        ("worker: all of the above, replay guard included", run_job, 5_000),
        ("caller: verify + decode the result", lambda: envelope.decode_result(
            signer.verify_result(function, answer, answer_call)), 20_000),
    ]:
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number
        out.append((name, f"{best * 1e6:.1f}"))
    del result
    store.close()
    return out


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def measure(address: str, server_pid: int, workers: list[int], tasks: int, round_trips: int) -> dict[str, float]:
    """One mode's run: tasks/s, p50 and CPU us per task of each process group."""
    ex = gearnb.Executor(address, key=KEY)
    try:
        ex.gmap(inc, range(400), chunksize=1)  # warm: the function cached, connections made
        relays = [p for w in workers for p in tree(w) if p != w]

        def cpu() -> dict[str, float]:
            return {"caller": time.process_time(), "server": cpu_seconds(server_pid),
                    "workers": sum(cpu_seconds(p) for p in workers),
                    "task processes": sum(cpu_seconds(p) for p in relays)}

        before, start = cpu(), time.perf_counter()
        out = ex.gmap(inc, range(tasks), chunksize=1)
        elapsed, after = time.perf_counter() - start, cpu()
        assert out == [i + 1 for i in range(tasks)]
        row = {k: (after[k] - before[k]) / tasks * 1e6 for k in before}
        row["tasks/s"] = tasks / elapsed
        times = []
        for i in range(round_trips):
            t = time.perf_counter()
            assert ex.submit(inc, i).result() == i + 1
            times.append(time.perf_counter() - t)
        row["p50 ms"] = statistics.median(times) * 1e3
        return row
    finally:
        ex.shutdown(wait=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=900)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"isolated": [], "in-process": []}

    def body(logdir: Path) -> None:
        print(f"load average {os.getloadavg()[0]:.2f} at start")
        rows = steps()
        print("\nPart 1: one unchunked task, step by step, in one process (min of 5 timeit repeats)")
        print_table([("step", "us"), *rows], right=(1,))
        server, address, _ = start_server("gearnb", logdir, [])
        env_key = KEY.hex()
        for _ in range(args.runs):
            for mode in results:
                if mode == "isolated":
                    procs = [spawn([sys.executable, "-m", "gearnb", "worker", "--servers", address,
                                    "--processes", "2", "--key-file", str(key_file(logdir))], logdir / "workers.log")]
                else:
                    procs = [spawn([sys.executable, "-c", IN_PROCESS_WORKER, address, env_key], logdir / f"w{i}.log")
                             for i in range(2)]
                wait_until(lambda: workers_of(address) >= 2, 60, f"{mode} workers")
                workers = [p for proc in procs for p in tree(proc.pid)
                           if mode == "in-process" or p in direct_children(proc.pid)]
                results[mode].append(measure(address, server.pid, workers, args.tasks, args.round_trips))
                for proc in procs:
                    proc.terminate()
                    proc.wait(30)
                wait_until(lambda: workers_of(address) == 0, 30, "workers gone")
        columns = ["tasks/s", "p50 ms", "caller", "server", "workers", "task processes"]
        table = [("mode (median of runs)", *columns, "CPU us/task, all")]
        for mode, runs in results.items():
            med = {c: statistics.median(r[c] for r in runs) for c in columns}
            total = sum(med[c] for c in columns[2:])
            table.append((mode, f"{med['tasks/s']:,.0f}", f"{med['p50 ms']:.2f}",
                          *(f"{med[c]:.0f}" for c in columns[2:]), f"{total:.0f}"))
        print(f"\nPart 2: {args.tasks:,} tasks, chunksize=1, 2 workers, gearnb server; {args.round_trips} round trips "
              f"one at a time; CPU us per task by process; {args.runs} runs, alternating; load average "
              f"{os.getloadavg()[0]:.2f} at the end")
        print_table(table, right=tuple(range(1, 8)))

    logdir, failure = run_guarded(args.deadline, body)
    return finish(0, failure, logdir)


def key_file(logdir: Path) -> Path:
    path = logdir / "cluster.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, KEY.hex().encode())
        os.close(fd)
    return path


def workers_of(address: str) -> int:
    with gearnb.Admin(address, timeout=5) as admin:
        return sum(s.workers for s in admin.status() if s.function == "pyexec")


def direct_children(pid: int) -> list[int]:
    return [p for p in tree(pid) if p != pid and _parent(p) == pid]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


if __name__ == "__main__":
    sys.exit(main())
