#!/usr/bin/env python3
"""A worker that streams its answer in chunks (WORK_DATA), then completes.

A port of gearman-ruby's examples/worker_data.rb. The 'chunked_transfer' function sends
``CHUNK 0`` ... ``CHUNK n-1`` as partial results, one a second, then answers ``EOD``.
The client chooses n (the job's data; 5 when empty).

    python examples/worker_data.py

Pair it with examples/client_data.py. Stop it with Ctrl-C or SIGTERM, or ``--max-jobs N``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import gearnb


def make_chunked_transfer(delay):
    def chunked_transfer(job):
        chunks = int(job.data or b"5")
        for i in range(chunks):
            time.sleep(delay)
            # WORK_DATA: the client's on_data callback gets this straight away, while the
            # job goes on. (A background job's data goes nowhere.)
            job.send_data(f"CHUNK {i}")
        return "EOD"  # WORK_COMPLETE: the final answer

    return chunked_transfer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between chunks")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    args = parser.parse_args(argv)

    worker = gearnb.Worker(args.servers)
    worker.register("chunked_transfer", make_chunked_transfer(args.delay))

    print(f"[worker] serving 'chunked_transfer' on {args.servers}", flush=True)
    try:
        worker.work(max_jobs=args.max_jobs)
    except KeyboardInterrupt:
        pass
    print(f"[worker] stopped after {worker.jobs_done} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
