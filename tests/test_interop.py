"""libgearman's ``gearman`` command-line tool talking to gearnb, through gearmand and the gearnb server.

``gearman`` (Debian gearman-tools, libgearman 1.1.20) as a client calls gearnb Worker functions,
and ``gearman -w`` as a worker serves a gearnb Client. What the tool prints was checked by hand
against both servers and is pinned here.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator

import pytest

import gearnb
from peers import GearmandProcess, gearnb_server, need, wait_until, wait_workers, worker_thread

GEARMAN = shutil.which("gearman")

pytestmark = pytest.mark.timeout(60)


class JobServer:
    def __init__(self, kind: str, address: str) -> None:
        self.kind = kind
        self.address = address
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)


@pytest.fixture(params=["gearnb", "gearmand"])
def server(request) -> Iterator[JobServer]:
    need(GEARMAN, "the gearman command-line tool")
    if request.param == "gearnb":
        with gearnb_server() as s:
            yield JobServer("gearnb", s.address)
    else:
        gearmand = GearmandProcess().start()
        try:
            yield JobServer("gearmand", gearmand.address)
        finally:
            gearmand.stop()


def gearman(server: JobServer, *args: str, input: bytes | None = None, timeout: float = 15
            ) -> subprocess.CompletedProcess[bytes]:
    """Run the ``gearman`` tool as a client and collect what it prints."""
    return subprocess.run([GEARMAN, "-h", server.host, "-p", str(server.port), *args],
                          input=input if input is not None else b"", capture_output=True, timeout=timeout)


@contextmanager
def cli_worker(server: JobServer, function: str, *command: str, options: tuple[str, ...] = (),
               count: int = 1) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` copies of ``gearman -w -f function -- command``; killed on exit."""
    procs = []
    try:
        for _ in range(count):
            errfile = tempfile.TemporaryFile()
            proc = subprocess.Popen([GEARMAN, "-h", server.host, "-p", str(server.port), "-w", *options,
                                     "-f", function, "--", *command], stdout=subprocess.DEVNULL, stderr=errfile)
            proc.errfile = errfile  # type: ignore[attr-defined]
            procs.append(proc)
        wait_workers(server.address, function, count)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            proc.errfile.close()  # type: ignore[attr-defined]


def stderr_of(proc: subprocess.Popen[bytes]) -> bytes:
    """What a ``cli_worker`` process has written to stderr so far."""
    errfile = proc.errfile  # type: ignore[attr-defined]
    errfile.seek(0)
    return errfile.read()


def reverse(job: gearnb.Job) -> bytes:
    return job.data[::-1]


def chatty(job: gearnb.Job) -> bytes:
    job.send_status(1, 2)
    job.send_data(b"part;")
    job.send_warning(b"careful;")
    job.send_status(2, 4)
    return b"done"


def boom(job: gearnb.Job) -> bytes:
    raise ValueError("bad input")


def fail(job: gearnb.Job) -> bytes:
    raise gearnb.JobFailed()


def quarter_then_fail(job: gearnb.Job) -> bytes:
    job.send_status(1, 4)
    raise gearnb.JobFailed()


# -- gearman as a client, gearnb Worker serving --------------------------------------------

