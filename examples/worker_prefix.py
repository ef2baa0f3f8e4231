#!/usr/bin/env python3
"""A 'sleep' worker under a function-name prefix, so several deployments can share servers.

A port of gearman-ruby's examples/worker_prefix.rb. gearman-ruby's
``Util.ability_name_with_prefix(prefix, name)`` (alias ``ability_name_for_perl``) names the
function ``"<prefix>\\t<name>"`` - prefix, TAB, name - the convention of Perl's
Gearman::Worker ``prefix`` option. A worker started with ``--prefix test`` serves
``"test\\tsleep"`` and only takes jobs that clients sent to that exact name.

    python examples/worker_prefix.py --prefix test

Pair it with examples/client_prefix.py given the same prefix. Stop it with Ctrl-C or
SIGTERM, or ``--max-jobs N``; ``--tick`` shortens the one-second status tick.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import gearnb


def with_prefix(prefix, name):
    """The function name ``name`` under ``prefix``: gearman-ruby's and Perl's "prefix<TAB>name"."""
    return f"{prefix}\t{name}"


def make_sleep(prefix, tick):
    def sleep(job):
        seconds = float(job.data or b"0")
        steps = max(1, math.ceil(seconds / tick - 1e-9))  # one status report per tick
        for i in range(1, steps + 1):
            time.sleep(seconds / steps)
            job.send_status(i, steps)
        # job.function is the full name the client asked for, prefix and all.
        return f"{job.function!r} slept {seconds:g} s (worker prefix {prefix!r})"

    return sleep


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--prefix", default="test", help="the function-name prefix (default: %(default)s)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between status reports")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    args = parser.parse_args(argv)

    name = with_prefix(args.prefix, "sleep")
    worker = gearnb.Worker(args.servers)
    worker.register(name, make_sleep(args.prefix, args.tick))

    print(f"[worker] serving {name!r} on {args.servers}", flush=True)
    try:
        worker.work(max_jobs=args.max_jobs)
    except KeyboardInterrupt:
        pass
    print(f"[worker] stopped after {worker.jobs_done} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
