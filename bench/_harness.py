"""What the benchmarks' ``main()`` share: the server options, a run under a deadline that stops
every child it started, its log directory, and the tables they print. Imported as ``_harness``
(the benchmarks run as ``python bench/X.py``, next to this file)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from _processes import GEARMAND, BenchError, stop_all


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--servers``, ``--gearmand-threads``, ``--timeout`` (per step) and ``--deadline`` (whole run)."""
    parser.add_argument("--servers", default="gearmand,gearnb", help="which servers, in order (default both)")
    parser.add_argument("--gearmand-threads", type=int, default=0, help="gearmand --threads (default 0)")
    parser.add_argument("--timeout", type=float, default=300, help="limit for each step, s (default 300)")
    parser.add_argument("--deadline", type=float, default=1800, help="limit for the whole run, s (default 1800)")


def check_options(parser: argparse.ArgumentParser, servers: str, counts: Iterable[int] = ()) -> list[str]:
    """The servers of ``--servers``, in order; a usage error for an unknown one, a missing
    gearmand, or one of ``counts`` below 1."""
    kinds = [k.strip() for k in servers.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("gearmand", "gearnb"):
            parser.error(f"unknown server {kind!r} (gearmand or gearnb)")
    if "gearmand" in kinds and not os.access(GEARMAND, os.X_OK):
        parser.error(f"gearmand not found ({GEARMAND}); install it or pass --servers gearnb")
    if min(counts, default=1) < 1:
        parser.error("counts must be at least 1")
    return kinds


DEADLINE_PASSED: list[float] = []  # set by run_guarded's alarm


def deadline_message(deadline: float) -> str:
    return f"the whole run took longer than --deadline {deadline:g} s"


def check_deadline() -> None:
    """Raise the deadline's BenchError if it has passed (for code under an event loop)."""
    if DEADLINE_PASSED:
        raise BenchError(deadline_message(DEADLINE_PASSED[-1]))


def run_guarded(deadline: float, body: Callable[[Path], None]) -> tuple[Path, str | None]:
    """Run ``body(logdir)`` with SIGTERM and ``deadline`` seconds (SIGALRM) raising BenchError,
    then stop every child process. Returns the log directory and, if ``body`` failed or was
    interrupted (Ctrl-C), a message saying so."""

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else BenchError(f"stopped by signal {signum}")

    def on_alarm(_signum: int, _frame: object) -> None:
        # Remembered as well as raised: raised inside an event loop's callback, the error is
        # only logged by the loop, and the run fails later for a reason that hides this one.
        DEADLINE_PASSED.append(deadline)
        raise BenchError(deadline_message(deadline))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(deadline)))
    logdir = Path(tempfile.mkdtemp(prefix="gearnb-bench-"))
    try:
        body(logdir)
    except (BenchError, KeyboardInterrupt) as exc:
        return logdir, f"benchmark aborted: {exc or type(exc).__name__}; logs in {logdir}"
    finally:
        signal.alarm(0)
        stop_all()
    return logdir, None


def finish(status: int, failure: str | None, logdir: Path) -> int:
    """The exit status; the log directory is removed when all went well, named otherwise."""
    if failure:
        print(f"\n{failure}", file=sys.stderr)
        return 1
    if status == 0:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"logs in {logdir}", file=sys.stderr)
    return status


def print_table(table: list[tuple[str, ...]], right: tuple[int, ...]) -> None:
    """Rows of cells in aligned columns (``right``: the right-aligned ones), a rule under the first."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print(" | ".join(cells).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))