def test_cli_client_calls_gearnb_worker(server):
    with worker_thread(server.address, {"reverse": reverse}):
        wait_workers(server.address, "reverse")
        out = gearman(server, "-f", "reverse", "abc")
        assert (out.returncode, out.stdout, out.stderr) == (0, b"cba", b"")
        # The workload from standard input, as is (no newline added or stripped).
        out = gearman(server, "-f", "reverse", input=b"xyz\n")
        assert (out.returncode, out.stdout) == (0, b"\nzyx")
        # -I (SUBMIT_JOB_HIGH) and -L (SUBMIT_JOB_LOW) in the foreground.
        for flag in ("-I", "-L"):
            out = gearman(server, flag, "-f", "reverse", "hello")
            assert (out.returncode, out.stdout) == (0, b"olleh"), flag
        # -P prefixes the output with the function; -u sends our unique.
        out = gearman(server, "-P", "-u", "my-unique", "-f", "reverse", "abc")
        assert (out.returncode, out.stdout) == (0, b"reverse: cba")
        # -n: one job per input line (the newline is part of the job).
        out = gearman(server, "-n", "-f", "reverse", input=b"ab\ncd\n")
        assert (out.returncode, out.stdout) == (0, b"\nba\ndc")
        # A 1 MB result comes back whole.
        with worker_thread(server.address, {"big": lambda job: b"x" * 1_000_000}):
            wait_workers(server.address, "big")
            out = gearman(server, "-f", "big", "x")
            assert out.returncode == 0 and out.stdout == b"x" * 1_000_000
        # An empty workload on the command line is refused before anything is sent (and
        # the tool still exits 0).
        out = gearman(server, "-f", "reverse", "")
        assert out.returncode == 0 and b"GEARMAN_INVALID_ARGUMENT) invalid workload" in out.stderr


def test_cli_unique_reaches_worker(server):
    seen: list[bytes] = []

    def record(job: gearnb.Job) -> bytes:
        seen.append(job.unique)
        return b"ok"

    with worker_thread(server.address, {"record": record}):
        wait_workers(server.address, "record")
        assert gearman(server, "-u", "u-42", "-f", "record", "x").stdout == b"ok"
        assert gearman(server, "-f", "record", "x").stdout == b"ok"
    assert seen[0] == b"u-42"
    # Without -u libgearman makes up a UUID for a foreground job too.
    assert len(seen[1]) == 36 and seen[1].count(b"-") == 4


def test_cli_background_jobs_and_priorities(server):
    """-b queues and returns at once; -I / -L set the priority the server honours."""
    done = threading.Event()
    order: list[bytes] = []

    def record(job: gearnb.Job) -> bytes:
        order.append(job.data)
        if len(order) == 6:
            done.set()
        return b""

    # Queue before any worker exists, so the server has to order them by priority.
    for flags, data in [(("-L",), "low1"), ((), "normal1"), (("-I",), "high1"),
                        (("-L",), "low2"), ((), "normal2"), (("-I",), "high2")]:
        out = gearman(server, "-b", *flags, "-f", "prio", data)
        assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
    with gearnb.Admin(server.address) as admin:
        [row] = [r for r in admin.priority_status() if r.function == "prio"]
        assert (row.high, row.normal, row.low) == (2, 2, 2)
    with worker_thread(server.address, {"prio": record}):
        assert done.wait(10)
    assert order == [b"high1", b"high2", b"normal1", b"normal2", b"low1", b"low2"]

    # -v prints the handle of a background job.
    with worker_thread(server.address, {"reverse": reverse}):
        out = gearman(server, "-v", "-b", "-f", "reverse", "abc")
        assert out.returncode == 0 and out.stdout.startswith(b"Task created: H:"), out


def test_cli_client_sees_status_data_warning(server):
    with worker_thread(server.address, {"chatty": chatty}):
        wait_workers(server.address, "chatty")
        out = gearman(server, "-f", "chatty", "x")
    assert out.returncode == 0
    # WORK_DATA and the result go to stdout, WORK_STATUS as "N% Complete" lines (1/2 and 2/4
    # are both 50%), WORK_WARNING to stderr.
    assert out.stdout.startswith(b"part;done")
    assert out.stdout.count(b"50% Complete\n") == 2
    assert out.stderr == b"careful;"


