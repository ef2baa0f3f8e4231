"""Nested maps: ``gearnb.map`` / ``submit`` inside a task use the cluster running the task (its
job server and key), start no cluster of their own, and never deadlock it: when every worker
runs a task that waits for its own sub-tasks, the waiting tasks take their queued sub-tasks
back from the job server and run them themselves. Real worker processes behind the gearnb
server and gearmand; processes counted in /proc before and after."""

from __future__ import annotations

import os

import pytest

import gearnb
from peers import WorkerProcesses, descendants

KEY = b"n" * 32


def square(y):
    print("square of", y)
    return y * y, os.getpid()


def outer(x):
    """A task that maps over the cluster running it, and submits to it."""
    got = gearnb.map(square, range(x, x + 6), chunksize=1, progress=False)
    extra = gearnb.submit(square, x + 100).result(timeout=60)
    return ([v for v, _ in got] + [extra[0]], sorted({p for _, p in got} | {extra[1]}), os.getpid(),
            gearnb.default_executor().servers)


def check(results, task_pids, servers):
    for x, (values, inner_pids, outer_pid, used) in zip([0, 10], results):
        assert values == [y * y for y in range(x, x + 6)] + [(x + 100) ** 2]
        assert outer_pid in task_pids and set(inner_pids) <= task_pids, (inner_pids, task_pids)
        assert used == servers  # the cluster that ran the task, not a new local one


def test_nested_maps_use_the_local_cluster_and_never_deadlock_it(capsys):
    with gearnb.local(workers=2) as ex:
        assert ex.gmap(abs, range(-4, 0), chunksize=1) == [4, 3, 2, 1]  # task processes up

        def cluster_processes() -> set[int]:
            # This cluster's processes only: the test process may still have others below it
            # (a default executor's cluster another test module started, one shutting down).
            roots = [ex.cluster.server.pid, *ex.worker_pids()]
            return {*roots, *(p for root in roots for p in descendants(root))}

        before = cluster_processes()
        task_pids = {p for w in ex.worker_pids() for p in descendants(w)}
        assert len(before) == 1 + 2 + 2 and len(task_pids) == 2  # server, workers, task processes
        # Two outer tasks on two workers: both wait for sub-tasks no free worker can take, so
        # they run them themselves (without that, this map would never end).
        results = ex.gmap(outer, [0, 10], chunksize=1, timeout=120)
        check(results, task_pids, ex.servers)
        after = cluster_processes()
        assert after == before, (sorted(before), sorted(after))  # no cluster started inside a task
    # Sub-tasks' output comes back inside the outer item's, tagged with both items, whether a
    # worker ran them or the waiting task itself.
    lines = sorted(capsys.readouterr().out.splitlines())
    expected = sorted([f"[outer #{i}] [square #{j}] square of {x + j}" for i, x in enumerate([0, 10]) for j in range(6)]
                      + [f"[outer #{i}] [square] square of {x + 100}" for i, x in enumerate([0, 10])])
    assert lines == expected, lines


@pytest.mark.parametrize("processes", [1, 3])
def test_nested_maps_through_a_job_server(server_address, processes):
    """Through the gearnb server and gearmand, with fewer workers than outer tasks and more."""
    with WorkerProcesses(server_address, processes=processes, key=KEY) as workers:
        ex = gearnb.Executor(server_address, key=KEY)
        try:
            assert ex.gmap(abs, range(-6, 0), chunksize=1) == [6, 5, 4, 3, 2, 1]
            before = descendants(workers.proc.pid)
            task_pids = {p for w in workers.child_pids() for p in descendants(w)}
            assert len(task_pids) == processes
            results = ex.gmap(outer, [0, 10], chunksize=1, timeout=120)
            check(results, task_pids, ex.servers)
            if processes > 2:  # a worker was free: some sub-tasks ran on other task processes
                assert any(set(pids) - {outer_pid} for _, pids, outer_pid, _ in results), results
            assert descendants(workers.proc.pid) == before
        finally:
            ex.shutdown(wait=False)
