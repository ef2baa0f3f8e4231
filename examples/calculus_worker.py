#!/usr/bin/env python3
"""Calculus worker: four Gearman functions that each take a msgpack ``[a, b]``.

A port of gearman-ruby's examples/calculus_worker.rb. The functions are ``addition``,
``subtraction``, ``multiplication`` and ``division``; each unpacks its two operands,
prints what it is doing and answers with the msgpack-encoded result.

    python examples/calculus_worker.py                          # all four functions
    python examples/calculus_worker.py --function addition      # one worker per operation:
    python examples/calculus_worker.py --function division      #   run one process for each

Pair it with examples/calculus_client.py. Stop it with Ctrl-C or SIGTERM, or give
``--max-jobs N`` to stop after N jobs.
"""

from __future__ import annotations

import argparse
import operator
import os
import sys

import msgpack

import gearnb

# Gearman function name -> what it computes.
OPERATIONS = {
    "addition": operator.add,
    "subtraction": operator.sub,
    "multiplication": operator.mul,
    "division": operator.truediv,
}


def make_handler(name, compute):
    """A worker function for one operation. It receives a gearnb.Job and returns bytes."""

    def handler(job):
        a, b = msgpack.unpackb(job.data)  # the client sent msgpack [a, b]
        print(f"[{name}_worker] Calculating {[a, b]}...", flush=True)
        # Any exception raised here (say ZeroDivisionError for 1/0) goes back to the client
        # as WORK_EXCEPTION, carrying the traceback; the worker carries on with the next job.
        return msgpack.packb(compute(a, b))

    return handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--function", action="append", choices=sorted(OPERATIONS), dest="functions",
                        help="serve only this function (repeatable; default: all four)")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    args = parser.parse_args(argv)

    names = args.functions or list(OPERATIONS)
    worker = gearnb.Worker(args.servers, client_id=f"calculus-{os.getpid()}")
    for name in names:
        worker.register(name, make_handler(name, OPERATIONS[name]))

    print(f"[worker] serving {', '.join(names)} on {args.servers}", flush=True)
    try:
        worker.work(max_jobs=args.max_jobs)  # returns on SIGTERM, worker.stop() or --max-jobs
    except KeyboardInterrupt:
        pass  # Ctrl-C: work() has already closed its connections
    print(f"[worker] stopped after {worker.jobs_done} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