def test_cli_client_and_failing_gearnb_worker(server):
    with worker_thread(server.address, {"fail": fail, "boom": boom, "quarter": quarter_then_fail}):
        wait_workers(server.address, "boom")
        # JobFailed in the worker: WORK_FAIL. The tool says so on stderr and exits 1.
        out = gearman(server, "-f", "fail", "x")
        assert (out.returncode, out.stdout, out.stderr) == (1, b"", b"Job failed\n")
        # Status first, then the failure: both are shown.
        out = gearman(server, "-f", "quarter", "x")
        assert (out.returncode, out.stdout, out.stderr) == (1, b"25% Complete\n", b"Job failed\n")

        # Any other exception: the worker sends WORK_EXCEPTION. The tool does not ask for
        # exceptions (no OPTION_REQ), so the server turns it into a WORK_FAIL.
        # gearnb answers at once, so a long -t costs nothing there (a loaded machine gets time);
        # through gearmand the tool is expected to wait for its -t, so that one is short.
        out = gearman(server, "-t", "10000" if server.kind == "gearnb" else "1500", "-f", "boom", "x")
        if server.kind == "gearnb":
            assert (out.returncode, out.stdout, out.stderr) == (1, b"", b"Job failed\n")
        else:
            # gearmand 1.1.20 copies the handle into that WORK_FAIL with its NUL
            # ("H:vm:1\0"); libgearman matches handles exactly, never sees the job end and
            # waits until its -t timeout (forever without -t). It then exits 0.
            assert out.stdout == b""
            assert b"GEARMAN_TIMEOUT" in out.stderr and b"Job failed" not in out.stderr
        # The worker is fine afterwards.
        client = gearnb.Client(server.address)
        with pytest.raises(gearnb.JobException, match="ValueError: bad input"):
            client.do("boom", b"x", timeout=10)
        client.close()


def test_exception_packets_off_reaches_libgearman_clients(server):
    """Worker(exception_packets=False): WORK_WARNING (the traceback) + WORK_FAIL, which the
    gearman tool understands through gearmand too; gearnb clients still see the traceback."""
    worker = gearnb.Worker(server.address, exception_packets=False)
    worker.register("boom", boom)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        wait_workers(server.address, "boom")
        out = gearman(server, "-t", "10000", "-f", "boom", "x")
        assert out.returncode == 1 and out.stderr.endswith(b"Job failed\n")
        assert b"ValueError: bad input" in out.stderr  # the warning, on stderr
        client = gearnb.Client(server.address)
        warnings = []
        task = gearnb.Task("boom", b"y").on_warning(warnings.append)
        client.submit(task)
        assert task.wait(10) and not task.successful
        assert b"ValueError: bad input" in warnings[0]
        client.close()
    finally:
        worker.stop()
        thread.join(10)


def test_cli_client_without_worker_times_out(server):
    out = gearman(server, "-t", "500", "-f", "nobody-serves-this", "x")
    # -t is in milliseconds; on timeout the tool prints the libgearman error and exits 0.
    assert (out.returncode, out.stdout) == (0, b"")
    assert b"gearman_wait(GEARMAN_TIMEOUT) timeout reached" in out.stderr
    with gearnb.Admin(server.address) as admin:
        [row] = [r for r in admin.status() if r.function == "nobody-serves-this"]
        jobs = admin.show_jobs()
    if server.kind == "gearmand":
        # The tool's connection is gone, so gearmand marks the job ignored, yet still counts it.
        assert row.total == 1 and [(j.ignored, j.background) for j in jobs] == [(True, False)]
    else:
        # The gearnb server drops a foreground job whose last client left.
        assert row.total == 0 and jobs == []
    # Either way nobody runs it.
    ran: list[bytes] = []
    with worker_thread(server.address, {"nobody-serves-this": lambda job: ran.append(job.data)}):
        wait_workers(server.address, "nobody-serves-this")
        client = gearnb.Client(server.address)
        assert client.do("nobody-serves-this", b"later", timeout=10) == b""
        client.close()
    assert ran == [b"later"]
    with gearnb.Admin(server.address) as admin:
        [row] = [r for r in admin.status() if r.function == "nobody-serves-this"]
    assert row.total == 0


