#!/usr/bin/env python3
"""One (column, case) of bench/unhappy_path.py, in a process of its own: the "kernel".

    python bench/_unhappy_driver.py COLUMN CASE PARAMS_JSON OUT_JSONL   (started by unhappy_path.py)

It owns the tasks (defined here, in ``__main__``, as a notebook defines them), the five
frameworks behind one small interface (start, map, submit, endless, recover, fork_parent,
fork_child, close) and the cases. Order of calls: start the framework and warm it with a
2-item map, run the case, write each measurement as a JSON line to OUT_JSONL at once (a
driver killed at its time limit keeps what it had), close the framework, ``os._exit``. Its
parent runs it in a session of its own, so SIGINT to its process group is what
jupyter_client's ``interrupt_kernel()`` does to a kernel; whatever it leaves behind its
parent kills.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from _processes import cpu_seconds, wait_until  # noqa: E402
from notebook_api import PR_SET_PDEATHSIG  # noqa: E402

CRASHES = {"exit": "os._exit(1)", "segfault": "segfault", "sigkill": "SIGKILL", "sys.exit": "sys.exit(3)"}
CASES = (*CRASHES, "endless", "interrupt", "cancel", "fork")
WORKERS = 2

# Limits, in seconds. A crashing map: gearnb tries the task 3 times, each in a fresh process,
# and dask on 4 workers, each restarted by its nanny: seconds each, far below this.
CALL_LIMIT = 60.0
NEXT_MAP_LIMIT = 10.0  # the "next map finishes in well under 5 s", with room for a loaded machine
GIVE_UP_AFTER = 3.0  # the timeout=3
CPU_AFTER, CPU_WINDOW = 2.0, 2.0  # "does anything still burn CPU 2 s later": measured over 2 s from then
SAMPLE_EVERY = 0.05  # thread states are sampled 40 times in that window
INTERRUPT_ITEMS, NAP = 200, 0.5  # the interrupted map: 200 tasks of time.sleep(0.5)
AFTER_NEXT_MAP = 2.0  # how long after the next map the first map's tasks are still watched
CANCEL_NAP = 2.0  # the running task cancel() is tried on
FORK_CHILD_LIMIT, FORK_LIMIT = 15.0, 25.0  # the child's own map, and the parent's wait for the child
START_LIMIT = 60.0  # a framework or a job server starting; a marker appearing


class StepTimeout(BaseException):  # not an Exception: the frameworks' handlers must not swallow it
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise StepTimeout()


def describe(exc: BaseException) -> str:
    """``Type: the first line of the message`` (the type alone if there is no message)."""
    text = str(exc).strip().split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- the tasks: defined in __main__, as in a notebook; they note what they do in a marks file ----
def _mark(marks: str, kind: str, i: int) -> None:
    with open(marks, "a") as f:  # one short O_APPEND write per line: lines never interleave
        f.write(f"{kind} {i} {time.monotonic()}\n")


def crash(i: int, how: str, marks: str) -> int:
    if i != 3:
        return i * 10
    _mark(marks, "attempt", i)
    if how == "exit":
        os._exit(1)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "sys.exit":
        sys.exit(3)
    return i


def spin(i: int, marks: str) -> None:
    _mark(marks, "start", i)
    while True:
        pass


def nap(i: int, seconds: float, marks: str) -> int:
    _mark(marks, "start", i)
    time.sleep(seconds)
    _mark(marks, "end", i)
    return i


def tenfold(x: int) -> int:
    return x * 10


def read_marks(marks: str, kind: str, after: float = 0.0) -> int:
    """How many ``kind`` lines the tasks wrote at or after monotonic time ``after``."""
    try:
        with open(marks) as f:
            rows = [line.split() for line in f]
    except FileNotFoundError:
        return 0
    return sum(1 for row in rows if len(row) == 3 and row[0] == kind and float(row[2]) >= after)


# -- the columns: one framework each, the same few operations --------------------------------
class Gearnb:
    """``gearnb.local(workers=2)``; the fork case uses the module-level ``gearnb.map``."""

    stop_how = "map(timeout=3)"
    recover_how = "new gearnb.local()"

    def __init__(self, params: dict[str, Any]) -> None:
        self.p = params
        self.ex: Any = None

    def start(self) -> None:
        import gearnb

        self.ex = gearnb.local(workers=WORKERS)

    def map(self, fn: Callable, *iterables: Any, timeout: float) -> list:
        return self.ex.gmap(fn, *iterables, chunksize=1, timeout=timeout)

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def endless(self, marks: str) -> BaseException | None:
        try:
            self.map(spin, range(4), [marks] * 4, timeout=GIVE_UP_AFTER)
        except Exception as exc:  # noqa: BLE001 - measured
            return exc
        return None

    def recover(self) -> None:
        self.ex.shutdown(wait=False)
        self.start()

    def fork_parent(self) -> list:
        import gearnb

        return gearnb.map(tenfold, [1, 2])  # the embedded default: a local cluster, a worker per CPU

    def fork_child(self, x: int) -> list:
        import gearnb

        return gearnb.map(tenfold, [x, x + 1], timeout=FORK_CHILD_LIMIT)

    def close(self) -> None:
        import gearnb

        if self.ex is not None:
            self.ex.shutdown(wait=False)
        gearnb.shutdown()


class GearnbGearmand(Gearnb):
    """A ``gearnb.Executor`` on gearmand, whose ``gearnb worker --processes 2`` the parent started."""

    recover_how = "new Executor"

    def start(self) -> None:
        import gearnb

        self.ex = gearnb.Executor(self.p["address"], key=self.p["key"])

    def fork_parent(self) -> list:
        import gearnb

        gearnb.connect(self.p["address"], key=self.p["key"])
        return gearnb.map(tenfold, [1, 2])


class PPE:
    stop_how = "result(timeout=3), then cancel() each"
    recover_how = "new pool"

    def __init__(self, params: dict[str, Any]) -> None:
        self.ex: Any = None

    def start(self) -> None:
        import concurrent.futures

        self.ex = concurrent.futures.ProcessPoolExecutor(WORKERS)

    def map(self, fn: Callable, *iterables: Any, timeout: float) -> list:
        return list(self.ex.map(fn, *iterables, timeout=timeout))

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def endless(self, marks: str) -> BaseException | None:
        futures = [self.ex.submit(spin, i, marks) for i in range(4)]
        error = None
        try:
            futures[0].result(timeout=GIVE_UP_AFTER)
        except Exception as exc:  # noqa: BLE001 - measured
            error = exc
        for future in futures:
            future.cancel()  # queued ones only: a running future cannot be cancelled
        if hasattr(self.ex, "terminate_workers"):  # Python 3.14
            self.ex.terminate_workers()
            self.stop_how = "result(timeout=3), cancel(), terminate_workers()"
        return error

    def recover(self) -> None:
        self.ex.shutdown(wait=False, cancel_futures=True)
        self.start()

    def fork_parent(self) -> list:
        self.start()
        return self.map(tenfold, [1, 2], timeout=FORK_CHILD_LIMIT)

    def fork_child(self, x: int) -> list:
        return self.map(tenfold, [x, x + 1], timeout=FORK_CHILD_LIMIT)  # the executor the parent made

    def close(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=False, cancel_futures=True)


class Joblib:
    stop_how = "Parallel(timeout=3)"
    recover_how = "same call again"

    def __init__(self, params: dict[str, Any]) -> None:
        pass

    def start(self) -> None:
        pass  # joblib starts (and reuses) its loky workers on the first call: the warm-up map

    def map(self, fn: Callable, *iterables: Any, timeout: float) -> list:
        from joblib import Parallel, delayed

        return Parallel(n_jobs=WORKERS, timeout=timeout)(delayed(fn)(*args) for args in zip(*iterables))

    def submit(self, fn: Callable, *args: Any) -> Any:
        from joblib.externals.loky import get_reusable_executor  # joblib has no futures; loky's executor has

        return get_reusable_executor(max_workers=WORKERS).submit(fn, *args)

    def endless(self, marks: str) -> BaseException | None:
        try:
            self.map(spin, range(4), [marks] * 4, timeout=GIVE_UP_AFTER)
        except Exception as exc:  # noqa: BLE001 - measured
            return exc
        return None

    def recover(self) -> None:
        pass

    def fork_parent(self) -> list:
        return self.map(tenfold, [1, 2], timeout=FORK_CHILD_LIMIT)

    def fork_child(self, x: int) -> list:
        return self.map(tenfold, [x, x + 1], timeout=FORK_CHILD_LIMIT)

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=False, kill_workers=True)


class Dask:
    stop_how = "result(timeout=3), then client.cancel(force=True)"
    recover_how = "client.restart()"

    def __init__(self, params: dict[str, Any]) -> None:
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        from dask.distributed import Client, LocalCluster

        # dask's own logging as it comes (silence_logs=WARN): what its users see
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None)
        self.client = Client(self.cluster)

    def map(self, fn: Callable, *iterables: Any, timeout: float) -> list:
        from dask.distributed import as_completed

        futures = self.client.map(fn, *iterables, pure=False)
        for future in as_completed(futures, timeout=timeout):
            future.result()  # the first error raises at once, as gather() does
        return [future.result() for future in futures]

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def endless(self, marks: str) -> BaseException | None:
        futures = self.client.map(spin, range(4), [marks] * 4, pure=False)
        error = None
        try:
            futures[0].result(timeout=GIVE_UP_AFTER)
        except Exception as exc:  # noqa: BLE001 - measured
            error = exc
        self.client.cancel(futures, force=True)
        return error

    def recover(self) -> None:
        self.client.restart(timeout=START_LIMIT)

    def fork_parent(self) -> list:
        self.start()
        return self.map(tenfold, [1, 2], timeout=FORK_CHILD_LIMIT)

    def fork_child(self, x: int) -> list:
        return self.map(tenfold, [x, x + 1], timeout=FORK_CHILD_LIMIT)  # the client the parent made

    def close(self) -> None:
        if self.client is not None:
            self.client.close(timeout=10)
            self.cluster.close(timeout=10)


FRAMEWORKS: dict[str, type] = {"gearnb": Gearnb, "gearmand": GearnbGearmand, "ppe": PPE, "joblib": Joblib,
                               "dask": Dask}


# -- the driver: one (column, case) -------------------------------------------------------------
class Recorder:
    def __init__(self, out: Path) -> None:
        self.out = out

    def emit(self, **fields: Any) -> None:
        with open(self.out, "a") as f:  # written at once: a driver killed at its limit keeps what it had
            f.write(json.dumps(fields) + "\n")

    def window(self, edge: str, **fields: Any) -> None:
        """The start or end of what a case measures: the time (process births are counted in
        between) and how far the caller's output has come (what the framework printed meanwhile).
        This driver prints nothing itself; its stdout and stderr are one log file."""
        self.emit(**{f"window_{edge}": time.monotonic(), f"log_{edge}": os.fstat(sys.stderr.fileno()).st_size},
                  **fields)


def framework_pids() -> list[int]:
    """Every process below the parent (the framework's job servers, schedulers, workers and
    task processes) except the parent and this driver, the caller; from /proc."""
    parent, me = os.getppid(), os.getpid()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if pid != me:
            found.append(pid)
    return found


def busy_processes(window: float) -> tuple[int, float]:
    """The framework's processes with a thread that was running or runnable (state R) in most
    of the samples taken over ``window`` seconds, and the CPU share (one core = 100) all its
    processes used meanwhile. A spinning task is R whatever the machine's load and an idle
    worker sleeps (S), so the count does not move with the load; the CPU share does. (Counted
    by process: a thread waiting for the GIL a spinning thread holds is often R too.)"""
    pids = framework_pids()
    before = {pid: cpu_seconds(pid) for pid in pids}
    running: dict[tuple[int, str], int] = {}
    samples = 0
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        samples += 1
        for pid in pids:
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError, IndexError):
                        with open(f"/proc/{pid}/task/{tid}/stat") as f:
                            if f.read().rsplit(")", 1)[1].split()[0] == "R":
                                running[pid, tid] = running.get((pid, tid), 0) + 1
        time.sleep(SAMPLE_EVERY)
    used = [cpu_seconds(pid) - before[pid] for pid in pids]
    cpu = sum(u for u in used if u == u)  # NaN: a process that ended meanwhile
    return len({pid for (pid, _), n in running.items() if n * 2 > samples}), 100 * cpu / window


def next_map(col: Any, rec: Recorder) -> None:
    """The next small map on the same framework; if it fails, what the user does then, and that map."""
    started = time.monotonic()
    try:
        out = col.map(abs, [-1, -2, -3, -4], timeout=NEXT_MAP_LIMIT)
        if out != [1, 2, 3, 4]:
            raise AssertionError(f"the next map returned {out!r}")
        rec.window("end", next_map=time.monotonic() - started)
        return
    except StepTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - measured (PPE: BrokenProcessPool)
        rec.window("end", next_error=describe(exc), next_map_failed_after=time.monotonic() - started)
    started = time.monotonic()
    try:
        col.recover()
        out = col.map(abs, [-1, -2, -3, -4], timeout=NEXT_MAP_LIMIT)
        if out != [1, 2, 3, 4]:
            raise AssertionError(f"the map returned {out!r}")
        rec.emit(recovered=time.monotonic() - started, recover_how=col.recover_how)
    except StepTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - measured (dask after an interrupt)
        rec.emit(recover_error=describe(exc), recover_how=col.recover_how)


def case_crash(col: Any, rec: Recorder, marks: str, how: str) -> None:
    rec.window("start")
    started = time.monotonic()
    try:
        col.map(crash, range(8), [how] * 8, [marks] * 8, timeout=CALL_LIMIT)
        rec.emit(error="no error")
    except StepTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        rec.emit(error=describe(exc))
    rec.emit(error_after=time.monotonic() - started, runs=read_marks(marks, "attempt"))
    next_map(col, rec)


def case_endless(col: Any, rec: Recorder, marks: str) -> None:
    rec.window("start")
    started = time.monotonic()
    error = col.endless(marks)
    gave_up = time.monotonic()
    rec.emit(gave_up_after=gave_up - started, error=describe(error) if error else "no error", stop=col.stop_how,
             spins_started=read_marks(marks, "start"))
    time.sleep(max(0.0, gave_up + CPU_AFTER - time.monotonic()))
    busy, cpu = busy_processes(CPU_WINDOW)
    rec.emit(busy_processes=busy, cpu_pct=cpu)
    next_map(col, rec)


def case_interrupt(col: Any, rec: Recorder, marks: str) -> None:
    sent: list[float] = []

    def interrupt() -> None:  # what jupyter_client's interrupt_kernel() does: SIGINT to the process group
        deadline = time.monotonic() + START_LIMIT
        while read_marks(marks, "start") < WORKERS and time.monotonic() < deadline:
            time.sleep(0.02)
        sent.append(time.monotonic())
        os.killpg(os.getpgrp(), signal.SIGINT)

    rec.window("start")
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        col.map(nap, range(INTERRUPT_ITEMS), [NAP] * INTERRUPT_ITEMS, [marks] * INTERRUPT_ITEMS, timeout=CALL_LIMIT)
        rec.emit(error="no error")
    except StepTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt, or what else reaches the caller
        rec.emit(error=describe(exc))
    stopped = time.monotonic()
    if sent:
        rec.emit(interrupt_after=stopped - sent[0])
    next_map(col, rec)
    time.sleep(AFTER_NEXT_MAP)
    rec.emit(started_after=read_marks(marks, "start", stopped), finished_after=read_marks(marks, "end", stopped))


def case_cancel(col: Any, rec: Recorder, marks: str) -> None:
    future = col.submit(nap, 0, CANCEL_NAP, marks)
    wait_until(lambda: read_marks(marks, "start") > 0, START_LIMIT, "the task to start")
    started = time.monotonic()
    rec.emit(cancel_returned=repr(future.cancel()))
    try:
        value = future.result(timeout=CANCEL_NAP + NEXT_MAP_LIMIT)
        rec.emit(result=f"value {value!r} after {time.monotonic() - started:.1f} s")
    except StepTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - measured (dask: CancelledError)
        rec.emit(result=f"after {time.monotonic() - started:.1f} s: {describe(exc)}")
    time.sleep(max(0.0, started + CANCEL_NAP + 1.0 - time.monotonic()))
    rec.emit(ran_to_end=read_marks(marks, "end") > 0)


_FORK_COLUMN: list[Any] = []  # the column a forked Pool child maps with (inherited across fork)


def _fork_child(x: int) -> dict[str, Any]:
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = _FORK_COLUMN[0].fork_child(x)
            outcome: dict[str, Any] = {"ok": value == [10 * x, 10 * x + 10]}
        except BaseException as exc:  # noqa: BLE001 - sent back as text: it may not pickle
            outcome = {"error": describe(exc)}
    outcome.update(seconds=time.monotonic() - started,
                   warning=str(caught[0].message).split("\n")[0] if caught else "")
    return outcome


def case_fork(col: Any, rec: Recorder, marks: str) -> None:
    if col.fork_parent() != [10, 20]:
        raise AssertionError("the parent's map returned wrong values")
    _FORK_COLUMN[:] = [col]
    started = time.monotonic()
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        children = pool.map_async(_fork_child, [1, 2], chunksize=1).get(FORK_LIMIT)
        rec.emit(fork=children, fork_seconds=time.monotonic() - started)
    except multiprocessing.TimeoutError:
        rec.emit(fork=f"no answer in {FORK_LIMIT:g} s")
    finally:
        pool.terminate()


def driver_main(column: str, case: str, params: dict[str, Any], out: Path) -> None:
    with contextlib.suppress(Exception):  # die with the parent
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(params["case_limit"]))
    rec = Recorder(out)
    col = FRAMEWORKS[column](params)
    marks = str(out.with_suffix(".marks"))
    try:
        if case != "fork":
            col.start()
            col.map(abs, [-1, -2], timeout=START_LIMIT)  # workers up, connections made
            started = time.monotonic()
            col.map(abs, [-1, -2, -3, -4], timeout=NEXT_MAP_LIMIT)
            rec.emit(baseline=time.monotonic() - started)  # the next map's time when all is well
        if case in CRASHES:
            case_crash(col, rec, marks, case)
        else:
            {"endless": case_endless, "interrupt": case_interrupt, "cancel": case_cancel,
             "fork": case_fork}[case](col, rec, marks)
    except StepTimeout:
        rec.emit(aborted=f"the case took longer than {params['case_limit']} s")
    except BaseException as exc:  # noqa: BLE001 - reported in the table
        rec.emit(aborted=describe(exc), traceback=traceback.format_exc())  # not printed: the log is the framework's
    finally:
        signal.alarm(30)  # closing may hang (a spinning worker): the parent kills what is left
        with contextlib.suppress(BaseException):
            col.close()
        signal.alarm(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # not the frameworks' exit handlers: PPE's joins workers that may still spin


if __name__ == "__main__":
    driver_main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4]))
