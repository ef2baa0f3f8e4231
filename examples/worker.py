#!/usr/bin/env python3
"""A 'sleep' worker that reports its progress (WORK_STATUS) every second.

A port of gearman-ruby's examples/worker.rb. The job's data is a number of seconds; the
worker sleeps that long, sending WORK_STATUS ``i/n`` after each tick, then answers
``slept N s``. It connects to every job server it is given and takes jobs from all of them.

    python examples/worker.py --servers 127.0.0.1:4730,127.0.0.1:4731

Pair it with examples/client.py (and client_background.py). Stop it with Ctrl-C or SIGTERM,
or give ``--max-jobs N``. ``--tick`` shortens the one-second tick (the tests use 0.1).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import gearnb


def make_sleep(tick):
    def sleep(job):
        seconds = float(job.data or b"0")
        steps = max(1, math.ceil(seconds / tick - 1e-9))  # one status report per tick
        for i in range(1, steps + 1):
            time.sleep(seconds / steps)
            # Report progress; the client's on_status callback gets (i, steps), and a client
            # polling GET_STATUS sees it too.
            job.send_status(i, steps)
            print(f"[worker] {job.handle.decode()}: {i}/{steps}", flush=True)
        return f"slept {seconds:g} s"  # str or bytes: becomes WORK_COMPLETE's data

    return sleep


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers",
                        default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730,127.0.0.1:4731"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between status reports")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    args = parser.parse_args(argv)

    worker = gearnb.Worker(args.servers, client_id=f"sleeper-{os.getpid()}")
    worker.register("sleep", make_sleep(args.tick))

    print(f"[worker] serving 'sleep' on {args.servers}", flush=True)
    try:
        worker.work(max_jobs=args.max_jobs)
    except KeyboardInterrupt:
        pass
    print(f"[worker] stopped after {worker.jobs_done} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