# -- gearman -w as a worker, gearnb Client calling ------------------------------------------

def test_cli_worker_serves_gearnb_client(server):
    client = gearnb.Client(server.address)
    try:
        with cli_worker(server, "rev", "rev"), cli_worker(server, "up", "tr", "a-z", "A-Z", count=2):
            assert client.do("rev", b"abc", timeout=10) == b"cba"  # rev adds no newline here
            assert client.do("rev", b"line1\nline2\n", timeout=10) == b"1enil\n2enil\n"
            assert client.do("up", b"hello world", timeout=10) == b"HELLO WORLD"
            assert client.do("up", b"h\0llo", timeout=10) == b"H\0LLO"  # NULs pass through
            assert client.do("up", b"", timeout=10) == b""

            taskset = client.task_set()
            completes: list[bytes] = []
            tasks = []
            for i in range(12):
                task = gearnb.Task("up", f"task-{i}", priority=("high", "normal", "low")[i % 3])
                task.on_complete(completes.append)
                tasks.append(taskset.add(task))
            assert taskset.wait(30)
            assert [t.result for t in tasks] == [f"TASK-{i}".encode() for i in range(12)]
            assert sorted(completes) == sorted(t.result for t in tasks)
            assert all(t.successful for t in tasks)
    finally:
        client.close()


def test_cli_worker_background_and_status(server):
    client = gearnb.Client(server.address)
    try:
        # No worker yet: the job is known and queued, not running.
        handle = client.do_background("sleepy", b"", timeout=10)
        assert handle.startswith(b"H:")
        assert client.status(handle) == gearnb.JobStatus(True, False, 0, 0)
        with cli_worker(server, "sleepy", "sleep", "3"):  # 3 s to see it running, even on a loaded machine
            wait_until(lambda: client.status(handle).running, timeout=10)
            assert client.status(handle) == gearnb.JobStatus(True, True, 0, 0)
            # When `sleep 3` has ended, the server has forgotten the job.
            wait_until(lambda: not client.status(handle).known, timeout=10)
            assert client.status(handle) == gearnb.JobStatus(False, False, 0, 0)
    finally:
        client.close()


def test_cli_worker_data_failure_and_count(server):
    client = gearnb.Client(server.address)
    try:
        # -n: a WORK_DATA per output line. The tool does not reset its buffer, so each one
        # holds everything so far; WORK_COMPLETE then carries nothing.
        with cli_worker(server, "lines", "cat", options=("-n",)):
            events: list[tuple[str, bytes]] = []
            task = gearnb.Task("lines", b"a\nb\nc\n")
            task.on_data(lambda d: events.append(("data", d)))
            task.on_complete(lambda d: events.append(("complete", d)))
            taskset = client.task_set()
            taskset.add(task)
            assert taskset.wait(10)
            assert events == [("data", b"a\n"), ("data", b"a\nb\n"), ("data", b"a\nb\nc\n"), ("complete", b"")]

        # A command that exits non-zero: WORK_FAIL; the tool logs and keeps serving.
        with cli_worker(server, "false", "false") as (proc,):
            for _ in range(2):
                with pytest.raises(gearnb.JobFailed) as info:
                    client.do("false", b"x", timeout=10)
                assert not isinstance(info.value, gearnb.JobException)
            # It says so on stderr (just after it has sent WORK_FAIL).
            wait_until(lambda: stderr_of(proc).count(b"gearman_worker_work : GEARMAN_UNKNOWN_STATE") == 2)
            assert proc.poll() is None

        # -c N: the worker exits after N jobs.
        with cli_worker(server, "cnt", "cat", options=("-c", "2")) as (proc,):
            assert client.do("cnt", b"1", timeout=10) == b"1"
            assert client.do("cnt", b"2", timeout=10) == b"2"
            assert proc.wait(10) == 0
    finally:
        client.close()
