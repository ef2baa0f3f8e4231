#!/usr/bin/env python3
"""Calculus client: one Gearman task per arithmetic operation, run in parallel.

A port of gearman-ruby's examples/calculus_client.rb. It finds operations such as
``2+3 8*7 9/3`` in its arguments (or, with none, in a line read from stdin), sends each to
the worker function that does it (``addition``, ``subtraction``, ``multiplication``,
``division``) as a msgpack ``[a, b]``, and prints results as they arrive.

    python examples/calculus_client.py 2+3 8*7 9/3 7-10 1/0

Needs examples/calculus_worker.py running. Exit status: 0 when every operation succeeded.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import msgpack

import gearnb

FUNCTION_FOR = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
# NUMBER OP NUMBER, e.g. "2+3", "-1.5 * 4"
OPERATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)")


def number(text):
    return float(text) if "." in text else int(text)


def add_callbacks(task, expression, results):
    """Print what happens to ``task``; store its result in ``results[expression]``.

    Callbacks run inside ``taskset.wait()``, on the waiting thread. Each ``task.on_*``
    returns the task, so they chain, and also work as decorators, as here.
    """
    function = task.function.decode()

    @task.on_complete
    def complete(data):  # WORK_COMPLETE: the worker's answer, msgpack-encoded
        results[expression] = msgpack.unpackb(data)
        print(f"[client] {function} result is: {results[expression]}")

    @task.on_warning
    def warning(data):  # WORK_WARNING
        print(f"[client] warn ({expression}): {data.decode()}")

    @task.on_exception
    def exception(text):  # WORK_EXCEPTION: the worker's traceback; the last line says what went wrong
        print(f"[client] {expression} raised: {text.strip().splitlines()[-1]}")

    @task.on_fail
    def fail():  # the job failed for good (after an exception too)
        print(f"[client] {expression}: calculation failed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("operations", nargs="*", help="operations such as 2+3 8*7 9/3")
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for all results")
    args = parser.parse_args(argv)

    text = " ".join(args.operations)
    if not text:
        text = input("[client] Write a basic arithmetic operation: ")
    operations = [m.groups() for m in OPERATION.finditer(text)]  # [("2", "+", "3"), ...]
    print(f"[client] The following operations were found: {[''.join(o) for o in operations]}")

    client = gearnb.Client(args.servers)
    taskset = gearnb.TaskSet(client)  # tasks added to a set run in parallel
    results = {}

    for a, op, b in operations:
        expression, function, values = f"{a}{op}{b}", FUNCTION_FOR[op], [number(a), number(b)]

        task = gearnb.Task(function, msgpack.packb(values))
        add_callbacks(task, expression, results)
        print(f"[client] Sending values: {values}, to the '{function}' worker")
        taskset.add(task)  # submitted now; answers are collected by wait()

    if not taskset.wait(args.timeout):
        print(f"[client] gave up waiting after {args.timeout:g} s")
    for task in taskset.tasks:
        if task.error is not None:  # never submitted: no server reachable, or the server refused
            print(f"[client] could not submit a task: {task.error}")
    client.close()

    print("[client] results:")
    for operation in operations:
        expression = "".join(operation)
        print(f"  {expression} = {results.get(expression, 'failed')}")
    return 0 if all("".join(o) in results for o in operations) else 1


if __name__ == "__main__":
    sys.exit(main())
