"""The examples/ scripts, run as real processes against the gearnb server and a real gearmand.

Each test starts an example worker and its client with ``python examples/X.py`` and checks
what they print and how they exit. Sleeps and ticks are shortened through the scripts' own
options so the whole file stays quick.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peers import GearmandProcess, gearnb_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.timeout(60)

# How long one example process may take before the test fails (they normally take ~1 s).
PROCESS_TIMEOUT = 30


def _child_setup() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler; restore it so Ctrl-C tests hold.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def example():
    """``example("worker.py", *args, stdin=None)`` starts an example; leftovers are killed."""
    procs: list[subprocess.Popen[str]] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("GEARMAN_SERVERS", None)

    def start(script: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=_child_setup)
        proc.script = script  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[str], returncode: int = 0, stdin: str | None = None) -> list[str]:
    """Wait for an example; check its exit status and that it raised nothing; its stdout lines."""
    out, err = proc.communicate(stdin, timeout=PROCESS_TIMEOUT)
    script = proc.script  # type: ignore[attr-defined]
    assert proc.returncode == returncode, f"{script} exited {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err, f"{script}:\n{err}"
    return out.splitlines()


@pytest.fixture(params=["gearnb", "gearmand"])
def two_servers(request):
    """Two job servers of the same kind, for the examples that use two."""
    if request.param == "gearnb":
        with gearnb_server() as a, gearnb_server() as b:
            yield [a.address, b.address]
    else:
        daemons = [GearmandProcess().start(), GearmandProcess().start()]
        try:
            yield [d.address for d in daemons]
        finally:
            for d in daemons:
                d.stop()


def test_calculus(server_address, example):
    """One worker process per pair of operations; Ctrl-C stops one, SIGTERM the other."""
    adders = example("calculus_worker.py", "--servers", server_address,
                     "--function", "addition", "--function", "subtraction")
    multipliers = example("calculus_worker.py", "--servers", server_address,
                          "--function", "multiplication", "--function", "division")
    client = example("calculus_client.py", "--servers", server_address, "--timeout", "20",
                     "2+3", "8*7", "9/3", "7-10", "1/0", "1.5 * 4")
    out = finish(client, returncode=1)  # 1/0 failed
    assert out[0] == "[client] The following operations were found: ['2+3', '8*7', '9/3', '7-10', '1/0', '1.5*4']"
    assert "[client] Sending values: [9, 3], to the 'division' worker" in out
    assert "[client] addition result is: 5" in out
    raised = "[client] 1/0 raised: ZeroDivisionError: division by zero"
    assert out.index(raised) < out.index("[client] 1/0: calculation failed")  # on_exception, then on_fail
    assert out[out.index("[client] results:"):] == [
        "[client] results:", "  2+3 = 5", "  8*7 = 56", "  9/3 = 3.0", "  7-10 = -3", "  1/0 = failed", "  1.5*4 = 6.0",
    ]

    adders.send_signal(signal.SIGINT)
    multipliers.send_signal(signal.SIGTERM)
    out = finish(adders)
    assert out[0] == "[worker] serving addition, subtraction on " + server_address
    assert sorted(out[1:-1]) == [
        "[addition_worker] Calculating [2, 3]...", "[subtraction_worker] Calculating [7, 10]..."]
    assert out[-1] == "[worker] stopped after 2 jobs"
    out = finish(multipliers)
    assert sorted(out[1:-1]) == [
        "[division_worker] Calculating [1, 0]...", "[division_worker] Calculating [9, 3]...",
        "[multiplication_worker] Calculating [1.5, 4]...", "[multiplication_worker] Calculating [8, 7]...",
    ]
    assert out[-1] == "[worker] stopped after 4 jobs"


def test_calculus_from_stdin(gearnb_address, example):
    """With no arguments the client reads a line, as gearman-ruby's did; one worker does all four."""
    worker = example("calculus_worker.py", "--servers", gearnb_address, "--max-jobs", "2")
    client = example("calculus_client.py", "--servers", gearnb_address, stdin=True)
    out = finish(client, stdin="what is 4*5 and 10-4?\n")
    assert out[-3:] == ["[client] results:", "  4*5 = 20", "  10-4 = 6"]
    assert finish(worker)[-1] == "[worker] stopped after 2 jobs"


