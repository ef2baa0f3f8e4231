#!/usr/bin/env python3
"""A worker whose jobs always fail: once with an exception, once with a plain failure.

A port of gearman-ruby's examples/worker_exception.rb, plus a second function:

* ``fail_with_exception`` sends a WORK_WARNING, then raises an ordinary exception. gearnb
  turns any exception into WORK_EXCEPTION, whose data is the traceback; the worker itself
  carries on with the next job.
* ``fail_plainly`` raises ``gearnb.JobFailed``: WORK_FAIL, which carries no message.

    python examples/worker_exception.py

Pair it with examples/client_exception.py. Stop it with Ctrl-C or SIGTERM, or ``--max-jobs N``.
"""

from __future__ import annotations

import argparse
import os
import sys

import gearnb


def fail_with_exception(job):
    job.send_warning(f"about to raise for {job.data.decode()!r}")
    raise RuntimeError(f"Exception in worker (args: {job.data.decode()!r})")


def fail_plainly(job):
    raise gearnb.JobFailed()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    args = parser.parse_args(argv)

    worker = gearnb.Worker(args.servers)
    worker.register("fail_with_exception", fail_with_exception)
    worker.register("fail_plainly", fail_plainly)

    print(f"[worker] serving 'fail_with_exception' and 'fail_plainly' on {args.servers}", flush=True)
    try:
        worker.work(max_jobs=args.max_jobs)
    except KeyboardInterrupt:
        pass
    print(f"[worker] stopped after {worker.jobs_done} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
