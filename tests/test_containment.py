"""A task that misbehaves fails that task - fast, once, clearly - and the cluster stays usable.

Real `gearnb worker` processes (each a worker and its task process) through the gearnb server
and gearmand; real crashes (os._exit, SIGSEGV, SIGKILL), real endless loops, a real fork.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import cloudpickle
import pytest

import gearnb
from gearnb.pyexec.control import control_functions
from peers import WorkerProcesses, wait_until

KEY = b"c" * 32
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def cluster(server_address):
    """Two `gearnb worker` processes and an executor, through each kind of job server."""
    with WorkerProcesses(server_address, processes=2, key=KEY) as workers:
        wait_until(lambda: len(_controls(server_address)) >= 2, timeout=30)
        ex = gearnb.Executor(server_address, key=KEY)
        yield ex, workers
        ex.shutdown(wait=False)


def _controls(address: str) -> list[str]:
    with gearnb.Admin(address) as admin:
        return control_functions(admin)


def _crash(how: str):
    """A task that dies (the way ``how`` says) on item 3 and notes each attempt in ``tmp``."""
    def task(i, tmp):
        import ctypes
        import os
        import pathlib
        import signal
        import sys

        if i != 3:
            return i * 10
        pathlib.Path(tmp, f"attempt-{os.getpid()}").touch()
        if how == "exit":
            os._exit(1)
        if how == "segfault":
            ctypes.string_at(0)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "sys.exit":
            sys.exit(3)
        return i
    return task


@pytest.mark.parametrize("how, expected", [
    ("exit", "exited with 1"),
    ("segfault", "was killed by SIGSEGV"),
    ("sigkill", "was killed by SIGKILL (out of memory?"),
])
def test_a_task_that_kills_its_process_fails_once_with_what_happened(cluster, tmp_path, how, expected):
    ex, workers = cluster
    guards = workers.child_pids()
    started = time.monotonic()
    with pytest.raises(gearnb.WorkerDied) as info:
        ex.gmap(_crash(how), range(8), [str(tmp_path)] * 8, chunksize=4)
    took = time.monotonic() - started
    message = str(info.value)
    assert expected in message and "tried 3 times, each in a fresh process" in message, message
    assert "item #3" in "".join(getattr(info.value, "__notes__", [])), info.value.__notes__
    attempts = sorted(p.name for p in tmp_path.iterdir())
    assert len(attempts) == 3 and len(set(attempts)) == 3, attempts  # three fresh processes, then no more
    assert took < 60, took
    time.sleep(1.0)
    assert len(list(tmp_path.iterdir())) == 3  # nothing keeps running it in the background
    assert workers.child_pids() == guards  # the worker processes never died: only task processes
    assert ex.gmap(abs, range(-8, 0)) == list(range(8, 0, -1))  # the cluster is usable at once


def test_sys_exit_in_a_task_is_an_ordinary_error(cluster, tmp_path):
    ex, workers = cluster
    with pytest.raises(SystemExit) as info:
        ex.gmap(_crash("sys.exit"), range(8), [str(tmp_path)] * 8, chunksize=2)
    assert info.value.code == 3
    assert len(list(tmp_path.iterdir())) == 1  # one attempt: nothing died, nothing retried
    assert ex.submit(sys.exit, 4).exception(30).code == 4
    assert ex.gmap(abs, [-1, -2]) == [1, 2]


def spin(i):
    while True:
        pass


def _task_cpu_seconds(workers: WorkerProcesses) -> float:
    """CPU seconds (user + system) used so far by the workers' task processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for guard in workers.child_pids():
        for task in os.popen(f"pgrep -P {guard}").read().split():
            try:
                with open(f"/proc/{task}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
            except FileNotFoundError:
                pass
    return total


def test_a_map_that_times_out_stops_its_running_tasks(cluster):
    ex, workers = cluster
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            ex.gmap(spin, range(4), timeout=3, chunksize=1)
        assert time.monotonic() - started < 15
    started = time.monotonic()
    assert ex.gmap(abs, range(-20, 0), chunksize=1) == list(range(20, 0, -1))
    assert time.monotonic() - started < 10  # both workers are free again: nobody spins
    before = _task_cpu_seconds(workers)
    time.sleep(2.0)
    used = _task_cpu_seconds(workers) - before
    assert used < 0.2, f"task processes used {used:.2f} s of CPU in 2 s: something still spins"


def test_cancel_force_stops_a_running_task(cluster, server_address):
    ex, _ = cluster
    future = ex.submit(spin, 0)

    def running() -> int:
        with gearnb.Admin(server_address) as admin:
            return sum(s.running for s in admin.status() if s.function == "pyexec")

    wait_until(lambda: running() == 1, timeout=10)
    assert not future.cancel()  # the concurrent.futures contract: a running future is not cancelled
    assert future.cancel(force=True) and future.cancelled()
    wait_until(lambda: running() == 0, timeout=10)  # stopped where it ran
    assert [f.result(30) for f in [ex.submit(abs, -i) for i in range(4)]] == [0, 1, 2, 3]


def _map_in_a_forked_child(x: int) -> list[int]:
    return gearnb.map(lambda v: v * 10, [x, x + 1])


_made_before_fork: list = []  # an executor the parent made, which forked children inherit


def _submit_with_an_inherited_executor() -> str:
    try:
        _made_before_fork[0].submit(abs, -1).result(10)
    except RuntimeError as exc:
        return str(exc)
    return "it ran"


def test_a_forked_child_gets_an_executor_of_its_own(gearnb_address):
    with WorkerProcesses(gearnb_address, processes=2, key=KEY):
        gearnb.connect(gearnb_address, key=KEY)
        try:
            assert gearnb.map(abs, [-1, -2]) == [1, 2]  # the parent's I/O thread runs
            with multiprocessing.get_context("fork").Pool(2) as pool:
                result = pool.map_async(_map_in_a_forked_child, [1, 2, 3], chunksize=1)
                assert result.get(60) == [[10, 20], [20, 30], [30, 40]]
            _made_before_fork[:] = [gearnb.default_executor()]
            with multiprocessing.get_context("fork").Pool(1) as pool:
                answer = pool.apply_async(_submit_with_an_inherited_executor).get(30)
            assert "made in another process" in answer  # a clear error, not a hang
        finally:
            gearnb.shutdown()


def test_a_worker_stopped_by_sigterm_ends_its_task_process(gearnb_address):
    with WorkerProcesses(gearnb_address, processes=1, key=KEY) as workers:
        wait_until(lambda: workers.child_pids(), timeout=10)
        [guard] = workers.child_pids()
        tasks = wait_until(lambda: os.popen(f"pgrep -P {guard}").read().split(), timeout=10)
        workers.stop()
        for pid in map(int, tasks):
            wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
                       open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z", timeout=10)


def test_killing_a_worker_leaves_no_task_process_behind(gearnb_address):
    with WorkerProcesses(gearnb_address, processes=1, key=KEY) as workers:
        [guard] = wait_until(lambda: workers.child_pids(), timeout=10)
        [task] = map(int, wait_until(lambda: os.popen(f"pgrep -P {guard}").read().split(), timeout=10))
        os.kill(guard, signal.SIGKILL)  # as the OOM killer might
        wait_until(lambda: not os.path.exists(f"/proc/{task}"), timeout=10)


def test_jupyter_interrupt_stops_the_map_and_leaves_the_cluster_usable(kernel):
    """Kernel > Interrupt, as the UI does it: jupyter_client signals the kernel's whole
    process group. The local cluster runs in sessions of its own, so only the kernel gets it."""
    started = kernel.run("""
        import os, time, gearnb
        print(gearnb.map(abs, [-1, -2]))            # the embedded default: a local cluster
        ex = gearnb.default_executor()
        print(ex.servers[0], ex.cluster.server.pid, *ex.worker_pids())
    """)
    lines = kernel.text(started).split("\n")
    assert lines[0] == "[1, 2]"
    address, *pids = lines[1].split()
    cell = kernel.start("gearnb.map(time.sleep, [0.5] * 200, chunksize=1)")

    def pyexec(what: str) -> int:
        with gearnb.Admin(address) as admin:
            return sum(getattr(s, what) for s in admin.status() if s.function == "pyexec")

    wait_until(lambda: pyexec("running") > 0, timeout=30)
    kernel.km.interrupt_kernel()
    messages = kernel.finish(cell, timeout=30)
    errors = [m["content"]["ename"] for m in messages if m["msg_type"] == "error"]
    assert errors == ["KeyboardInterrupt"], errors
    after = kernel.run("""
        started = time.monotonic()
        print(gearnb.map(abs, [-1, -2, -3, -4]), round(time.monotonic() - started, 3))
        print(ex.cluster.server.pid, *ex.worker_pids())
    """)
    line1, line2 = kernel.text(after).strip().split("\n")
    assert line1.startswith("[1, 2, 3, 4]") and float(line1.split()[-1]) < 5, line1
    assert line2.split() == pids  # nothing was killed by the interrupt: same server, same workers
    wait_until(lambda: pyexec("total") == 0, timeout=10)  # nothing of the first map queued or running