def test_sleep_on_two_servers(two_servers, example):
    servers = ",".join(two_servers)
    worker = example("worker.py", "--servers", servers, "--tick", "0.1", "--max-jobs", "2")
    client = example("client.py", "--servers", servers, "--seconds", "0.3", "--timeout", "20")
    out = finish(client)
    queued = sorted(line for line in out if " queued on " in line)
    assert [line.split(" as ")[0] for line in queued] == [
        f"TASK 1: queued on {two_servers[0]}", f"TASK 2: queued on {two_servers[1]}"]  # one task on each
    for n in (1, 2):
        assert [line for line in out if line.startswith(f"TASK {n}: ") and " queued on " not in line] == [
            f"TASK {n}: 1/3", f"TASK {n}: 2/3", f"TASK {n}: 3/3", f"TASK {n}: slept 0.3 s"]
    out = finish(worker)
    assert out[0] == f"[worker] serving 'sleep' on {servers}"
    assert sum(line.endswith(": 3/3") for line in out) == 2
    assert out[-1] == "[worker] stopped after 2 jobs"


def test_background(server_address, example):
    client = example("client_background.py", "--servers", server_address, "--seconds", "0.5", "--poll", "0.05",
                     "--timeout", "20")
    # No worker yet: the job waits in the queue. (The client prints nothing more until the
    # worker starts, so no output is left in the pipe's buffer when communicate() takes over.)
    assert client.stdout.readline().startswith("[client] background job queued: H:")
    assert client.stdout.readline() == "[client] Status: queued, waiting for a worker\n"
    worker = example("worker.py", "--servers", server_address, "--tick", "0.1", "--max-jobs", "1")
    out = finish(client)
    assert out[-1] == "[client] the server no longer knows the job: it has finished"
    running = out[:-1]
    assert running and all(line.startswith("[client] Status: running") for line in running), out
    assert all(line in [f"[client] Status: running, {i}/5" for i in range(1, 6)] or line.endswith("yet")
               for line in running), out
    out = finish(worker)
    assert out[1:] == [out[1].rsplit(":", 1)[0] + f": {i}/5" for i in range(1, 6)] + ["[worker] stopped after 1 jobs"]


def test_data(server_address, example):
    worker = example("worker_data.py", "--servers", server_address, "--delay", "0.02", "--max-jobs", "1")
    client = example("client_data.py", "--servers", server_address, "--chunks", "5", "--timeout", "20")
    assert finish(client) == [f"[client] data: CHUNK {i}" for i in range(5)] + [
        "[client] complete: EOD", "[client] 5 chunks, 35 bytes"]
    assert finish(worker)[-1] == "[worker] stopped after 1 jobs"


def test_exception(server_address, example):
    worker = example("worker_exception.py", "--servers", server_address, "--max-jobs", "7")
    client = example("client_exception.py", "--servers", server_address, "--retries", "2", "--timeout", "20")
    out = finish(client)
    attempt = ["[exception] WARNING: about to raise for 'void'",
               "[exception] EXCEPTION: RuntimeError: Exception in worker (args: 'void')"]
    assert [line for line in out if line.startswith("[exception]")] == [
        *attempt, "[exception] PRE-RETRY HOOK: retry no. 1",
        *attempt, "[exception] PRE-RETRY HOOK: retry no. 2",
        *attempt, "[exception] TASK FAILED, GIVING UP after 2 retries"]
    assert [line for line in out if line.startswith("[fail]")] == [
        "[fail] PRE-RETRY HOOK: retry no. 1", "[fail] PRE-RETRY HOOK: retry no. 2",
        "[fail] TASK FAILED, GIVING UP after 2 retries"]
    assert out[-1] == "[do] raised JobException: RuntimeError: Exception in worker (args: 'do')"
    assert finish(worker)[-1] == "[worker] stopped after 7 jobs"


def test_prefix(server_address, example):
    """Two deployments share the server; each client reaches only its own prefix's worker."""
    workers = {prefix: example("worker_prefix.py", "--servers", server_address, "--prefix", prefix,
                               "--tick", "0.1", "--max-jobs", "1")
               for prefix in ("alpha", "beta")}
    clients = {prefix: example("client_prefix.py", "--servers", server_address, "--prefix", prefix,
                               "--seconds", "0.2", "--timeout", "20")
               for prefix in ("alpha", "beta")}
    for prefix, client in clients.items():
        name = repr(f"{prefix}\tsleep")
        assert finish(client) == [
            f"[client] calling {name}", f"[client] {name}: 1/2", f"[client] {name}: 2/2",
            f"[client] {name} slept 0.2 s (worker prefix {prefix!r})"]
    for prefix, worker in workers.items():
        assert finish(worker) == [f"[worker] serving {repr(prefix + chr(9) + 'sleep')} on {server_address}",
                                  "[worker] stopped after 1 jobs"]
