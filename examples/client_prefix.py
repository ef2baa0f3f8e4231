#!/usr/bin/env python3
"""Call a 'sleep' function under a function-name prefix ("<prefix>\\t<name>").

A port of gearman-ruby's examples/client_prefix.rb: the client sends its task to
``"test\\tsleep"``, which only a worker started with ``--prefix test`` serves. Workers of
another prefix (another deployment sharing the job servers) never see the job.

    python examples/client_prefix.py --prefix test --seconds 3

Needs examples/worker_prefix.py running with the same prefix.
"""

from __future__ import annotations

import argparse
import os
import sys

import gearnb


def with_prefix(prefix, name):
    """gearman-ruby's Util.ability_name_with_prefix: "prefix<TAB>name"."""
    return f"{prefix}\t{name}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("GEARMAN_SERVERS", "127.0.0.1:4730"),
                        help="job servers, host:port[,host:port] (default: $GEARMAN_SERVERS or %(default)s)")
    parser.add_argument("--prefix", default="test", help="the function-name prefix (default: %(default)s)")
    parser.add_argument("--seconds", default="3", help="how long the job sleeps")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the job")
    args = parser.parse_args(argv)

    name = with_prefix(args.prefix, "sleep")
    task = gearnb.Task(name, args.seconds)
    task.on_status(lambda num, den: print(f"[client] {name!r}: {num}/{den}"))
    task.on_complete(lambda data: print(f"[client] {data.decode()}"))
    task.on_fail(lambda: print(f"[client] {name!r} failed"))

    print(f"[client] calling {name!r}")
    with gearnb.Client(args.servers) as client:
        client.submit(task)
        if not task.wait(args.timeout):
            print(f"[client] gave up after {args.timeout:g} s")
            return 1
    if task.error is not None:  # never submitted: no job server reachable, or it refused the job
        print(f"[client] could not submit the task: {task.error}")
    return 0 if task.successful else 1


if __name__ == "__main__":
    sys.exit(main())
