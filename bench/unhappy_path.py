#!/usr/bin/env python3
"""The unhappy path: what a notebook user sees when a task misbehaves, side by side.

    python bench/unhappy_path.py                    # every case, every column (5-7 minutes on 2 cores)
    python bench/unhappy_path.py --only gearnb,ppe --cases exit,endless

Columns, each with 2 worker processes: gearnb (``gearnb.local(workers=2)``), gearnb through
gearmand (``gearmand`` and ``gearnb worker --processes 2``, a ``gearnb.Executor``),
``ProcessPoolExecutor(2)``, joblib (``Parallel(n_jobs=2)``, loky) and dask.distributed
(``LocalCluster(n_workers=2, threads_per_worker=1)``). Cases (the rows; issue 10's table):

* ``exit``, ``segfault``, ``sigkill``, ``sys.exit``: item 3 of a map of 8 calls ``os._exit(1)``,
  ``ctypes.string_at(0)``, SIGKILLs its own process, ``sys.exit(3)``: time until the caller
  gets an error, its type and first line, how often the task ran, how many processes were
  started and how many lines printed meanwhile, the time of the next 4-item map.
* ``endless``: 4 endless tasks given up after 3 s, in the way each offers; how many of the
  framework's processes still run 2-4 s later; the next map.
* ``interrupt``: Jupyter's interrupt during a map of 200 half-second tasks - SIGINT to the
  caller's whole process group, which is what jupyter_client's ``interrupt_kernel()`` sends;
  the caller runs in a session of its own, as a kernel does. Then the next map, and how many
  of the first map's tasks still started or finished afterwards.
* ``cancel``: ``cancel()`` on a running future: what it returns, what ``result()`` gives.
* ``fork``: a ``multiprocessing.Pool`` child (fork) maps after the parent did.

Order of calls: this script walks the cases and, for each, the columns; each (column, case)
runs in a driver process of its own (bench/_unhappy_driver.py, a new session: the "kernel"),
which starts its framework, warms it with a small map, runs the case and writes what it
measured as JSON lines. For the gearmand column the parent starts gearmand and
``gearnb worker`` first (outside the driver's process group, as remote workers are). The
parent counts every process started below it from the kernel's proc connector (exact; needs
root, else "n/a"), kills whatever a driver left behind (it is a child subreaper), and prints
one table. Every step has a time limit; see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from _harness import finish, print_table, run_guarded  # noqa: E402
from _processes import GEARMAND, spawn, start_server, stop_all, wait_until  # noqa: E402
from _unhappy_driver import (CASES, CPU_AFTER, CPU_WINDOW, CRASHES, GIVE_UP_AFTER, INTERRUPT_ITEMS,  # noqa: E402
                             START_LIMIT, WORKERS)
from notebook_api import PR_SET_CHILD_SUBREAPER, kill_leftovers  # noqa: E402

DRIVER = HERE / "_unhappy_driver.py"
COLUMNS = ("gearnb", "gearmand", "ppe", "joblib", "dask")
TITLES = {"gearnb": "gearnb", "gearmand": "gearnb via gearmand", "ppe": "ProcessPoolExecutor",
          "joblib": "joblib (loky)", "dask": "dask"}
CASE_LIMIT = 240  # s for one (column, case) driver, set-up included (--case-timeout)
MAX_CELL_LINES = 5  # a longer cell is cut (its text in full in --json)


# -- the parent: process births, one driver per (column, case), the table ---------------------
class ProcessBirths:
    """Every process started below this one, and when: the kernel's proc connector (netlink),
    which reports each fork as it happens, so even a task process that lives 10 ms is counted.
    Needs root (CAP_NET_ADMIN); without it, :attr:`error` says why and counts are None."""

    NETLINK_CONNECTOR, CN_IDX_PROC, CN_VAL_PROC = 11, 1, 1  # <linux/connector.h>
    PROC_CN_MCAST_LISTEN, PROC_EVENT_FORK, PROC_EVENT_EXEC = 1, 0x1, 0x2  # <linux/cn_proc.h>
    HEADER = 16 + 20  # struct nlmsghdr, struct cn_msg
    RCVBUF = 32 << 20  # every fork and thread start of the machine arrives here: room for bursts

    def __init__(self) -> None:
        self.births: list[tuple[float, int]] = []  # (monotonic time, pid)
        self.names: dict[int, str] = {}  # the command line each exec'd process had ("" if gone at once)
        self.ours = {os.getpid()}
        self.error: str | None = None
        self.lost = False
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, self.NETLINK_CONNECTOR)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, 33, self.RCVBUF)  # SO_RCVBUFFORCE
            self.sock.bind((0, self.CN_IDX_PROC))
            op = struct.pack("=I", self.PROC_CN_MCAST_LISTEN)
            cn = struct.pack("=IIIIHH", self.CN_IDX_PROC, self.CN_VAL_PROC, 0, 0, len(op), 0) + op
            self.sock.send(struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn)  # NLMSG_DONE
        except OSError as exc:
            self.error = f"no proc connector ({exc}; run as root)"
            return
        threading.Thread(target=self._read, name="process-births", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:  # ENOBUFS: events were dropped
                self.lost = True
                continue
            offset = 0
            while offset + self.HEADER + 16 <= len(data):
                length = struct.unpack_from("=I", data, offset)[0]
                what, _cpu, stamp = struct.unpack_from("=IIQ", data, offset + self.HEADER)
                event = offset + self.HEADER + 16
                if what == self.PROC_EVENT_FORK:
                    _ppid, parent, pid, tgid = struct.unpack_from("=IIII", data, event)
                    if parent in self.ours and pid == tgid:  # a new process (not a thread) of ours
                        self.ours.add(pid)
                        self.births.append((stamp / 1e9, pid))  # ktime_get_ns: CLOCK_MONOTONIC
                elif what == self.PROC_EVENT_EXEC:
                    pid = struct.unpack_from("=I", data, event + 4)[0]
                    if pid in self.ours:
                        self.names[pid] = ""
                        with contextlib.suppress(OSError):
                            with open(f"/proc/{pid}/cmdline", "rb") as f:
                                self.names[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
                offset += max(length, self.HEADER + 16)

    def between(self, start: float, end: float) -> list[int] | None:
        """Pids of the Python processes started in [start, end]: forked without exec (a
        ProcessPoolExecutor's workers), or exec'd Python (the others'); not helpers such as the
        ``uname -p`` a dask worker runs at start. None when they cannot be known."""
        if self.error or self.lost:
            return None
        time.sleep(0.05)  # events of the last instant still on their way
        return [pid for stamp, pid in list(self.births) if start <= stamp <= end and
                (pid not in self.names or os.path.basename(self.names[pid].split(" ", 1)[0]).startswith("python"))]


def start_gearmand_workers(logdir: Path, key_file: Path) -> str:
    """gearmand and ``gearnb worker --processes 2`` (children of this process, outside the
    driver's process group); returns gearmand's address once both workers serve pyexec."""
    import gearnb
    from gearnb.pyexec.control import control_functions

    _proc, address, _label = start_server("gearmand", logdir, [])
    workers = spawn([sys.executable, "-m", "gearnb", "worker", "--servers", address, "--processes", str(WORKERS),
                     "--key-file", str(key_file)], logdir / "gearnb-worker.log")

    def ready() -> bool:
        with gearnb.Admin(address, timeout=5) as admin:
            return len(control_functions(admin)) >= WORKERS

    wait_until(ready, START_LIMIT, "gearnb worker --processes 2 on gearmand", workers)
    return address


def run_driver(column: str, case: str, params: dict[str, Any], logdir: Path, limit: float,
               loads: list[float]) -> dict[str, Any]:
    out = logdir / f"{column}-{case}.jsonl"
    log = logdir / f"{column}-{case}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-u", str(DRIVER), column, case, json.dumps(params), str(out)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=str(logdir),
            start_new_session=True)  # a session of its own, as a Jupyter kernel has
    result: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + limit + 30  # the driver's own alarm comes first
        while proc.poll() is None and time.monotonic() < deadline:
            loads.append(os.getloadavg()[0])
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
        if proc.poll() is None:
            result["aborted"] = f"killed after {limit + 30:g} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop_all()  # gearmand and gearnb worker
        kill_leftovers()  # whatever the framework left behind (we are a child subreaper)
    if out.exists():
        for line in out.read_text().splitlines():
            result.update(json.loads(line))
    if "log_start" in result and "log_end" in result:  # what the framework printed where the caller runs
        with open(log, "rb") as f:
            f.seek(result["log_start"])
            printed = f.read(result["log_end"] - result["log_start"]).decode(errors="replace")
        result["printed_lines"] = len(printed.splitlines())
        result["printed_head"] = printed.splitlines()[:12]  # for --json
        result["printed_tracebacks"] = printed.count("Traceback (most recent call last)")
    if "aborted" in result:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        result["log"] = " / ".join(tail)
    return result


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def next_map_cell(r: dict[str, Any]) -> str:
    if "next_map" in r:
        return seconds(r["next_map"])
    if "next_error" not in r:
        return "-"
    then = ""
    if "recovered" in r:
        then = f"; {r['recover_how']} + map {seconds(r['recovered'])}"
    elif "recover_error" in r:
        then = f"; {r['recover_how']} + map: {r['recover_error'].split(':')[0]}"
    return f"{r['next_error'].split(':')[0]} after {seconds(r['next_map_failed_after'])}{then}"


def printed_cell(r: dict[str, Any]) -> str:
    if "printed_lines" not in r:
        return "-"
    tracebacks = r["printed_tracebacks"]
    return f"{r['printed_lines']}" + (f" ({tracebacks} traceback{'s' * (tracebacks > 1)})" if tracebacks else "")


def births_cell(births: ProcessBirths, r: dict[str, Any]) -> str:
    if "window_start" not in r or "window_end" not in r:
        return "-"
    pids = births.between(r["window_start"], r["window_end"])
    return "n/a" if pids is None else str(len(pids))


def fork_cell(r: dict[str, Any]) -> str:
    fork = r.get("fork")
    if fork is None:
        return "-"
    if isinstance(fork, str):
        return fork
    first = fork[0]
    if "error" in first:
        return f"{first['error']} after {seconds(first['seconds'])}"
    text = f"{'right values' if all(c.get('ok') for c in fork) else 'WRONG values'} in {seconds(r['fork_seconds'])}"
    return text + (f" (warning: {first['warning']})" if first.get("warning") else "")


ROWS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = []
for _case, _what in CRASHES.items():
    ROWS += [
        (f"{_what} in item 3 of a map of 8: error after", _case, lambda r: seconds(r.get("error_after"))),
        ("  error", _case, lambda r: r.get("error", "-")),
        ("  runs of the task", _case, lambda r: str(r.get("runs", "-"))),
        ("  processes started", _case, lambda r: r.get("births", "-")),
        ("  lines printed where the caller runs", _case, printed_cell),
        ("  next map (4 items)", _case, next_map_cell),
    ]
ROWS += [
    (f"4 endless tasks, give up at {GIVE_UP_AFTER:g} s: gave up after", "endless",
     lambda r: seconds(r.get("gave_up_after"))),
    ("  how", "endless", lambda r: r.get("stop", "-")),
    ("  error", "endless", lambda r: r.get("error", "-")),
    (f"  {CPU_AFTER:g}-{CPU_AFTER + CPU_WINDOW:g} s later: processes still busy (CPU)", "endless",
     lambda r: "-" if "cpu_pct" not in r else f"{r['busy_processes']} ({r['cpu_pct']:.0f}% of a core)"),
    ("  processes started", "endless", lambda r: r.get("births", "-")),
    ("  lines printed where the caller runs", "endless", printed_cell),
    ("  next map (4 items)", "endless", next_map_cell),
    (f"Jupyter interrupt in a map of {INTERRUPT_ITEMS}: the caller gets", "interrupt",
     lambda r: r.get("error", "-")),
    ("  after", "interrupt", lambda r: seconds(r.get("interrupt_after"))),
    ("  processes started", "interrupt", lambda r: r.get("births", "-")),
    ("  lines printed where the caller runs", "interrupt", printed_cell),
    ("  next map (4 items)", "interrupt", next_map_cell),
    ("  first map's tasks after it: started/finished", "interrupt",
     lambda r: f"{r['started_after']} / {r['finished_after']}" if "started_after" in r else "-"),
    ("cancel() on a running future returns", "cancel", lambda r: r.get("cancel_returned", "-")),
    ("  then result()", "cancel", lambda r: r.get("result", "-")),
    ("  the task ran to its end", "cancel", lambda r: {True: "yes", False: "no"}.get(r.get("ran_to_end"), "-")),
    ("forked Pool child maps after the parent", "fork", fork_cell),
]


def wrapped_rows(columns: list[str], results: dict[tuple[str, str], dict[str, Any]], cases: list[str],
                 width: int) -> list[tuple[str, ...]]:
    """The table's rows; a long cell continues on the rows below it (an empty label)."""
    table: list[tuple[str, ...]] = [("case", *(TITLES[c] for c in columns))]
    baselines = [[r["baseline"] for (c, _), r in results.items() if c == column and "baseline" in r]
                 for column in columns]
    if any(baselines):
        table.append(("a 4-item map when all is well (median)",
                      *(seconds(statistics.median(b)) if b else "-" for b in baselines)))
    for label, case, render in ROWS:
        if case not in cases:
            continue
        cells = []
        for column in columns:
            r = results.get((column, case), {})
            text = f"aborted: {r['aborted']}" if "aborted" in r and label[0] != " " else render(r)
            if len(text) > MAX_CELL_LINES * width:  # dask's messages run to 300 characters; --json has them
                text = text[:MAX_CELL_LINES * width - 4] + " ..."
            cells.append(textwrap.wrap(text, width) or ["-"])
        for n in range(max(len(c) for c in cells)):
            table.append((label if n == 0 else "", *(c[n] if n < len(c) else "" for c in cells)))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(COLUMNS), help=f"columns, in order (default {','.join(COLUMNS)})")
    parser.add_argument("--cases", default=",".join(CASES), help=f"cases, in order (default {','.join(CASES)})")
    parser.add_argument("--case-timeout", type=float, default=CASE_LIMIT,
                        help=f"limit for one column's case, set-up included, s (default {CASE_LIMIT})")
    parser.add_argument("--width", type=int, default=34, help="cell width; longer cells wrap (default 34)")
    parser.add_argument("--deadline", type=float, default=3600, help="limit for the whole run, s (default 3600)")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement here")
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.only.split(",") if c.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not columns or any(c not in COLUMNS for c in columns):
        parser.error(f"--only: choose from {', '.join(COLUMNS)}")
    if not cases or any(c not in CASES for c in cases):
        parser.error(f"--cases: choose from {', '.join(CASES)}")
    if "gearmand" in columns and not os.access(GEARMAND, os.X_OK):
        parser.error(f"gearmand not found ({GEARMAND}); install gearman-job-server or leave out the gearmand column")

    with contextlib.suppress(Exception):  # orphans of the drivers come to us: we kill them
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    births = ProcessBirths()
    results: dict[tuple[str, str], dict[str, Any]] = {}
    loads = [os.getloadavg()[0]]

    def body(logdir: Path) -> None:
        from gearnb.pyexec.keys import create_key_file

        key_file = logdir / "cluster.key"
        key = create_key_file(str(key_file)).hex()
        for case in cases:
            for column in columns:
                params = {"case_limit": args.case_timeout, "key": key}
                started = time.monotonic()
                if column == "gearmand":  # one that does not start ends the run (BenchError)
                    params["address"] = start_gearmand_workers(logdir, key_file)
                r = run_driver(column, case, params, logdir, args.case_timeout, loads)
                r["births"] = births_cell(births, r)
                r["birth_names"] = [births.names.get(pid, "?") for pid in births.between(
                    r.get("window_start", 0), r.get("window_end", 0)) or []]
                results[(column, case)] = r
                print(f"  {case:>9} {TITLES[column]:<20} {time.monotonic() - started:5.1f} s"
                      f"{'  ' + r['aborted'] if 'aborted' in r else ''}", file=sys.stderr, flush=True)

    print(f"unhappy path: Python {platform.python_version()}, {os.cpu_count()} CPUs, {WORKERS} workers per column; "
          f"load average {loads[0]:.2f} at start", file=sys.stderr, flush=True)
    logdir, failure = run_guarded(args.deadline, body)
    if failure:
        return finish(1, failure, logdir)
    print(f"What a user sees when a task misbehaves; {WORKERS} worker processes per column; Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs; {versions()}")
    print_table(wrapped_rows(columns, results, cases, args.width), right=())
    print(f"load average (1 min): {loads[0]:.2f} at the start, {max(loads):.2f} at the highest, "
          f"{os.getloadavg()[0]:.2f} at the end"
          + (f"; processes started: {births.error}" if births.error else "")
          + ("; processes started: n/a (proc connector events were lost)" if births.lost else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{column} {case}": r for (column, case), r in results.items()}, f, indent=1)
    aborted = [k for k, r in results.items() if "aborted" in r]
    if aborted:  # a framework that hangs or breaks is a result, not a failure of the benchmark
        print(f"aborted: {', '.join(f'{c} {k}' for c, k in aborted)}", file=sys.stderr)
    finish(1 if aborted else 0, None, logdir)  # the logs are removed, or kept and named if a case aborted
    return 0


def versions() -> str:
    from importlib import metadata

    found = []
    for dist in ("dask", "distributed", "joblib", "gearnb"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist} {metadata.version(dist)}")
    found.append("gearmand " + subprocess.run([GEARMAND, "--version"], capture_output=True, text=True,
                                              timeout=10).stdout.split()[1])
    return ", ".join(found)


if __name__ == "__main__":
    sys.exit(main())
