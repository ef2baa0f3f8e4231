#!/usr/bin/env python3
"""Two 'sleep' tasks spread over two job servers, with progress and completion callbacks.

A port of gearman-ruby's examples/client.rb. The client is given two job servers and
sends its tasks round-robin between them (a task whose server is down goes to the other).
Each task prints the WORK_STATUS updates the worker sends, then its result.

    python examples/client.py --servers 127.0.0.1:4730,127.0.0.1:4731 --seconds 2

Needs examples/worker.py running against the same servers.
"""

from __future__ import annotations

import argparse
import os
import sys

import gearnb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers",
                        default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730,127.0.0.1:4731"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--seconds", default="2", help="how long each job sleeps")
    parser.add_argument("--tasks", type=int, default=2, help="how many tasks")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the tasks")
    args = parser.parse_args(argv)

    client = gearnb.Client(args.servers)
    taskset = gearnb.TaskSet(client)

    for n in range(1, args.tasks + 1):
        task = gearnb.Task("sleep", args.seconds)
        # Callbacks chain. Default arguments freeze this iteration's n and task.
        (task
         .on_created(lambda handle, n=n, task=task: print(f"TASK {n}: queued on {task.server} as {handle.decode()}"))
         .on_status(lambda num, den, n=n: print(f"TASK {n}: {num}/{den}"))
         .on_complete(lambda data, n=n: print(f"TASK {n}: {data.decode()}"))
         .on_fail(lambda n=n: print(f"TASK {n}: failed")))
        taskset.add(task)

    # Runs the callbacks above as the events arrive; False if the time ran out.
    finished = taskset.wait(args.timeout)
    client.close()
    if not finished:
        print(f"gave up after {args.timeout:g} s")
    for task in taskset.tasks:
        if task.error is not None:  # never submitted: no job server reachable, or it refused the job
            print(f"could not submit a task: {task.error}")
    return 0 if finished and all(t.successful for t in taskset.tasks) else 1


if __name__ == "__main__":
    sys.exit(main())
