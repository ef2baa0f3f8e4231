#!/usr/bin/env python3
"""scikit-learn's GridSearchCV on three joblib backends: loky, dask's and gearnb's.

    python bench/gridsearch.py                 # 5 x 5 grid, cv=5, 3 runs each (about 4-6 minutes on 2 cores)
    python bench/gridsearch.py --quick         # 3 x 3 grid, cv=3, 1 run each, no sequential row
    python bench/gridsearch.py --only loky,gearnb --repeat 5

The work: ``GridSearchCV(SVC(), {"C": logspace(-1, 3, N), "gamma": logspace(-4, 0, N)}, cv=5)``
on scikit-learn's digits (1797 x 64, shipped with scikit-learn: no download), N = 5, so 25
candidates x 5 folds = 125 fits, and the refit of the best one in this process. Each backend
gets ``--workers`` (2) worker processes on this machine:

* loky: ``GridSearchCV(..., n_jobs=2)`` (joblib's default backend; its workers are reused)
* dask: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, a ``Client``, and
  ``joblib.parallel_config(backend="dask")`` with ``n_jobs=-1``
* gearnb: ``gearnb.local(workers=2)`` and ``joblib.parallel_config(backend="gearnb", executor=ex)``
  with ``n_jobs=-1``

Every cluster is started first (``set-up s``), then warmed with one small fit (20 candidates
on 200 samples, ``first small fit s``: the workers import scikit-learn). Then the runs are
interleaved, run 1 of every backend, then run 2, each round in a rotated order, so the
machine's drift over minutes falls on all of them alike. ``best s`` and ``median s`` are over
the runs; ``best / loky`` and ``median / loky`` divide a backend's time by loky's (below 1:
faster than loky). ``CPU s`` is the median CPU time (user + system) of this process and every
process below it over the runs, read from /proc: on a 2-core machine shared with other work,
wall time moves more than CPU time. A ``sequential`` row (``n_jobs=1``, in this process, one run) gives
the single-core time. Every backend's ``cv_results_`` scores and ``best_params_`` are compared
with the first backend's: they must be identical. Exits 0, or 1 if a result differs or a step
failed. A command, not a test. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import signal
import statistics
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from _harness import print_table  # noqa: E402
from notebook_api import tree_cpu  # noqa: E402

BACKENDS = ("loky", "dask", "gearnb")


class Deadline(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Deadline()


# -- the work --------------------------------------------------------------------------------
def make_search(grid_size: int, cv: int, n_jobs: int):
    import numpy as np
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    grid = {"C": np.logspace(-1, 3, grid_size).tolist(), "gamma": np.logspace(-4, 0, grid_size).tolist()}
    return GridSearchCV(SVC(), grid, cv=cv, n_jobs=n_jobs)


def small_fit(n_jobs: int) -> None:
    """20 candidates on 200 samples: makes every worker import scikit-learn."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    GridSearchCV(SVC(), {"C": [0.5, 1.0, 2.0, 4.0, 8.0], "gamma": [1e-4, 1e-3, 1e-2, 1e-1]}, cv=2,
                 n_jobs=n_jobs).fit(X[:200], y[:200])


# -- the backends: each a context that starts its cluster and yields (n_jobs, config) -----------
@contextlib.contextmanager
def loky_backend(workers: int):
    from joblib import parallel_config
    from joblib.externals.loky import get_reusable_executor

    try:
        yield workers, lambda: parallel_config(backend="loky")
    finally:
        get_reusable_executor().shutdown(wait=True)


@contextlib.contextmanager
def dask_backend(workers: int):
    from dask.distributed import Client, LocalCluster
    from joblib import parallel_config

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster):
        yield -1, lambda: parallel_config(backend="dask")


@contextlib.contextmanager
def gearnb_backend(workers: int):
    from joblib import parallel_config

    import gearnb

    with gearnb.local(workers=workers) as ex:
        yield -1, lambda: parallel_config(backend="gearnb", executor=ex)


STARTERS: dict[str, Callable[[int], Any]] = {"loky": loky_backend, "dask": dask_backend, "gearnb": gearnb_backend}


def title(name: str, workers: int) -> str:
    return {"loky": f"loky (n_jobs={workers})",
            "dask": f"dask LocalCluster ({workers} workers)",
            "gearnb": f"gearnb.local ({workers} workers)"}[name]


# -- the run ---------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu = tree_cpu()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, tree_cpu() - cpu, out


