#!/usr/bin/env python3
"""Receive a job's answer in chunks (WORK_DATA) as the worker sends them, then the result.

A port of gearman-ruby's examples/client_data.rb.

    python examples/client_data.py --chunks 5

Needs examples/worker_data.py running.
"""

from __future__ import annotations

import argparse
import os
import sys

import gearnb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--chunks", type=int, default=5, help="how many chunks to ask for")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the job")
    args = parser.parse_args(argv)

    chunks = []

    def on_data(data):  # one WORK_DATA packet, in the order the worker sent them
        chunks.append(data)
        print(f"[client] data: {data.decode()}")

    task = gearnb.Task("chunked_transfer", str(args.chunks))
    task.on_data(on_data)
    task.on_complete(lambda data: print(f"[client] complete: {data.decode()}"))
    task.on_fail(lambda: print("[client] the job failed"))

    with gearnb.Client(args.servers) as client:
        client.submit(task)              # send it; returns at once
        if not task.wait(args.timeout):  # run its callbacks here until it ends
            print(f"[client] gave up after {args.timeout:g} s")
            return 1
    if task.error is not None:  # never submitted: no job server reachable, or it refused the job
        print(f"[client] could not submit the task: {task.error}")
    print(f"[client] {len(chunks)} chunks, {sum(map(len, chunks))} bytes")
    return 0 if task.successful else 1


if __name__ == "__main__":
    sys.exit(main())
