"""map / submit / Executor through the gearnb server and gearmand, with real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest

import gearnb
from peers import WorkerProcesses, wait_until

KEY = b"t" * 32
# Workers cannot import this test module: send its classes by value, as cloudpickle does
# for everything defined in a notebook's __main__.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def executor(server_address):
    with WorkerProcesses(server_address, processes=2, key=KEY, imports=("gearnb.demo",)):
        ex = gearnb.Executor(server_address, key=KEY)
        yield ex
        ex.shutdown(wait=False)


class Point:  # a class defined in the test module: travels by value with cloudpickle
    def __init__(self, x):
        self.x = x

    def norm(self):
        return abs(self.x)


def test_map_lambdas_closures_classes(executor):
    offset = 10
    assert executor.gmap(lambda x: x + offset, range(20), chunksize=1) == list(range(10, 30))
    assert executor.gmap(lambda p: p.norm(), [Point(-3), Point(4)]) == [3, 4]
    assert executor.gmap(lambda x, y: x * y, [1, 2, 3], [4, 5, 6]) == [4, 10, 18]
    assert executor.gmap(str.upper, ["a", "b"]) == ["A", "B"]
    assert list(executor.map(pow, [2, 3], [3, 2])) == [8, 9]  # the concurrent.futures contract
    assert sorted(executor.imap_unordered(abs, range(-50, 0))) == list(range(1, 51))
    assert executor.gmap(lambda x: (x, [x]), [1]) == [(1, [1])]  # tuples come back as tuples


def test_chunksize_auto_large(executor):
    out = executor.gmap(lambda x: 2 * x, range(100_000), chunksize="auto")
    assert out == [2 * x for x in range(100_000)]


def test_imap_is_lazy_and_bounded(executor):
    consumed = []

    def source():
        for i in range(10_000):
            consumed.append(i)
            yield i

    it = executor.imap(lambda x: x, source(), window=8)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(consumed) <= 5 + 8 + 1
    it.close()


def test_remote_exception_reraises_with_remote_traceback(executor):
    def explode(x):
        raise ZeroDivisionError(f"item {x}")

    with pytest.raises(ZeroDivisionError, match="item 3") as info:
        executor.submit(explode, 3).result(30)
    assert isinstance(info.value.__cause__, gearnb.pyexec.RemoteTraceback)
    assert "in explode" in info.value.__cause__.tb
    with pytest.raises(ZeroDivisionError):
        executor.gmap(lambda x: 1 // x, [1, 0, 2])


def test_print_comes_back_marked(executor, capsys):
    def chatty(x):
        print("working on", x)
        print("a warning", file=sys.stderr)
        return x

    assert executor.submit(chatty, 7).result(30) == 7
    assert executor.gmap(chatty, [1, 2], chunksize=1) == [1, 2]
    # Output arrives on the I/O thread, possibly just after the result: wait for all of it
    # rather than for a guessed time (a fixed sleep assumed how fast that thread runs).
    expected_out = ["[chatty] working on 7", "[chatty #0] working on 1", "[chatty #1] working on 2"]
    expected_err = ["[chatty] a warning"]
    out, err = "", ""

    def everything_printed() -> bool:
        nonlocal out, err
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
        return all(line in out for line in expected_out) and all(line in err for line in expected_err)

    try:
        wait_until(everything_printed, timeout=10)
    except AssertionError:
        pass  # the asserts below say what is missing
    for line in expected_out:
        assert line in out, out
    for line in expected_err:
        assert line in err, err


def test_report_sends_status(executor):
    seen = []

    class Recorder:
        def submitted(self, n):
            pass

        def finished(self, n, failed, task=None):
            pass

        def status(self, task, n, d):
            seen.append((n, d))

        def close(self):
            pass

    def steps(x):
        for i in range(3):
            gearnb.report(i + 1, 3)
        return x

    executor.gmap(steps, [1], progress=Recorder())
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_retries(executor, tmp_path):
    def flaky(path):
        import pathlib

        p = pathlib.Path(path)
        count = int(p.read_text()) if p.exists() else 0
        p.write_text(str(count + 1))
        if count < 2:
            raise RuntimeError(f"attempt {count}")
        return count

    assert executor.submit(flaky, str(tmp_path / "a"), retries=3).result(30) == 2
    with pytest.raises(RuntimeError, match="attempt 1"):
        executor.submit(flaky, str(tmp_path / "b"), retries=1).result(30)
    paths = [str(tmp_path / f"m{i}") for i in range(5)]
    assert executor.gmap(flaky, paths, retries=2, chunksize=2) == [2] * 5


def test_futures_await_as_completed_wait(executor):
    futures = [executor.submit(pow, 2, i) for i in range(10)]
    assert sorted(f.result(30) for f in gearnb.as_completed(futures, timeout=30)) == [2 ** i for i in range(10)]
    done, not_done = gearnb.wait(futures, timeout=30)
    assert len(done) == 10 and not not_done

    async def main():
        return await executor.submit(pow, 3, 3)

    assert asyncio.run(main()) == 27


def test_blocking_map_inside_running_loop(executor):
    async def cell():  # a Jupyter cell: the kernel's loop is running on this thread
        return executor.gmap(abs, [-1, -2])

    assert asyncio.run(cell()) == [1, 2]


def test_cancel_drops_a_queued_job(executor, server_address, tmp_path):
    marker = tmp_path / "ran"
    blockers = [executor.submit(time.sleep, 1.5) for _ in range(2)]  # both workers busy
    wait_until(lambda: all(f.handle for f in blockers))

    def running() -> int:
        with gearnb.Admin(server_address) as admin:
            return sum(s.running for s in admin.status() if s.function == "pyexec")

    wait_until(lambda: running() == 2)  # both taken by a worker, not merely queued
    queued = executor.submit(marker.write_text, "x")
    assert queued.cancel()
    assert queued.cancelled()
    for f in blockers:
        f.result(30)
    time.sleep(0.5)
    assert not marker.exists()
    assert not blockers[0].cancel()  # finished: cannot cancel


def test_cancel_of_a_running_call_returns_false_and_the_result_still_comes(executor, server_address):
    future = executor.submit(time.sleep, 1.0)

    def running() -> int:
        with gearnb.Admin(server_address) as admin:
            return sum(s.running for s in admin.status() if s.function == "pyexec")

    wait_until(lambda: running() == 1)
    assert not future.cancel()  # concurrent.futures: a running future cannot be cancelled
    assert future.result(30) is None and not future.cancelled()


def test_an_argument_that_does_not_pickle_raises_at_submit(executor):
    with pytest.raises(TypeError):
        executor.submit(len, threading.Lock())
    started = time.monotonic()
    executor.shutdown(wait=True)  # no future of it is left pending
    assert time.monotonic() - started < 10


def test_call_a_plain_gearman_function(executor):
    assert executor.call("addition", [2, 3]) == 5
    assert executor.call("division", [9, 3]) == 3.0


def test_numpy_round_trip(executor):
    array = np.random.default_rng(1).random(1_000_000)  # 8 MB
    out = executor.submit(lambda a: a * 2, array).result(60)
    assert np.array_equal(out, array * 2)


def test_ctrl_c_cancels_queued_jobs(executor, server_address):
    main = threading.get_ident()
    timer = threading.Timer(1.0, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        executor.gmap(time.sleep, [0.3] * 200, chunksize=1)
    assert time.monotonic() - started < 20

    def queued() -> int:
        with gearnb.Admin(server_address) as admin:
            return sum(s.total for s in admin.status() if s.function == "pyexec")

    # gearmand keeps cancelled jobs in its count until a worker dequeues them; ours drops them.
    wait_until(lambda: queued() == 0, timeout=20)
    assert executor.gmap(abs, [-1, -2, -3]) == [1, 2, 3]  # still usable


def test_maxqueue_backpressure_loses_nothing(executor, server_address):
    """A full queue (maxqueue) answers QUEUE_ERROR: the map waits and resubmits."""
    with gearnb.Admin(server_address) as admin:
        admin.maxqueue("pyexec", 4)
    try:
        refused = []

        class Counter:
            def submitted(self, n):
                pass

            def finished(self, n, failed, task=None):
                pass

            def status(self, *a):
                pass

            def close(self):
                pass

        out = executor.gmap(lambda x: x * 3, range(300), chunksize=1, progress=Counter())
        assert out == [x * 3 for x in range(300)]
        with pytest.raises(gearnb.ServerError, match="QUEUE_ERROR"):
            # Plain Gearman submits past the limit are refused with the server's error.
            client = gearnb.Client(server_address)
            try:
                for i in range(10):
                    client.do_background("nobody-serves-this", str(i))
                    with gearnb.Admin(server_address) as admin:
                        admin.maxqueue("nobody-serves-this", 2)
            finally:
                client.close()
        del refused
    finally:
        with gearnb.Admin(server_address) as admin:
            admin.maxqueue("pyexec", 0)
