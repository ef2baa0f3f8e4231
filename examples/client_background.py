#!/usr/bin/env python3
"""A background 'sleep' job: submit it, then poll its status until it is done.

A port of gearman-ruby's examples/client_background.rb. A background job gets a handle
and nothing else: its result is thrown away and no callbacks fire. What the client can
do is ask the job server about the handle (GET_STATUS): is the job known, is a worker
running it, and the last WORK_STATUS the worker sent. Once the job ends the server
forgets it, and "known" turns false.

    python examples/client_background.py --seconds 5

Needs examples/worker.py running against the same servers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import gearnb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--seconds", default="5", help="how long the job sleeps")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    parser.add_argument("--timeout", type=float, default=60, help="stop polling after this many seconds")
    args = parser.parse_args(argv)

    with gearnb.Client(args.servers) as client:
        # Returns as soon as the server has queued the job (JOB_CREATED).
        handle = client.do_background("sleep", args.seconds)
        print(f"[client] background job queued: {handle.decode()}")

        deadline = time.monotonic() + args.timeout
        last = None
        while time.monotonic() < deadline:
            status = client.status(handle)  # JobStatus(known, running, numerator, denominator)
            if not status.known:
                print("[client] the server no longer knows the job: it has finished")
                return 0
            if status.running and status.denominator:
                line = f"Status: running, {status.numerator}/{status.denominator}"
            elif status.running:
                line = "Status: running, no progress reported yet"
            else:
                line = "Status: queued, waiting for a worker"
            if line != last:  # print changes only
                print(f"[client] {line}")
                last = line
            time.sleep(args.poll)
    print(f"[client] still running after {args.timeout:g} s; the job goes on without us")
    return 1


if __name__ == "__main__":
    sys.exit(main())