def run(args: argparse.Namespace) -> int:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    fits = args.grid ** 2 * args.cv
    versions = " ".join(f"{d} {metadata.version(d)}" for d in ("scikit-learn", "joblib", "dask", "distributed"))
    print(f"GridSearchCV: SVC on digits ({X.shape[0]} x {X.shape[1]}), {args.grid} x {args.grid} grid "
          f"(C 0.1..1000, gamma 1e-4..1), cv={args.cv}: {fits} fits + 1 refit; {args.workers} workers each; "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}; {versions}", flush=True)

    rows: dict[str, dict[str, Any]] = {name: {"runs": [], "cpu": []} for name in args.only}
    reference: tuple[str, Any] | None = None
    failures: list[str] = []
    peak_load = os.getloadavg()[0]

    def check(name: str, search: Any) -> None:
        nonlocal reference
        import numpy as np

        scores = search.cv_results_["mean_test_score"]
        if reference is None:
            reference = (name, search)
            return
        ref_name, ref = reference
        if search.best_params_ != ref.best_params_ or not np.array_equal(scores, ref.cv_results_["mean_test_score"]):
            failures.append(f"{name}: results differ from {ref_name}'s")

    with contextlib.ExitStack() as stack:
        configs: dict[str, tuple[int, Callable[[], Any]]] = {}
        for name in args.only:
            start = time.perf_counter()
            n_jobs, config = stack.enter_context(STARTERS[name](args.workers))
            rows[name]["setup"] = time.perf_counter() - start
            with config():
                rows[name]["first"] = timed(lambda: small_fit(n_jobs))[0]
            configs[name] = (n_jobs, config)
            print(f"  {name}: set-up {rows[name]['setup']:.2f} s, first small fit {rows[name]['first']:.2f} s",
                  flush=True)
        for round_ in range(args.repeat):
            order = args.only[round_ % len(args.only):] + args.only[:round_ % len(args.only)]
            for name in order:
                n_jobs, config = configs[name]
                with config():
                    seconds, cpu, search = timed(lambda: make_search(args.grid, args.cv, n_jobs).fit(X, y))
                rows[name]["runs"].append(seconds)
                rows[name]["cpu"].append(cpu)
                peak_load = max(peak_load, os.getloadavg()[0])
                check(name, search)
                print(f"  run {round_ + 1}: {name} {seconds:.2f} s (CPU {cpu:.1f} s)", flush=True)
    if args.sequential:
        seconds, cpu, search = timed(lambda: make_search(args.grid, args.cv, 1).fit(X, y))
        rows["sequential"] = {"runs": [seconds], "cpu": [cpu]}
        check("sequential", search)
        print(f"  sequential: {seconds:.2f} s", flush=True)

    loky_best = min(rows["loky"]["runs"]) if rows.get("loky", {}).get("runs") else None
    loky_median = statistics.median(rows["loky"]["runs"]) if loky_best else None
    table = [("backend", "set-up s", "first small fit s", "runs", "best s", "median s", "best / loky",
              "median / loky", "fits/s (best)", "CPU s (median)")]
    for name, row in rows.items():
        best, median = min(row["runs"]), statistics.median(row["runs"])
        table.append((
            "sequential (n_jobs=1, this process)" if name == "sequential" else title(name, args.workers),
            f"{row['setup']:.2f}" if "setup" in row else "-",
            f"{row['first']:.2f}" if "first" in row else "-",
            str(len(row["runs"])), f"{best:.2f}", f"{median:.2f}",
            f"{best / loky_best:.2f}x" if loky_best else "-",
            f"{median / loky_median:.2f}x" if loky_median else "-",
            f"{fits / best:.1f}", f"{statistics.median(row['cpu']):.1f}",
        ))
    print()
    print_table(table, right=tuple(range(1, 10)))
    assert reference is not None
    print(f"best params {reference[1].best_params_}, best score {reference[1].best_score_:.4f}; "
          f"highest load average seen: {peak_load:.1f}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if not failures:
        print("results: the same cv_results_ scores and best_params_ on every backend")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes per backend (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend (default 3)")
    parser.add_argument("--grid", type=int, default=5, help="grid size per parameter (default 5: 5 x 5)")
    parser.add_argument("--cv", type=int, default=5, help="folds (default 5)")
    parser.add_argument("--only", default=",".join(BACKENDS), help="backends, in order (default loky,dask,gearnb)")
    parser.add_argument("--no-sequential", dest="sequential", action="store_false",
                        help="leave out the n_jobs=1 row")
    parser.add_argument("--quick", action="store_true", help="3 x 3 grid, cv=3, one run, no sequential row")
    parser.add_argument("--deadline", type=float, default=1800, help="limit for the whole run, s (default 1800)")
    args = parser.parse_args(argv)
    if args.quick:
        args.grid, args.cv, args.repeat, args.sequential = 3, 3, 1, False
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    for name in args.only:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    if min(args.workers, args.repeat, args.grid, args.cv - 1) < 1 or not args.only:
        parser.error("--workers, --repeat and --grid must be at least 1, --cv at least 2, --only not empty")
    warnings.filterwarnings("ignore")  # dask: "Large object ... detected in task graph" and the like
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(args.deadline)))
    try:
        return run(args)
    except Deadline:
        print(f"\nbenchmark aborted: the whole run took longer than --deadline {args.deadline:g} s", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - reported, exit status 1
        logging.exception("benchmark failed")
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)


if __name__ == "__main__":
    sys.exit(main())
