#!/usr/bin/env python3
"""Failing jobs: retries, and the on_warning / on_exception / on_retry / on_fail callbacks.

A port of gearman-ruby's examples/client_exception.rb. A task with ``retries=N`` is
submitted again after each failure, up to N more times; ``on_retry(n)`` runs before each
new attempt and ``on_fail()`` once, when the task gives up. A worker exception arrives
first as ``on_exception(text)`` (text: the worker's traceback). gearnb asks every job
server for exceptions (OPTION_REQ "exceptions") when it connects, so unlike in old
gearman-ruby, on_exception does get called.

    python examples/client_exception.py --retries 2

Needs examples/worker_exception.py running. That worker takes 2 * (retries + 1) + 1 jobs
from one run of this client.
"""

from __future__ import annotations

import argparse
import os
import sys

import gearnb


def watch(task, name):
    """Print every event of ``task``, labelled ``[name]``."""
    task.on_complete(lambda data: print(f"[{name}] complete: {data!r} (this should never happen)"))
    task.on_warning(lambda data: print(f"[{name}] WARNING: {data.decode()}"))
    # The text is a whole traceback; its last line is the exception itself.
    task.on_exception(lambda text: print(f"[{name}] EXCEPTION: {text.strip().splitlines()[-1]}"))
    task.on_retry(lambda n: print(f"[{name}] PRE-RETRY HOOK: retry no. {n}"))
    task.on_fail(lambda: print(f"[{name}] TASK FAILED, GIVING UP after {task.retries_done} retries"))
    return task


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--retries", type=int, default=2, help="retries per task")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait")
    args = parser.parse_args(argv)

    with gearnb.Client(args.servers) as client:
        # 1. Two tasks with callbacks, waited on together.
        taskset = gearnb.TaskSet(client)
        taskset.add(watch(gearnb.Task("fail_with_exception", "void", retries=args.retries), "exception"))
        taskset.add(watch(gearnb.Task("fail_plainly", "void", retries=args.retries), "fail"))
        if not taskset.wait(args.timeout):
            print(f"gave up after {args.timeout:g} s")
            return 1

        # 2. The blocking call raises instead: gearnb.JobException (a kind of JobFailed)
        #    carries the worker's text; a plain WORK_FAIL would raise gearnb.JobFailed.
        try:
            client.do("fail_with_exception", "do", timeout=args.timeout)
        except gearnb.JobException as exc:
            print(f"[do] raised JobException: {exc.text.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
