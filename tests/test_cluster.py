"""The local cluster and the launchers: real processes, killed for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import gearnb
from peers import WorkerProcesses, gearnb_server, wait_until, wait_workers


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): look at its state
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_worker_killed_mid_map_nothing_lost(tmp_path):
    with gearnb.local(workers=2) as ex:
        pids = ex.worker_pids()
        assert len(pids) == 2 and ex.servers[0].startswith("127.0.0.1:")

        def slow(i, d=str(tmp_path)):
            import os
            import pathlib
            import time

            # Tasks run in a task process of their worker: name the worker, its parent.
            pathlib.Path(d, f"{i}-{os.getppid()}").touch()
            time.sleep(0.1)
            return i

        result: list = []
        thread = threading.Thread(target=lambda: result.extend(ex.gmap(slow, range(40), chunksize=1)))
        thread.start()
        victim = pids[0]
        wait_until(lambda: any(p.name.endswith(f"-{victim}") for p in tmp_path.iterdir()), timeout=30)
        os.kill(victim, signal.SIGKILL)
        thread.join(120)
        assert result == list(range(40))  # every result, once, in order
        runs = [p.name.split("-")[0] for p in tmp_path.iterdir()]
        assert set(runs) == {str(i) for i in range(40)}
        wait_until(lambda: len(ex.worker_pids()) == 2 and victim not in ex.worker_pids(), timeout=30)
        assert ex.cluster.restarts >= 1
        assert ex.gmap(abs, [-5]) == [5]


def test_no_orphans_when_the_python_process_is_killed():
    """As after a kernel restart: the process that started the cluster dies with SIGKILL."""
    script = textwrap.dedent("""
        import sys, time, gearnb
        ex = gearnb.local(workers=2)
        print(ex.cluster.server.pid, *ex.worker_pids(), flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    pids = [int(p) for p in line.split()]
    assert len(pids) == 3 and all(alive(p) for p in pids)
    proc.kill()
    proc.wait()
    wait_until(lambda: not any(alive(p) for p in pids), timeout=20)


def test_embedded_default_needs_no_setup():
    script = textwrap.dedent("""
        import gearnb
        print(gearnb.map(lambda x: x * x, range(6)))
        print(gearnb.submit(pow, 2, 8).result())
        print(gearnb.call("nonexistent-function-should-not-be-called") if False else "ok")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("GEARMAN_SERVERS", "GEARNB_KEY")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["[0, 1, 4, 9, 16, 25]", "256", "ok"]


def test_connect_uses_existing_servers():
    key = b"c" * 32
    with gearnb_server() as server, WorkerProcesses(server.address, processes=1, key=key):
        ex = gearnb.connect(server.address, key=key)
        try:
            assert gearnb.map(lambda x: -x, [1, 2]) == [-1, -2]
            assert gearnb.default_executor() is ex
        finally:
            gearnb.shutdown()


def test_gearnb_worker_restarts_dead_children_and_stops_on_sigterm():
    with gearnb_server() as server:
        workers = WorkerProcesses(server.address, processes=2, key=b"r" * 32).start()
        try:
            children = workers.child_pids()
            assert len(children) == 2
            os.kill(children[0], signal.SIGKILL)
            wait_until(lambda: len(workers.child_pids()) == 2 and children[0] not in workers.child_pids(), 30)
            wait_workers(server.address, "pyexec", 2, timeout=30)
            remaining = workers.child_pids()
        finally:
            workers.stop()
        assert workers.proc.returncode == 0
        wait_until(lambda: not any(alive(p) for p in remaining), timeout=20)


def test_gearnb_local_command(tmp_path):
    key_file = tmp_path / "cluster.key"
    proc = subprocess.Popen([sys.executable, "-m", "gearnb", "local", "--workers", "1", "--key-file", str(key_file)],
                            stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        match = re.search(r"job server (127\.0\.0\.1:\d+)", first)
        assert match, first
        assert "gearnb.connect" in proc.stdout.readline() + proc.stdout.readline()
        ex = gearnb.Executor(match.group(1), key_file=str(key_file))
        assert ex.gmap(lambda x: x + 1, [1, 2]) == [2, 3]
        ex.shutdown()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_worker_without_key_explains():
    out = subprocess.run([sys.executable, "-m", "gearnb", "worker", "--servers", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k not in ("GEARNB_KEY", "GEARNB_KEY_FILE")})
    assert out.returncode != 0
    assert "GEARNB_KEY" in out.stderr


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "gearnb", "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"gearnb {gearnb.__version__}"
