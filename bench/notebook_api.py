#!/usr/bin/env python3
"""The notebook API against its peers: gearnb, dask.distributed, ipyparallel, ProcessPoolExecutor.

    python bench/notebook_api.py            # the full run (about 5-8 minutes on 2 cores)
    python bench/notebook_api.py --quick    # smaller sizes, one repeat (under a minute or two)
    python bench/notebook_api.py --only gearnb,ppe --json results.json

Every framework gets ``--workers`` worker processes (default 2) on this machine and runs the
same trivial function, defined in ``__main__`` as it would be in a notebook:

1. ``--tasks`` (10,000) trivial tasks, unchunked: ``gearnb.local(workers=2).gmap(f, range(N),
   chunksize=1)``; dask ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` with
   ``client.map`` + ``client.gather``; ipyparallel ``ipp.Cluster(n=2)`` load-balanced view
   ``map_sync`` (one task per item); ``ProcessPoolExecutor(2).map(f, ..., chunksize=1)`` -> tasks/s.
2. ``--items`` (1,000,000) items with ``chunksize="auto"`` for gearnb, and for the
   ProcessPoolExecutor the chunk size that gearnb's "auto" rule picks -> items/s.
3. submit -> result latency, one call at a time (``--latency`` round trips) -> p50 / p99 in ms.
4. a ``--array-mib`` (64) MiB float64 numpy array sent as the argument of an identity function
   and returned (``ex.submit(lambda a: a, arr).result()``) -> MB/s, counting 2 x 64 MiB moved per
   round trip (there and back) over the median round-trip time, MB = 10^6 bytes.
5. the same with ``--big-array-mib`` (1,024) MiB, two round trips after one warm-up (not
   ipyparallel).
6. a sweep: 100 tasks that each read their slice of a ``--sweep-mb`` (200) MB float64 array the
   mapped function captures (gearnb ``gmap(lambda i: slice_sum(data, i), range(100),
   chunksize=1)``) or, for dask, that ``client.scatter(data, broadcast=True)`` sent to every
   worker first; the dataset is sent again in each of the ``--repeat`` runs.

Then each target of issue 11 is printed as gearnb's figure over its peer's, with PASS or MISS.

Each framework runs in a child process of its own (its own session), one after the other, so
one framework's processes never share the machine with another's. Every measurement has a time
limit (``--step-timeout``), every framework one more (``--framework-timeout``); afterwards every
process the child left behind is found (this process is a child subreaper) and killed by pid.
Results are checked (the values of every map and round trip are compared with what they should
be). Throughput is the best of ``--repeat`` runs; latency percentiles come from one series.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

FRAMEWORKS = ("gearnb", "dask", "ipyparallel", "ppe")
TITLES = {"gearnb": "gearnb", "dask": "dask", "ipyparallel": "ipyparallel", "ppe": "ProcessPool"}
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


# -- the work: defined in __main__, as in a notebook ------------------------------------------
def inc(x):
    return x + 1


def ident(a):
    return a


SWEEP_TASKS = 100


def slice_sum(data, i):
    """Task ``i`` of the sweep reads its hundredth of the dataset."""
    step = len(data) // SWEEP_TASKS
    return float(data[i * step:(i + 1) * step].sum())


# -- the child: one framework, every measurement ---------------------------------------------
class StepTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise StepTimeout()


class Child:
    def __init__(self, params: dict[str, Any], out: Path) -> None:
        self.p = params
        self.out = out

    def emit(self, step: str, **fields: Any) -> None:
        with open(self.out, "a") as f:
            f.write(json.dumps({"step": step, **fields}) + "\n")

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement under a time limit; its result (or its error) goes to the file,
        with the CPU time all processes of the framework spent on it (``cpu_s``)."""
        signal.setitimer(signal.ITIMER_REAL, self.p["step_timeout"])
        try:
            cpu = tree_cpu()
            load = os.getloadavg()[0]
            result = fn()
            result["cpu_s"] = tree_cpu() - cpu
            result["load"] = max(load, os.getloadavg()[0])
            self.emit(name, **result)
        except StepTimeout:
            self.emit(name, error=f"timed out after {self.p['step_timeout']:g} s")
        except Exception as exc:  # noqa: BLE001 - reported in the table
            traceback.print_exc()
            self.emit(name, error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    # measurements shared by every framework; ``run_map(f, data)`` returns a list
    def tasks(self, run_map: Callable[[Callable, range], list]) -> dict[str, Any]:
        n = self.p["tasks"]
        runs = []
        for _ in range(self.p["repeat"]):
            t = time.perf_counter()
            out = run_map(inc, range(n))
            runs.append(time.perf_counter() - t)
            check(out, n)
        return {"value": n / min(runs), "runs": [n / r for r in runs], "units": n * len(runs)}

    def latency(self, call: Callable[[Callable, Any], Any]) -> dict[str, Any]:
        for i in range(min(50, self.p["latency"])):  # warm up: code cached, connections made
            call(inc, i)
        times = []
        for i in range(self.p["latency"]):
            t = time.perf_counter()
            value = call(inc, i)
            times.append(time.perf_counter() - t)
            if value != i + 1:
                raise AssertionError(f"inc({i}) returned {value!r}")
        times.sort()
        return {"p50": percentile(times, 50) * 1e3, "p99": percentile(times, 99) * 1e3,
                "mean": statistics.fmean(times) * 1e3, "n": len(times), "units": len(times)}

    def array(self, call: Callable[[Callable, Any], Any], mib: int | None = None,
              rounds: int | None = None) -> dict[str, Any]:
        import numpy as np

        arr = np.random.default_rng(1).random((mib or self.p["array_mib"]) * 1024 * 1024 // 8)
        times = []
        for i in range((rounds or self.p["array_rounds"]) + 1):
            t = time.perf_counter()
            back = call(ident, arr)
            elapsed = time.perf_counter() - t
            if i:  # the first round trip warms up (and is checked like the others)
                times.append(elapsed)
            if not (isinstance(back, np.ndarray) and back.dtype == arr.dtype and np.array_equal(back, arr)):
                raise AssertionError("the array came back different")
            del back
        median = statistics.median(times)
        return {"value": 2 * arr.nbytes / median / 1e6, "median_s": median, "runs_s": times,
                "units": len(times) + 1}

    def sweep(self, run: Callable[[Any], list]) -> dict[str, Any]:
        """SWEEP_TASKS tasks that each read a --sweep-mb dataset (their slice of it): ``run(data)``
        sends the dataset the framework's way and returns the tasks' values."""
        import numpy as np

        data = np.random.default_rng(2).random(self.p["sweep_mb"] * 1_000_000 // 8)
        expected = [slice_sum(data, i) for i in range(SWEEP_TASKS)]
        times = []
        for _ in range(self.p["repeat"]):
            t = time.perf_counter()
            out = run(data)
            times.append(time.perf_counter() - t)
            if len(out) != SWEEP_TASKS or not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(out, expected)):
                raise AssertionError("the sweep returned wrong values")
        return {"value": min(times), "runs_s": times, "units": SWEEP_TASKS * len(times)}

    # -- frameworks -----------------------------------------------------------------------
    def run_gearnb(self) -> None:
        import gearnb
        from gearnb.executor.mapping import auto_chunksize

        workers = self.p["workers"]
        with gearnb.local(workers=workers) as ex:
            ex.gmap(inc, range(200), chunksize=1)  # workers cache the function; connections made
            self.step("tasks", lambda: self.tasks(lambda f, data: ex.gmap(f, data, chunksize=1)))

            def items() -> dict[str, Any]:
                n = self.p["items"]
                runs = []
                for _ in range(self.p["repeat"]):
                    t = time.perf_counter()
                    out = ex.gmap(inc, range(n), chunksize="auto")
                    runs.append(time.perf_counter() - t)
                    check(out, n)
                    del out
                return {"value": n / min(runs), "runs": [n / r for r in runs],
                        "chunksize": auto_chunksize(n, ex.worker_count()), "units": n * len(runs)}

            self.step("items", items)
            self.step("latency", lambda: self.latency(lambda f, x: ex.submit(f, x).result()))
            self.step("array", lambda: self.array(lambda f, a: ex.submit(f, a).result()))
            if self.p["big_array_mib"]:
                self.step("big_array", lambda: self.array(lambda f, a: ex.submit(f, a).result(),
                                                          self.p["big_array_mib"], 2))
            # The dataset is captured by the function: sent once per worker, not once per task.
            self.step("sweep", lambda: self.sweep(
                lambda data: ex.gmap(lambda i: slice_sum(data, i), range(SWEEP_TASKS), chunksize=1)))

    def run_ppe(self) -> None:
        import concurrent.futures

        from gearnb.executor.mapping import auto_chunksize

        workers = self.p["workers"]
        with concurrent.futures.ProcessPoolExecutor(workers) as ex:
            list(ex.map(inc, range(200)))  # start the processes
            self.step("tasks", lambda: self.tasks(lambda f, data: list(ex.map(f, data, chunksize=1))))

            def items() -> dict[str, Any]:
                n = self.p["items"]
                size = auto_chunksize(n, workers)  # the same rule as gearnb's chunksize="auto"
                runs = []
                for _ in range(self.p["repeat"]):
                    t = time.perf_counter()
                    out = list(ex.map(inc, range(n), chunksize=size))
                    runs.append(time.perf_counter() - t)
                    check(out, n)
                    del out
                return {"value": n / min(runs), "runs": [n / r for r in runs], "chunksize": size,
                        "units": n * len(runs)}

            self.step("items", items)
            self.step("latency", lambda: self.latency(lambda f, x: ex.submit(f, x).result()))
            self.step("array", lambda: self.array(lambda f, a: ex.submit(f, a).result()))
            if self.p["big_array_mib"]:
                self.step("big_array", lambda: self.array(lambda f, a: ex.submit(f, a).result(),
                                                          self.p["big_array_mib"], 2))

    def run_dask(self) -> None:
        import logging
        import warnings

        from dask.distributed import Client, LocalCluster

        warnings.filterwarnings("ignore")  # "Large object ... detected in task graph" for the array
        workers = self.p["workers"]
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            client.gather(client.map(inc, range(200), pure=False))

            def run_map(f: Callable, data: range) -> list:
                futures = client.map(f, data, pure=False)
                try:
                    return client.gather(futures)
                finally:
                    del futures

            self.step("tasks", lambda: self.tasks(run_map))
            self.step("latency", lambda: self.latency(lambda f, x: client.submit(f, x, pure=False).result()))
            self.step("array", lambda: self.array(lambda f, a: client.submit(f, a, pure=False).result()))
            if self.p["big_array_mib"]:
                self.step("big_array", lambda: self.array(lambda f, a: client.submit(f, a, pure=False).result(),
                                                          self.p["big_array_mib"], 2))

            def sweep(data: Any) -> list:
                scattered = client.scatter(data, broadcast=True)  # to every worker, once
                try:
                    return client.gather(client.map(slice_sum, [scattered] * SWEEP_TASKS, range(SWEEP_TASKS),
                                                    pure=False))
                finally:
                    client.cancel(scattered)

            self.step("sweep", lambda: self.sweep(sweep))

    def run_ipyparallel(self) -> None:
        import logging

        import ipyparallel as ipp

        workers = self.p["workers"]
        cluster = ipp.Cluster(n=workers, log_level=logging.ERROR)
        try:
            rc = cluster.start_and_connect_sync()
            rc.wait_for_engines(workers, timeout=60)
            view = rc.load_balanced_view()
            view.map_sync(inc, range(200))
            self.step("tasks", lambda: self.tasks(lambda f, data: view.map_sync(f, data)))
            self.step("latency", lambda: self.latency(lambda f, x: view.apply_sync(f, x)))
            self.step("array", lambda: self.array(lambda f, a: view.apply_sync(f, a)))
            rc.close()
        finally:
            with contextlib.suppress(Exception):
                cluster.stop_cluster_sync()


def tree_cpu() -> float:
    """CPU seconds (user + system) of this process and every process below it."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def check(out: list, n: int) -> None:
    if len(out) != n or out[0] != 1 or out[-1] != n or out[n // 2] != n // 2 + 1:
        raise AssertionError("the map returned wrong values")


def percentile(sorted_values: list[float], pct: float) -> float:
    k = (len(sorted_values) - 1) * pct / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


NOT_INSTALLED = 3  # a child's exit status when its framework cannot be imported


def child_main(name: str, params: dict[str, Any], out: Path) -> int:
    with contextlib.suppress(Exception):  # die with the bench process
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGALRM, _alarm)
    child = Child(params, out)
    try:
        getattr(child, f"run_{name}")()
    except ModuleNotFoundError as exc:  # the framework is not installed here: say so, once
        print(f"{exc.name} is not installed; pip install -e '.[bench]'", file=sys.stderr)
        return NOT_INSTALLED
    except Exception as exc:  # noqa: BLE001 - setting up the framework failed
        traceback.print_exc()
        child.emit("setup", error=f"{type(exc).__name__}: {exc}"[:200])
        return 1
    return 0


# -- the parent: one child per framework, the table -------------------------------------------
def descendants_of_me() -> list[int]:
    """Pids whose parent is this process (orphans come here: we are a child subreaper)."""
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            pids.append(int(entry))
    return pids


def kill_leftovers() -> int:
    """Kill (by pid) every process left behind by a finished child; returns how many."""
    killed = 0
    for _ in range(20):  # killing an orphan may hand us its own children
        pids = descendants_of_me()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            killed += 1
    return killed


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def run_child(name: str, params: dict[str, Any], workdir: Path, timeout: float) -> tuple[list[dict], str]:
    out = workdir / f"{name}.jsonl"
    log = workdir / f"{name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", name, "--params", json.dumps(params), "--out", str(out)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(workdir),
            start_new_session=True)
        note = ""
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            note = f"killed after {timeout:g} s"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still there
            leftovers = kill_leftovers()
    failed = bool(note) or proc.returncode != 0
    if proc.returncode == NOT_INSTALLED and not note:
        return [], "not installed (pip install -e '.[bench]')"
    if proc.returncode and not note:
        note = f"exit status {proc.returncode}"
    if leftovers:  # e.g. ipyparallel engines run in sessions of their own
        note = (note + "; " if note else "") + f"cleaned up {leftovers} leftover processes"
    results = []
    if out.exists():
        results = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    if failed or any("error" in r for r in results):
        tail = [line for line in log.read_text(errors="replace").strip().splitlines()[-8:] if line.strip()]
        note = "\n      ".join([note] + tail) if tail else note
    return results, note


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("dask", "distributed", "ipyparallel", "numpy", "cloudpickle", "msgpack", "uvloop"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def fmt_rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M{unit}"
    return f"{value:,.0f}{unit}"


def print_table(args: argparse.Namespace, results: dict[str, dict[str, dict]], notes: dict[str, str]) -> bool:
    def get(fw: str, step: str, field: str = "value") -> float | None:
        r = results.get(fw, {}).get(step)
        return None if r is None or "error" in r else r.get(field)

    def cell(fw: str, step: str, field: str, render: Callable[[float], str]) -> str:
        if fw not in results:
            return "-"
        r = results[fw].get(step)
        if r is None:
            return "n/a" if step in SKIPPED.get(fw, ()) else "-"
        if "error" in r:
            return "error"
        return render(r[field])

    ms = lambda v: f"{v:.2f} ms"  # noqa: E731
    rows = [
        (f"1. {args.tasks:,} trivial tasks, chunksize=1", "tasks", "value", lambda v: fmt_rate(v, "/s")),
        (f"2. {args.items:,} items, chunksize=auto", "items", "value", lambda v: fmt_rate(v, "/s")),
        ("3. submit->result latency p50", "latency", "p50", ms),
        ("   submit->result latency p99", "latency", "p99", ms),
        (f"4. {args.array_mib} MiB float64 array round trip", "array", "value", lambda v: f"{v:,.0f} MB/s"),
        (f"5. {args.big_array_mib:,} MiB float64 array round trip", "big_array", "value",
         lambda v: f"{v:,.0f} MB/s"),
        (f"6. sweep: {SWEEP_TASKS} tasks reading a {args.sweep_mb} MB array", "sweep", "value",
         lambda v: f"{v:.2f} s"),
    ]
    if not args.big_array_mib:
        rows = [row for row in rows if row[1] != "big_array"]
    fws = [fw for fw in FRAMEWORKS if fw in args.only]
    width = max(len(r[0]) for r in rows) + 2
    header = "".join(f"{TITLES[fw]:>14}" for fw in fws)
    print()
    print(f"{'':<{width}}{header}")
    print("-" * (width + 14 * len(fws)))
    for label, step, field, render in rows:
        print(f"{label:<{width}}" + "".join(f"{cell(fw, step, field, render):>14}" for fw in fws))

    def cpu_per(fw: str, step: str) -> float | None:
        r = results.get(fw, {}).get(step)
        return None if r is None or "error" in r or not r.get("units") else r["cpu_s"] / r["units"]

    # The targets of issue 11: (what, gearnb's figure, the peer's, the ratio, ">=" / "<=" / "<")
    targets = [
        ("tasks/s, chunksize=1 >= 1.5x ProcessPool", get("gearnb", "tasks"), get("ppe", "tasks"), 1.5, ">="),
        ("CPU per task (1.) below ProcessPool's", cpu_per("gearnb", "tasks"), cpu_per("ppe", "tasks"), 1.0, "<"),
        ("items/s, chunksize=auto >= 1.2x ProcessPool", get("gearnb", "items"), get("ppe", "items"), 1.2, ">="),
        ("submit->result p50 <= 1.2x ProcessPool", get("gearnb", "latency", "p50"), get("ppe", "latency", "p50"),
         1.2, "<="),
        (f"{args.array_mib} MiB round trip >= 2x dask's MB/s", get("gearnb", "array"), get("dask", "array"), 2.0, ">="),
        (f"sweep ({args.sweep_mb} MB captured) at least as fast as dask with scatter", get("gearnb", "sweep"),
         get("dask", "sweep"), 1.0, "<="),
    ]
    print()
    print(f"{'target (issue 11)':<60}{'gearnb / peer':>16}   verdict")
    print("-" * 88)
    all_ok = True
    for text, mine, peer, need, compare in targets:
        if mine is None or peer is None or not peer:
            print(f"{text:<60}{'-':>16}   ?")
            continue
        ratio = mine / peer
        ok = {">=": ratio >= need, "<=": ratio <= need, "<": ratio < need}[compare]
        all_ok = all_ok and ok
        print(f"{text:<60}{ratio:>15.2f}x   {'PASS' if ok else 'MISS'}")
    print()
    print(f"{'CPU time, all processes of each framework':<{width}}" + "".join(f"{TITLES[fw]:>14}" for fw in fws))
    for label, step, unit in [("   per task (1.)", "tasks", "us"), ("   per item (2.)", "items", "us"),
                              ("   per round trip (3.)", "latency", "us"), ("   per round trip (4.)", "array", "ms"),
                              ("   per round trip (5.)", "big_array", "ms"), ("   per task (6.)", "sweep", "ms")]:
        cells = []
        for fw in fws:
            r = results.get(fw, {}).get(step)
            if r is None or "error" in r or not r.get("units"):
                cells.append("-")
            else:
                per = r["cpu_s"] / r["units"]
                cells.append(f"{per * 1e6:,.1f} us" if unit == "us" else f"{per * 1e3:,.0f} ms")
        print(f"{label:<{width}}" + "".join(f"{c:>14}" for c in cells))
    loads = [r.get("load", 0) for fw in fws for r in results.get(fw, {}).values() if "error" not in r]
    print()
    chunk = get("gearnb", "items", "chunksize") or get("ppe", "items", "chunksize")
    print(f"  {args.workers} worker processes per framework; throughput is the best of {args.repeat} runs"
          f"{'' if chunk is None else f'; chunksize=auto picked {chunk:,} items per chunk (ProcessPool: the same)'}.")
    print(f"  latency: {args.latency:,} one-at-a-time round trips after 50 warm-up calls.")
    print(f"  array: MB/s = 2 x {args.array_mib} MiB (argument there + result back) / median round trip "
          f"of {args.array_rounds} (after one warm-up), MB = 10^6 bytes; ipyparallel: apply_sync.")
    if args.big_array_mib:
        print(f"  5.: the same with {args.big_array_mib:,} MiB, median of 2 after one warm-up.")
    print(f"  6.: the best of {args.repeat} sweeps, each sending the dataset again: gearnb captures it in the mapped")
    print("  function (gmap, chunksize=1), dask scatters it to every worker (broadcast=True) and maps over the")
    print(f"  future; each task sums its 1/{SWEEP_TASKS} slice. Ratios: gearnb's figure over the peer's.")
    print("  n/a: not measured for that framework (items/s is compared with ProcessPool only).")
    print("  CPU time: user + system of the framework's processes (client, scheduler or server, workers)")
    print("  over the whole measurement, warm-up included for 4. and 5.; it moves much less than wall time")
    print(f"  when other programs load the machine (highest 1-minute load average seen: {max(loads, default=0):.1f}).")
    for fw in fws:
        if notes.get(fw):
            print(f"  {TITLES[fw]}: {notes[fw]}")
    return all_ok


SKIPPED = {"dask": ("items",), "ipyparallel": ("items", "big_array", "sweep"), "ppe": ("sweep",)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 tasks, 200,000 items, 200 round trips, 16 MiB array, 1 repeat")
    parser.add_argument("--only", default=",".join(FRAMEWORKS),
                        help=f"frameworks to run, in this order (default {','.join(FRAMEWORKS)})")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per framework (default 2)")
    parser.add_argument("--tasks", type=int, help="unchunked tasks (default 10000)")
    parser.add_argument("--items", type=int, help="items for chunksize=auto (default 1000000)")
    parser.add_argument("--latency", type=int, help="one-at-a-time round trips (default 1000)")
    parser.add_argument("--array-mib", type=int, help="array size in MiB (default 64)")
    parser.add_argument("--array-rounds", type=int, help="array round trips (default 5)")
    parser.add_argument("--repeat", type=int, help="throughput runs, best taken (default 3)")
    parser.add_argument("--big-array-mib", type=int, help="the large round trip in MiB, 0: none (default 1024)")
    parser.add_argument("--sweep-mb", type=int, help="the sweep's captured dataset in MB (default 200)")
    parser.add_argument("--step-timeout", type=float, default=180, help="limit per measurement, s (default 180)")
    parser.add_argument("--framework-timeout", type=float, default=600,
                        help="limit per framework, s (default 600)")
    parser.add_argument("--json", metavar="FILE", help="also write every result (all runs) here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        return child_main(args.child, json.loads(args.params), Path(args.out))

    quick = args.quick
    defaults = {"tasks": (10000, 2000), "items": (1_000_000, 200_000), "latency": (1000, 200),
                "array_mib": (64, 16), "array_rounds": (5, 3), "repeat": (3, 1), "big_array_mib": (1024, 0),
                "sweep_mb": (200, 50)}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.only = [fw.strip() for fw in args.only.split(",") if fw.strip()]
    unknown = [fw for fw in args.only if fw not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework(s) {unknown}; choose from {', '.join(FRAMEWORKS)}")

    with contextlib.suppress(Exception):  # orphans of the children come to us: we kill them
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)

    params = {name: getattr(args, name) for name in defaults}
    params.update(workers=args.workers, step_timeout=args.step_timeout)
    v = versions()
    print(f"notebook API benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start; dask {v['distributed']}, "
          f"ipyparallel {v['ipyparallel']}, numpy {v['numpy']}, cloudpickle {v['cloudpickle']}")
    results: dict[str, dict[str, dict]] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gearnb-notebook-api-") as tmp:
        for fw in args.only:
            started = time.monotonic()
            print(f"  running {TITLES[fw]} ...", end="", flush=True)
            try:
                found, note = run_child(fw, params, Path(tmp), args.framework_timeout)
            except KeyboardInterrupt:
                print(" interrupted")
                kill_leftovers()
                return 130
            results[fw] = {r["step"]: r for r in found}
            notes[fw] = note
            print(f" {time.monotonic() - started:.0f} s")
    ok = print_table(args, results, notes)
    failed = any("error" in r for steps in results.values() for r in steps.values()) or any(
        note.startswith(("killed", "exit status")) for note in notes.values())
    ok = ok and not failed
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": params, "versions": v, "results": results, "notes": notes}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
