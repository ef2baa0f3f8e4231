"""The "gearnb" joblib backend: joblib.Parallel and scikit-learn on real gearnb workers.

Against a real local cluster (gearnb.local: the bundled gearnb server and worker processes)
and against a real gearmand with ``gearnb worker --processes 2``; scikit-learn's results
compared with loky's and with a sequential run. Tasks that must overlap meet at files in a temporary directory (the workers run
on this machine), so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import cloudpickle
import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import gearnb
from peers import GearmandProcess, WorkerProcesses, wait_until

KEY = b"j" * 32
MEET_TIMEOUT = 60.0  # seconds a task waits for a file another party makes; then it fails
# Workers cannot import this test module: send its functions and classes by value, as
# cloudpickle does for everything defined in a notebook.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def local2():
    with gearnb.local(workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def gearmand_workers():
    """A real gearmand with ``gearnb worker --processes 2`` on it (holding the cluster key
    KEY): the remote case. Yields the WorkerProcesses (``.servers`` is gearmand's address)."""
    gearmand = GearmandProcess().start()
    try:
        with WorkerProcesses(gearmand.address, processes=2, key=KEY) as workers:
            yield workers
    finally:
        gearmand.stop()


@pytest.fixture(params=["gearnb.local", "gearmand"])
def cluster(request):
    """(executor, job server address): the local cluster (the gearnb server), then gearmand."""
    if request.param == "gearnb.local":
        ex = request.getfixturevalue("local2")
        yield ex, ex.servers[0]
    else:
        address = request.getfixturevalue("gearmand_workers").servers
        ex = gearnb.Executor(address, key=KEY)
        yield ex, address
        ex.shutdown(wait=True)


def small_digits():
    X, y = load_digits(return_X_y=True)
    return X[:500], y[:500]


# -- tasks (they run on the workers) ----------------------------------------------------------
def wait_for(path: str) -> None:
    deadline = time.monotonic() + MEET_TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {MEET_TIMEOUT:g} s")
        time.sleep(0.01)


def pid_when_two_met(directory: str) -> int:
    """Check in, then wait until tasks in two distinct processes have checked in."""
    # Tasks run in a task process of their worker: the worker is the parent.
    pathlib.Path(directory, str(os.getppid())).touch()
    deadline = time.monotonic() + MEET_TIMEOUT
    while len(os.listdir(directory)) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("no task ran in a second process")
        time.sleep(0.01)
    return os.getppid()


def busy_task(i, directory):
    """Marks that it ran, then keeps its worker busy: later batches stay queued meanwhile."""
    pathlib.Path(directory, str(i)).touch()
    time.sleep(0.5)
    return i


class MeetingClassifier(ClassifierMixin, BaseEstimator):
    """Predicts the most frequent class; ``fit`` first waits until fits met in two processes."""

    def __init__(self, directory: str = "", smoothing: float = 0.0) -> None:
        self.directory = directory
        self.smoothing = smoothing

    def fit(self, X, y):
        self.pid_ = pid_when_two_met(self.directory)
        self.classes_, counts = np.unique(y, return_counts=True)
        self.majority_ = self.classes_[np.argmax(counts)]
        return self

    def predict(self, X):
        return np.full(len(X), self.majority_)


def idle(server: str) -> bool:
    """No pyexec job running on the job server (gearmand counts cancelled jobs as queued until
    a worker dequeues them, so only running jobs are looked at)."""
    with gearnb.Admin(server) as admin:
        return all(s.running == 0 for s in admin.status() if s.function == "pyexec")


# -- registration -------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["gearnb", "joblib"])
def test_import_gearnb_registers_the_backend(first):
    """``import gearnb`` does not import joblib; the backend is there once joblib is."""
    script = textwrap.dedent(f"""
        import sys
        if {first!r} == "gearnb":
            import gearnb
            assert "joblib" not in sys.modules, "import gearnb imported joblib"
            import joblib
        else:
            import joblib
            import gearnb
        with joblib.parallel_config(backend="gearnb") as config:
            print(type(config["backend"]).__name__, joblib.__loader__ is joblib.__spec__.loader)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["GearnbBackend", "True"]


def test_after_import_hook_runs_after_the_module_and_never_breaks_it(tmp_path, monkeypatch, caplog):
    """The one-shot hook behind the registration, on modules made here: ``fn`` runs once the
    module's code has run; an ``fn`` that raises is logged and the import still succeeds."""
    from gearnb._after_import import call_after_import

    for name in ("gearnb_probe_a", "gearnb_probe_b"):
        (tmp_path / f"{name}.py").write_text("READY = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    call_after_import("gearnb_probe_a", lambda: seen.append(sys.modules["gearnb_probe_a"].READY))

    def broken():
        raise RuntimeError("registration failed")

    call_after_import("gearnb_probe_b", broken)
    try:
        import gearnb_probe_a  # noqa: F401
        import gearnb_probe_b
        assert seen == [True]
        assert gearnb_probe_b.READY and gearnb_probe_b.__loader__ is gearnb_probe_b.__spec__.loader
        assert "registration failed" in caplog.text
        call_after_import("gearnb_probe_a", lambda: seen.append("again"))  # imported already: at once
        assert seen == [True, "again"]
    finally:
        for name in ("gearnb_probe_a", "gearnb_probe_b"):
            sys.modules.pop(name, None)


# -- scikit-learn ---------------------------------------------------------------------------
def test_gridsearch_gives_loky_results(local2):
    X, y = small_digits()
    grid = {"C": [1.0, 10.0], "gamma": [1e-4, 1e-3, 1e-2]}
    with parallel_config(backend="gearnb", executor=local2):
        ours = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    loky = GridSearchCV(SVC(), grid, cv=3, n_jobs=2).fit(X, y)
    assert ours.best_params_ == loky.best_params_
    for column in ("mean_test_score", "std_test_score", "rank_test_score", "split0_test_score"):
        np.testing.assert_array_equal(ours.cv_results_[column], loky.cv_results_[column])
    assert list(ours.cv_results_["params"]) == list(loky.cv_results_["params"])
    assert np.array_equal(ours.predict(X), loky.predict(X))


def test_gridsearch_spreads_over_every_worker(local2, tmp_path):
    """Each fit waits until fits have started in two processes: with one worker at a time,
    it would time out. The pids are the cluster's workers, not this process."""
    X, y = small_digits()
    grid = {"smoothing": [0.0, 1.0, 2.0]}
    with parallel_config(backend="gearnb", executor=local2):
        search = GridSearchCV(MeetingClassifier(str(tmp_path)), grid, cv=2, refit=False).fit(X, y)
    assert len(search.cv_results_["mean_test_score"]) == 3
    pids = {int(p.name) for p in tmp_path.iterdir()}
    assert pids == set(local2.worker_pids()) and len(pids) == 2


# -- joblib.Parallel --------------------------------------------------------------------------
def test_n_jobs_is_the_worker_count(local2, tmp_path):
    with parallel_config(backend="gearnb", executor=local2):
        assert joblib.effective_n_jobs(-1) == 2
        assert joblib.effective_n_jobs(-2) == 1
        assert joblib.effective_n_jobs(5) == 5
        pids = Parallel(n_jobs=-1)(delayed(pid_when_two_met)(str(tmp_path)) for _ in range(6))
        assert set(pids) == set(local2.worker_pids())
        # n_jobs=-2 leaves one worker: joblib then runs the loop here, as with every backend
        assert Parallel(n_jobs=-2)(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3


def test_auto_batching_groups_fast_calls(local2):
    with parallel_config(backend="gearnb", executor=local2):
        parallel = Parallel(n_jobs=-1)
        out = parallel(delayed(abs)(-i) for i in range(3000))
    assert out == list(range(3000))
    assert parallel.n_dispatched_tasks == 3000
    assert parallel.n_dispatched_batches < 1000  # batches of more than one call


def test_error_cancels_the_queued_batches(cluster, tmp_path):
    """The first call raises: Parallel raises its exception (original type, remote traceback)
    and the other 39 batches, queued on the server, are cancelled there; at most the ones a
    worker had taken by then run."""
    def task(i, directory=str(tmp_path)):
        if i == 0:
            raise ValueError("boom in task 0")
        return busy_task(i, directory)

    executor, server_address = cluster
    with parallel_config(backend="gearnb", executor=executor):
        with pytest.raises(ValueError, match="boom in task 0") as caught:
            Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(delayed(task)(i) for i in range(40))
    assert "boom in task 0" in str(caught.value.__cause__)  # the remote traceback

    wait_until(lambda: idle(server_address), timeout=60)
    ran = len(list(tmp_path.iterdir()))
    assert 0 <= ran < 20, f"{ran} of 39 batches ran after the error"
    with parallel_config(backend="gearnb", executor=executor):  # the executor is still usable
        assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(10)) == list(range(10))


def test_ctrl_c_cancels_the_queued_batches(local2, tmp_path):
    """SIGINT while Parallel waits (a Jupyter interrupt): KeyboardInterrupt, and the batches
    queued on the server are cancelled; the cluster then serves the next call."""
    main = threading.get_ident()
    server = local2.servers[0]

    def all_submitted() -> bool:
        with gearnb.Admin(server) as admin:
            status = [s for s in admin.status() if s.function == "pyexec"]
        started = len(list(tmp_path.iterdir()))
        return sum(s.total for s in status) + started - sum(s.running for s in status) >= 40

    def interrupt_once_waiting():
        # Once every batch is on the server, Parallel is waiting for results: interrupt it there.
        wait_until(all_submitted, timeout=MEET_TIMEOUT)
        signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_waiting)
    interrupter.start()
    try:
        with parallel_config(backend="gearnb", executor=local2):
            with pytest.raises(KeyboardInterrupt):
                Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(
                    delayed(busy_task)(i, str(tmp_path)) for i in range(40))
    finally:
        interrupter.join(MEET_TIMEOUT)
    wait_until(lambda: idle(server), timeout=60)
    ran = len(list(tmp_path.iterdir()))
    assert ran < 20, f"{ran} of 40 batches ran after Ctrl-C"
    with parallel_config(backend="gearnb", executor=local2):
        assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_a_generator_dropped_early_cancels_the_rest(local2, tmp_path):
    with parallel_config(backend="gearnb", executor=local2):
        results = Parallel(n_jobs=2, batch_size=1, pre_dispatch="all", return_as="generator")(
            delayed(busy_task)(i, str(tmp_path)) for i in range(40))
        assert next(results) == 0
        with pytest.warns(UserWarning, match="cancelled"):  # joblib's own warning
            del results
    wait_until(lambda: idle(local2.servers[0]), timeout=60)
    ran = len(list(tmp_path.iterdir()))
    assert 1 <= ran < 20, f"{ran} of 40 batches ran after the generator was dropped"


def test_generator_yields_before_later_calls_finish(local2, tmp_path):
    go = str(tmp_path / "go")

    def task(i):
        if i:
            wait_for(go)
        return i

    with parallel_config(backend="gearnb", executor=local2):
        results = Parallel(n_jobs=2, batch_size=1, return_as="generator")(delayed(task)(i) for i in range(6))
        assert next(results) == 0  # the others are still waiting for "go"
        pathlib.Path(go).touch()
        assert list(results) == [1, 2, 3, 4, 5]


def test_generator_unordered_yields_in_completion_order(local2, tmp_path):
    go = str(tmp_path / "go")

    def task(i):
        if i == 0:
            wait_for(go)
        return i

    with parallel_config(backend="gearnb", executor=local2):
        results = Parallel(n_jobs=2, batch_size=1, return_as="generator_unordered")(
            delayed(task)(i) for i in range(2))
        assert next(results) == 1  # task 0 cannot finish before "go"
        pathlib.Path(go).touch()
        assert list(results) == [0]


def test_timeout_raises_and_cancels(local2, tmp_path):
    go = str(tmp_path / "go")
    try:
        with parallel_config(backend="gearnb", executor=local2):
            with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises with loky too
                Parallel(n_jobs=2, batch_size=1, timeout=0.5)(delayed(wait_for)(go) for _ in range(6))
    finally:
        pathlib.Path(go).touch()  # lets the two running tasks end
    with parallel_config(backend="gearnb", executor=local2):
        assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_an_argument_that_does_not_pickle_raises(local2):
    lock = threading.Lock()
    with parallel_config(backend="gearnb", executor=local2):
        with pytest.raises(TypeError, match="pickle"):
            Parallel(n_jobs=2)(delayed(id)(lock) for _ in range(4))


def test_worker_output_is_tagged_with_the_function(local2, capfd):
    def chatty(i):
        print(f"hello from {i}")
        return i

    with parallel_config(backend="gearnb", executor=local2):
        assert Parallel(n_jobs=2, batch_size=1)(delayed(chatty)(i) for i in range(3)) == [0, 1, 2]
    lines = capfd.readouterr().out.splitlines()
    for i in range(3):  # each line marked with the function that printed it
        assert any(f"hello from {i}" in line and "chatty" in line for line in lines), lines


# -- nesting --------------------------------------------------------------------------------
def nested_calls(i):
    """A task that runs a Parallel of its own, as an estimator with n_jobs does."""
    def where():
        return (os.getpid(), os.getppid()), threading.current_thread() is threading.main_thread()

    inner = Parallel(n_jobs=2)(delayed(where)() for _ in range(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with parallel_config(backend="gearnb"):
            explicit = Parallel(n_jobs=-1)(delayed(where)() for _ in range(2))
    return (os.getpid(), os.getppid()), inner, explicit, [str(w.message) for w in caught]


def test_nested_parallel_runs_on_threads_of_the_worker(local2):
    """Inside a task, a Parallel runs on threads of that worker (joblib's default for nested
    calls); an explicit backend="gearnb" there runs sequentially with a warning. No process
    is started: the cluster keeps its two workers and they have no children."""
    with parallel_config(backend="gearnb", executor=local2):
        out = Parallel(n_jobs=2, batch_size=1)(delayed(nested_calls)(i) for i in range(2))
    for (pid, worker), inner, explicit, messages in out:
        assert worker in local2.worker_pids()  # the task ran in that worker's task process
        assert inner == [((pid, worker), False)] * 4  # same process, not its main thread: a thread pool
        assert explicit == [((pid, worker), True)] * 2  # sequential, in the task itself
        assert any("runs sequentially" in m for m in messages)
    assert len(local2.worker_pids()) == 2
    for pid in local2.worker_pids():  # each worker has its one task process, and that has none
        [task] = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        assert subprocess.run(["pgrep", "-P", task], capture_output=True, text=True).stdout.split() == []


# -- remote: existing job servers, gearnb.connect() ---------------------------------------------
def test_gridsearch_through_gearmand_with_connect(gearmand_workers):
    """``gearnb.connect()`` to gearmand, then the older ``joblib.parallel_backend("gearnb")``
    with no executor: gearnb's default executor, n_jobs=-1 (the workers gearmand counts)."""
    X, y = small_digits()
    grid = {"C": [1.0, 10.0], "gamma": [1e-3, 1e-2]}
    gearnb.connect(gearmand_workers.servers, key=KEY)
    try:
        with joblib.parallel_backend("gearnb"):
            assert joblib.effective_n_jobs() == 2
            ours = GridSearchCV(SVC(), grid, cv=3).fit(X, y)
            pids = Parallel()(delayed(os.getppid)() for _ in range(4))  # the workers (task processes' parents)
    finally:
        gearnb.shutdown()
    here = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    assert ours.best_params_ == here.best_params_
    np.testing.assert_array_equal(ours.cv_results_["mean_test_score"], here.cv_results_["mean_test_score"])
    assert set(pids) <= set(gearmand_workers.child_pids())
