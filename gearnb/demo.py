"""``gearnb demo``: the calculus example of the gearman-ruby seed, on a bundled server.

Four Gearman functions - addition, subtraction, multiplication, division - each take a
msgpack ``[a, b]``. The client parses expressions such as ``2+3 8*7 9/3`` and submits one
Task per operation to the function that does it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any, Callable

import msgpack

from .client import Client, Task, TaskSet
from .worker import Job, Worker

OPERATIONS: dict[str, tuple[str, Callable[[Any, Any], Any]]] = {
    "+": ("addition", lambda a, b: a + b),
    "-": ("subtraction", lambda a, b: a - b),
    "*": ("multiplication", lambda a, b: a * b),
    "/": ("division", lambda a, b: a / b),
}
EXPRESSION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)\s*$")


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse(expression: str) -> tuple[str, list[int | float]]:
    """``"2+3"`` -> ``("addition", [2, 3])``."""
    match = EXPRESSION.match(expression)
    if not match:
        raise ValueError(f"cannot parse {expression!r}: expected NUMBER OP NUMBER, OP one of + - * /")
    a, op, b = match.groups()
    return OPERATIONS[op][0], [_number(a), _number(b)]


def register(worker: Worker) -> None:
    """Add the four calculus functions to a worker (``gearnb worker --import gearnb.demo``)."""
    for name, fn in OPERATIONS.values():
        def run(job: Job, fn: Callable[[Any, Any], Any] = fn) -> bytes:
            a, b = msgpack.unpackb(job.data)
            return msgpack.packb(fn(a, b))
        worker.register(name, run)


def calculate(client: Client, expressions: list[str], out: Callable[[str], None] = print) -> dict[str, Any]:
    """Submit one task per expression with callbacks; return {expression: result}."""
    results: dict[str, Any] = {}
    taskset = TaskSet(client)
    for expression in expressions:
        function, operands = parse(expression)
        task = Task(function, msgpack.packb(operands))
        task.on_created(lambda handle, e=expression, f=function: out(f"  {e:<10} -> {f} job {handle.decode()}"))
        task.on_complete(lambda data, e=expression: results.__setitem__(e, msgpack.unpackb(data)))
        task.on_exception(lambda text, e=expression: results.__setitem__(e, text.strip().splitlines()[-1]))
        task.on_fail(lambda e=expression: results.setdefault(e, "failed"))
        taskset.add(task)
    taskset.wait(60)
    return results


def sweep_point(rate: float, steps: int) -> float:
    """One point of the demo's parameter sweep: compound growth, reporting its progress."""
    from . import report

    value = 1.0
    for step in range(steps):
        value *= 1 + rate / steps
        if step % (steps // 4) == 0:
            report(step, steps)
    time.sleep(0.02)  # pretend it is real work, so the progress line has something to show
    return value


def run_sweep(address: str, key: bytes) -> list[float]:
    from .executor import Executor

    rates = [i / 100 for i in range(1, 101)]
    executor = Executor(address, key=key)
    try:
        print(f"- a parameter sweep through pyexec: sweep_point(rate, 10000) for {len(rates)} rates")
        values = executor.gmap(sweep_point, rates, [10_000] * len(rates), chunksize=1, progress=True)
    finally:
        executor.shutdown()
    best = max(range(len(rates)), key=values.__getitem__)
    print(f"  growth at rate {rates[0]:.2f}: {values[0]:.4f}; at rate {rates[best]:.2f}: {values[best]:.4f}")
    return values


def run_demo(expressions: list[str]) -> int:
    from .pyexec.keys import KEY_ENV, new_key
    from .server import Server

    print("gearnb demo: a bundled Gearman job server, four calculus workers and a client")
    key = new_key()
    with Server("127.0.0.1", 0) as server:
        print(f"- job server listening on {server.address}")
        env = dict(os.environ, GEARNB_WORKER_CHILD="1")
        env[KEY_ENV] = key.hex()
        workers = [
            subprocess.Popen([sys.executable, "-m", "gearnb", "worker", "--servers", server.address,
                              "--import", "gearnb.demo", "--client-id", f"calc-{i}"], env=env)
            for i in range(2)
        ]
        print(f"- started {len(workers)} worker processes (pids {', '.join(str(w.pid) for w in workers)}) "
              "serving addition, subtraction, multiplication, division and pyexec")
        try:
            _wait_for_workers(server.address, len(workers))
            with Client(server.address) as client:
                print(f"- submitting {len(expressions)} tasks, one per operation:")
                started = time.perf_counter()
                results = calculate(client, expressions)
                elapsed = time.perf_counter() - started
            print("- results:")
            for expression in expressions:
                print(f"  {expression} = {results.get(expression)}")
            print(f"- {len(results)} of {len(expressions)} tasks done in {elapsed * 1000:.1f} ms")
            sweep = run_sweep(server.address, key)
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(10)
    return 0 if len(results) == len(expressions) and len(sweep) == 100 else 1


def _wait_for_workers(address: str, workers: int, timeout: float = 20) -> None:
    """Until every worker process serves pyexec and the four calculus functions: the sweep
    spreads over as many workers as the server names when it starts."""
    from .admin import Admin

    wanted = {"addition", "subtraction", "multiplication", "division", "pyexec"}
    deadline = time.monotonic() + timeout
    with Admin(address) as admin:
        while time.monotonic() < deadline:
            if sum(1 for s in admin.status() if s.function in wanted and s.workers >= workers) == len(wanted):
                return
            time.sleep(0.05)
    raise RuntimeError("the demo's workers did not register in time")
