"""The job server's own work per job, without sockets: for instruction counts under callgrind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/server_cpu.py --jobs 5000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/server_cpu.py --jobs 25000
    (instructions of the second run - the first) / 20000 = instructions per job

or ``--compare OTHER_CHECKOUT`` to run both trees under callgrind, in turns, and print that.
Instruction counts do not depend on what else the machine does, unlike times on this VM.

One client connection and two worker connections of the real server (``Connection`` objects
fed through ``get_buffer``/``buffer_updated``, as the event loop feeds them) run on an event
loop whose transports only collect what is written. Per job: the client's SUBMIT_JOB, a
worker's WORK_COMPLETE with its next GRAB_JOB_UNIQ, and the server's JOB_CREATED,
JOB_ASSIGN_UNIQ and WORK_COMPLETE - what bench/jobs_per_second.py's raw client makes the
server do, in windows of ``--window`` jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class CollectingTransport(asyncio.Transport):
    """Keeps what the server writes, to be read back by the driving code."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))

    def writelines(self, parts) -> None:  # type: ignore[override]
        self.written.append(b"".join(bytes(p) for p in parts))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.written)
        self.written.clear()
        return out


def _packet(ptype: int, *args: bytes) -> bytes:
    """A request packet, built here: the driver's own work must not depend on the tree measured."""
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", ptype, len(body)) + body


CAN_DO, GRAB_JOB_UNIQ, SUBMIT_JOB, WORK_COMPLETE = 1, 30, 7, 13
ASSIGNED = re.compile(rb"\0RES\0\0\0\x1f....H:bench:(\d+)\0", re.S)  # JOB_ASSIGN_UNIQ's handle
COMPLETED = b"\0RES\0\0\0\x0d"  # WORK_COMPLETE's header start


async def drive(jobs: int, window: int) -> None:
    from gearnb.server.connections import Connection
    from gearnb.server.core import JobServer

    try:  # the JobServer as Server.start() makes it, without listening
        core = JobServer(timers=asyncio.get_running_loop(), handle_prefix="H:bench")
    except TypeError:  # an older tree: the core finds the running loop itself
        core = JobServer(handle_prefix="H:bench")

    def connect() -> tuple[Connection, CollectingTransport]:
        conn = Connection(core)
        transport = CollectingTransport()
        conn.connection_made(transport)
        return conn, transport

    def feed(conn: Connection, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            buffer = conn.get_buffer(-1)
            n = min(len(buffer), len(data) - pos)
            buffer[:n] = data[pos:pos + n]
            conn.buffer_updated(n)
            pos += n

    client, client_out = connect()
    workers = [connect() for _ in range(2)]
    grab = _packet(GRAB_JOB_UNIQ)
    submits = [_packet(SUBMIT_JOB, b"bench_double", b"", b"%d" % i) for i in range(jobs)]
    completes = [_packet(WORK_COMPLETE, b"H:bench:%d" % (i + 1), b"%d" % (2 * i)) for i in range(jobs)]
    for conn, _ in workers:
        feed(conn, _packet(CAN_DO, b"bench_double") + grab)
    done = sent = 0
    await asyncio.sleep(0)
    while done < jobs:
        batch = submits[sent:sent + max(window - (sent - done), 0)]
        sent += len(batch)
        if batch:
            feed(client, b"".join(batch))
        await asyncio.sleep(0)
        for conn, transport in workers:
            handles = ASSIGNED.findall(transport.take())
            feed(conn, b"".join(completes[int(h) - 1] for h in handles) + grab)
        await asyncio.sleep(0)
        done += client_out.take().count(COMPLETED)
    assert not core.jobs, "every job ended"


def instructions(python_path: str, jobs: int, window: int) -> int:
    env = dict(os.environ, PYTHONPATH=python_path)
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
           "--jobs", str(jobs), "--window", str(window)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected\s*:\s*([\d,]+)", out)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{out}")
    return int(match.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--compare", metavar="OTHER_CHECKOUT",
                        help="instructions per job of this tree and OTHER_CHECKOUT under callgrind")
    args = parser.parse_args()
    if args.compare:
        small, big = 2000, 2000 + args.jobs
        trees = [("this tree", str(HERE.parent)), (args.compare, str(Path(args.compare).resolve()))]
        for name, path in trees:
            per_job = (instructions(path, big, args.window) - instructions(path, small, args.window)) / args.jobs
            print(f"{name}: {per_job:,.0f} instructions per job (server core, no sockets)")
        return 0
    sys.path.insert(0, os.environ.get("PYTHONPATH") or str(HERE.parent))
    try:
        import uvloop

        uvloop.run(drive(args.jobs, args.window))
    except ImportError:
        asyncio.run(drive(args.jobs, args.window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
