"""Trust (issue 15): a signed call runs once and is answered only by its own result; keys and
key files; the sqlite queue file; worker text.

Against real peers: the gearnb server and gearmand (``server_address`` runs a test on both),
``gearnb worker`` processes, the ``gearnb`` command, keyless clients and workers, and a hostile
job server written here (asyncio, gearnb's codec). Each test below failed on the main branch
before this work (the docstrings say how), except two that guard behaviour kept: a call failed
over to a second job server still runs, and the unique limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

import gearnb
from gearnb import RefusedPayload
from gearnb.protocol import REQ, Decoder, PacketType, response
from gearnb.pyexec import envelope
from gearnb.pyexec.keys import load_key
from peers import GearmandProcess, WorkerProcesses, free_port, wait_port, wait_until, worker_thread

KEY = b"T" * 32
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
P = PacketType


def append_line(path: str, line: str = "ran") -> str:
    with open(path, "a") as f:
        f.write(line + "\n")
    return "done"


def check(password: str) -> bool:
    return password == "s3cret"


def gearnb_cli(*args: str, **options) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GEARNB_KEY", "GEARNB_KEY_FILE")}
    env.update(options.pop("env", {}))
    return subprocess.run([sys.executable, "-B", "-m", "gearnb", *args], capture_output=True, text=True,
                          timeout=options.pop("timeout", 60), env=env, **options)


# -- rows 1 and 2: replays and kept results -----------------------------------------------------
def test_a_keyless_replayer_is_refused_and_the_call_runs_once(server_address, kind, tmp_path):
    """A payload captured off the wire and submitted again by a plain Client without the key
    is refused, saying why, and the side effect ran once (main: it ran 4 times, each replay
    got a signed result). A stale and a far-future call are refused too; a retry (a new
    call) and an epoch call signed with a validity that covers its wait both run."""
    log = tmp_path / "ran"
    with WorkerProcesses(server_address, processes=1, key=KEY):
        ex = gearnb.Executor(server_address, key=KEY, show_output=False)
        future = ex.submit(append_line, str(log))
        assert future.result(30) == "done"
        captured = future.run.job.data  # what crossed the network, in clear
        with gearnb.Client(server_address) as thief:  # no key
            for _ in range(3):
                with pytest.raises(gearnb.JobException, match="ran on this worker before.*a replayed payload"):
                    thief.do("pyexec", captured, timeout=30)
            assert log.read_text() == "ran\n"

            from gearnb.pyexec.signing import Signer

            signer = Signer(KEY)
            body = envelope.encode_call(envelope.FunctionBlob(append_line), [((str(log), "late"), {})],
                                        with_code=True, chunk=False)
            stale = signer.sign_call(b"pyexec", [body], created=time.time() - 25 * 3600)[0]
            with pytest.raises(gearnb.JobException, match=r"stale: made 25\.0 h ago, valid for 24\.0 h"):
                thief.do("pyexec", stale, timeout=30)
            ahead = signer.sign_call(b"pyexec", [body], created=time.time() + 3600)[0]
            with pytest.raises(gearnb.JobException, match="in the future by the caller's clock"):
                thief.do("pyexec", ahead, timeout=30)
            assert log.read_text() == "ran\n"

            # an epoch job: signed now with a validity that covers its wait, runs when due
            def call_of(line):
                return envelope.encode_call(envelope.FunctionBlob(append_line), [((str(log), line), {})],
                                            with_code=True, chunk=False)

            due_at = time.time() + 2
            thief.do_background("pyexec", signer.sign_call(b"pyexec", [call_of("due")], ttl=3600)[0], when=due_at)
            if kind == "gearmand":  # gearmand 1.1.20 wakes no sleeping worker for a due epoch job (#343)
                time.sleep(max(0.0, due_at + 0.5 - time.time()))
                thief.do_background("pyexec", signer.sign_call(b"pyexec", [call_of("wake")])[0])
            wait_until(lambda: "due" in log.read_text(), timeout=30)

        # a retry is a new call: the same worker runs it (the first attempt failed)
        flaky_log = tmp_path / "flaky"

        def flaky(path):
            runs = append_line(path) and open(path).read().count("\n")
            if runs == 1:
                raise RuntimeError("first attempt fails")
            return runs

        assert ex.submit(flaky, str(flaky_log), retries=1).result(30) == 2
        ex.shutdown()
    assert sorted(log.read_text().split()) == sorted(["ran", "due"] + (["wake"] if kind == "gearmand" else []))


def test_a_keyless_rogue_worker_answering_with_a_kept_result_is_refused(server_address):
    """A worker without the key takes a call (its arguments are readable) and answers with a
    correctly signed result kept from an earlier call: the caller refuses it (main:
    ``check("hunter2")`` returned True)."""
    with WorkerProcesses(server_address, processes=1, key=KEY):
        ex = gearnb.Executor(server_address, key=KEY, show_output=False)
        first = ex.submit(check, "s3cret")
        assert first.result(30) is True
        kept = first.run.job.result
    taken = []

    def rogue(job):
        taken.append(job.data)
        return kept

    with worker_thread(server_address, {"pyexec": rogue}):
        with pytest.raises(RefusedPayload, match="not the result of this call.*rogue worker or job server"):
            ex.submit(check, "hunter2").result(30)
        ex.shutdown()
    assert len(taken) == 1 and b"hunter2" in taken[0]


def test_a_call_failed_over_to_another_job_server_runs_again_as_a_new_call(tmp_path, server_address):
    """The client sends a running call to the second job server when the first dies; the one
    worker, which ran it, gets it again from there: it answers "not run" signed for the call,
    and the caller signs the work again as a new call, which runs (at least once, as before
    GNB3; without the signed answer the caller got a refusal)."""
    from peers import GearnbProcess

    log = tmp_path / "ran"
    first = GearnbProcess().start()
    servers = f"{first.address},{server_address}"
    try:
        with WorkerProcesses(servers, processes=1, key=KEY):
            ex = gearnb.Executor(servers, key=KEY, show_output=False)

            def slow(path):
                import time

                append_line(path, "start")
                time.sleep(1.5)
                return append_line(path, "end")

            futures = [ex.submit(slow, str(log)) for _ in range(2)]  # one of them on each server

            def running_on_first() -> bool:
                with gearnb.Admin(first.address) as admin:
                    return sum(s.running for s in admin.status()) == 1

            wait_until(running_on_first, timeout=30)  # the worker runs the first server's call
            first.stop(signal.SIGKILL)
            assert [f.result(60) for f in futures] == ["done", "done"]
            ex.shutdown()
        # both calls ended; the one that was running on the killed server ran twice
        assert log.read_text().split().count("end") == 3
    finally:
        first.stop()


class HostileJobServer:
    """A job server written here (asyncio on a thread, gearnb's codec) that answers every
    submitted job with what it was given: WORK_DATA, then WORK_COMPLETE or WORK_EXCEPTION."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []  # (packet type, data), one per job, in order
        self.work_data = b""
        self.jobs = 0
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = Decoder(REQ)
        while data := await reader.read(65536):
            for packet in decoder.feed(data):
                if packet.type == P.OPTION_REQ:
                    writer.write(response(P.OPTION_RES, packet.args[0]))
                elif packet.type == P.ECHO_REQ:
                    writer.write(response(P.ECHO_RES, packet.args[0]))
                elif packet.type in (P.SUBMIT_JOB, P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_LOW):
                    handle = b"H:hostile:%d" % self.jobs
                    kind, answer = self.answers[min(self.jobs, len(self.answers) - 1)]
                    self.jobs += 1
                    writer.write(response(P.JOB_CREATED, handle))
                    if self.work_data:
                        writer.write(response(P.WORK_DATA, handle, self.work_data))
                    writer.write(response(kind, handle, answer))
            await writer.drain()
        writer.close()

    def __enter__(self) -> HostileJobServer:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_hostile_job_server_cannot_answer_with_a_kept_result_nor_drive_the_terminal(server_address, capsys):
    """A job server answering with a result it kept from an earlier call is refused (main:
    True); its worker text and an unsigned refusal reach the cell with their escape sequences
    shown, not obeyed (main: ``ESC[2J ESC[31mFAKE`` printed as is)."""
    with WorkerProcesses(server_address, processes=1, key=KEY):
        with gearnb.Executor(server_address, key=KEY, show_output=False) as honest:
            first = honest.submit(check, "s3cret")
            assert first.result(30) is True
            kept = first.run.job.result
    with HostileJobServer() as hostile:
        hostile.answers = [(P.WORK_COMPLETE, kept), (P.WORK_EXCEPTION, b"\x1b[2J\x1b[31mall is fine\x1b[0m")]
        hostile.work_data = b"\x1b[2J\x1b[31mFAKE\x1b]0;owned\x07\n"
        ex = gearnb.Executor(f"127.0.0.1:{hostile.port}", key=KEY)
        with pytest.raises(RefusedPayload, match="not the result of this call"):
            ex.submit(check, "hunter2").result(30)
        with pytest.raises(RefusedPayload) as refused:
            ex.submit(check, "hunter2").result(30)
        ex.shutdown()
        assert hostile.jobs == 2
    assert str(refused.value) == "\\x1b[2J\\x1b[31mall is fine\\x1b[0m"
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.count("[check] \\x1b[2J\\x1b[31mFAKE\\x1b]0;owned\\x07\n") == 2


# -- row 9: worker text is data --------------------------------------------------------------------
def test_worker_text_is_shown_not_obeyed():
    from gearnb.worker_text import neutralise, shown

    assert neutralise("plain\ttabs\nand lines\n") == "plain\ttabs\nand lines\n"
    assert neutralise("\x1b[2J\x1b[31mred\x1b[0m") == "\\x1b[2J\\x1b[31mred\\x1b[0m"
    assert neutralise("win\r\nline\rover") == "win\nline\\rover"
    assert neutralise("\x00\x7f\x9b\u202etxt.exe\u2066") == "\\x00\\x7f\\x9b\\u202etxt.exe\\u2066"
    assert shown(b"caf\xc3\xa9 \xff\x1b") == "caf\u00e9 \ufffd\\x1b"


def test_worker_output_and_exceptions_reach_the_cell_neutralised(capsys):
    """Through a real worker process: print() and stderr with escapes, an exception whose text
    has escapes, and one whose ``__str__`` raises (main: the worker's internal traceback came
    back as an unsigned refusal)."""
    from gearnb.server import Server

    with Server("127.0.0.1", 0) as server, WorkerProcesses(server.address, processes=1, key=KEY):
        ex = gearnb.Executor(server.address, key=KEY)

        def noisy():
            print("\x1b[2J\x1b[31mFAKE\x1b[0m\ttab")
            print("\u202eevil\r\nnext", file=sys.stderr)
            return 1

        assert ex.submit(noisy).result(30) == 1

        class Loud(Exception):
            pass

        def loud():
            raise Loud("\x1b[2Jboom")

        with pytest.raises(Loud) as info:
            ex.submit(loud).result(30)
        assert str(info.value) == "\\x1b[2Jboom" and "\x1b" not in str(info.value.__cause__)

        class Mute(Exception):
            def __str__(self):
                raise RuntimeError("no text")

        def mute():
            raise Mute()

        with pytest.raises(gearnb.RemoteError) as info:
            ex.submit(mute).result(30)
        assert "Mute" in info.value.type_name
        assert info.value.message == "<str() of this Mute raised RuntimeError: no text>"
        assert "in mute" in info.value.__cause__.tb and "runner.py" not in info.value.__cause__.tb
        ex.shutdown()
    captured = capsys.readouterr()
    assert "[noisy] \\x1b[2J\\x1b[31mFAKE\\x1b[0m\ttab\n" in captured.out
    assert "[noisy] \\u202eevil\n[noisy] next\n" in captured.err
    assert "\x1b" not in captured.out + captured.err and "\u202e" not in captured.err


# -- row 7: keys and key files ---------------------------------------------------------------------
# Runs the gearnb command in a process whose audit hook (PEP 578: CPython reports each file
# open, chmod, remove, subprocess... before doing it) records the key file's mode at every event
# from the moment the file exists: the open that creates it is followed by at least one event.
WATCHED_CLI = """
import json, os, stat, sys
path, umask, argv = sys.argv[1], int(sys.argv[2], 8), sys.argv[3:]
modes = []
def watch(event, args):
    try:
        modes.append((event, stat.S_IMODE(os.stat(path).st_mode)))
    except OSError:
        pass
sys.addaudithook(watch)
os.umask(umask)
from gearnb.cli import main
code = main(argv)
print("MODES " + json.dumps(modes), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o777])
@pytest.mark.parametrize("command", [["key", "new"], ["local", "--workers", "1", "--key-file"]])
def test_a_key_file_is_never_readable_by_others_not_even_for_a_moment(tmp_path, command, umask):
    """The key file's mode at every audited event of the creating process, from the moment it
    exists, whatever the umask: never readable or writable by group or others, 0600 in the end
    (main: ``gearnb local --key-file`` created it 0666 under umask 0, wrote the key, then
    chmodded it; ``gearnb key new`` did not exist)."""
    path = tmp_path / "cluster.key"
    env = {k: v for k, v in os.environ.items() if k not in ("GEARNB_KEY", "GEARNB_KEY_FILE")}
    proc = subprocess.Popen([sys.executable, "-B", "-c", WATCHED_CLI, str(path), oct(umask), *command, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if command[0] == "local":
            deadline = time.monotonic() + 120
            while "Ctrl-C stops it" not in proc.stdout.readline() and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    modes = json.loads(err.split("MODES ")[-1])
    assert modes and modes[0][0] == "os.chmod"  # the first event after the file appeared: its fchmod
    assert [mode for _, mode in modes if mode & 0o077] == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())


def test_gearnb_key_new(tmp_path):
    path = tmp_path / "cluster.key"
    out = gearnb_cli("key", "new", str(path), preexec_fn=lambda: os.umask(0))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert str(path) in out.stdout and text.strip() not in out.stdout + out.stderr  # the path, never the key
    again = gearnb_cli("key", "new", str(path))
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert path.read_text() == text
    assert load_key(key_file=str(path)) == bytes.fromhex(text)
    # gearnb local --key-file with that file uses its key (a restart keeps notebooks connected)
    proc = subprocess.Popen([sys.executable, "-m", "gearnb", "local", "--workers", "1", "--key-file", str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        address = re.search(r"job server (127\.0\.0\.1:\d+)", proc.stdout.readline()).group(1)
        ex = gearnb.Executor(address, key=bytes.fromhex(text))
        assert ex.submit(pow, 2, 5).result(30) == 32
        ex.shutdown()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert path.read_text() == text


def test_short_or_malformed_keys_are_refused_saying_how_to_make_one(tmp_path, caplog):
    from gearnb.pyexec.keys import BadKey

    for text in ("a", "hunter2", "ab" * 15, "xy" * 16, "abc"):
        with pytest.raises(BadKey, match="gearnb key new"):
            load_key(text)
    with pytest.raises(BadKey, match=r"key= is 15 bytes.*at least 16"):
        load_key(b"k" * 15)
    loose = tmp_path / "loose.key"
    loose.write_text("ab" * 32 + "\n")
    loose.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="gearnb.pyexec"):
        assert load_key(key_file=str(loose)) == bytes.fromhex("ab" * 32)
    assert f"key file {loose} can be read or changed by other users (mode 0644)" in caplog.text
    assert f"chmod 600 {loose}" in caplog.text
    # the worker command refuses a short key at once (main: "secret" was a key)
    out = gearnb_cli("worker", "--servers", "127.0.0.1:1", env={"GEARNB_KEY": "secret"})
    assert out.returncode == 2 and "GEARNB_KEY is not a hex key" in out.stderr and "gearnb key new" in out.stderr


def test_gearnb_local_never_prints_the_key_nor_gives_it_to_the_job_server(tmp_path):
    """Without --key-file the key goes to a private file whose path is printed; the server's
    environment has no key, the workers' has (main: the key was printed, and the server had it)."""
    proc = subprocess.Popen([sys.executable, "-m", "gearnb", "local", "--workers", "1"], stdout=subprocess.PIPE,
                            text=True, env={k: v for k, v in os.environ.items() if k != "GEARNB_KEY"})
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        address = re.search(r"job server (127\.0\.0\.1:\d+)", lines[0]).group(1)
        key_file = re.search(r"key_file='([^']+)'", lines[2]).group(1)
        key = open(key_file).read().strip()
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(key_file)).st_mode) == 0o700
        assert key not in "".join(lines)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        environments = {}
        for pid in children:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                role = "server" if b"\0server\0" in f.read() else "worker"
            with open(f"/proc/{pid}/environ", "rb") as f:
                environments[role] = f.read().split(b"\0")
        assert sorted(environments) == ["server", "worker"]
        assert not any(v.startswith((b"GEARNB_KEY=", b"GEARNB_KEY_FILE=")) for v in environments["server"])
        assert b"GEARNB_KEY=" + key.encode() in environments["worker"]
        ex = gearnb.Executor(address, key_file=key_file)
        assert ex.gmap(lambda x: x + 1, [1, 2]) == [2, 3]
        ex.shutdown()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not os.path.exists(key_file)


# -- row 8: the sqlite queue file ------------------------------------------------------------------
def _queue_server(path, log_path, umask: int | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "gearnb", "server", "--port", str(port), "--queue", f"sqlite:{path}"],
                            stderr=log, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    log.close()
    try:
        wait_port(port)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the server did not start: {open(log_path).read()}") from None
    return proc, f"127.0.0.1:{port}"


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    proc.wait(30)


GOOD_ROWS = [(b"g1", b"good", 1, b"one", 0), (b"g2", b"good", 0, b"two", 0), (b"u\xff", b"good", 2, b"three", 0)]
BAD_ROWS = [
    (b"b1", b"good", 7, b"bad-priority-7", 0, "priority 7 is not 0 (high), 1 (normal) or 2 (low)"),
    (b"b2", b"good", "abc", b"bad-priority-abc", 0, "priority b'abc' is not 0 (high)"),
    (b"b3", b"", 1, b"bad-empty-function", 0, "the function name is empty"),
    # as gearmand 1.1.20 stores a 64-byte unique: 63 bytes and a NUL
    (b"u" * 63 + b"\0", b"good", 1, b"bad-long-unique", 0, "the unique is 64 bytes, more than the 63"),
    (b"b5", b"good", 1, b"bad-when", "abc", "when_to_run b'abc' is not a time"),
]


def test_bad_sqlite_rows_are_logged_and_skipped(tmp_path):
    """gearmand's table with good rows (one with a unique that is not UTF-8) and bad ones: the
    server starts, runs the good jobs, logs each bad row with its reason and leaves it in the
    file (main: the server could not start)."""
    path = tmp_path / "queue.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT, priority INTEGER, "
                   "data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))")
        for unique, function, priority, data, when, *_ in GOOD_ROWS + BAD_ROWS:
            db.execute("INSERT INTO gearman_queue VALUES (CAST(? AS TEXT), CAST(? AS TEXT), ?, ?, ?)",
                       (unique, function, priority, data, when))
    proc, address = _queue_server(path, tmp_path / "server.log")
    try:
        with gearnb.Admin(address) as admin:
            assert {s.function: s.total for s in admin.status()} == {"good": 3}
        ran = []
        with worker_thread(address, {"good": lambda job: ran.append((job.unique, job.data)) or b""}):
            wait_until(lambda: len(ran) == 3, timeout=30)
        assert sorted(ran) == [(b"g1", b"one"), (b"g2", b"two"), (b"u\xff", b"three")]
        with sqlite3.connect(path) as db:
            wait_until(lambda: db.execute("SELECT COUNT(*) FROM gearman_queue").fetchone()[0] == len(BAD_ROWS))
    finally:
        _stop(proc)
    log = (tmp_path / "server.log").read_text()
    for *_, reason in BAD_ROWS:
        assert reason in log, (reason, log)
    assert f"{len(BAD_ROWS)} rows skipped" in log


def test_the_queue_file_is_0600_and_moves_to_gearmand_with_any_unique(tmp_path):
    """Created 0600 whatever the umask, its -wal and -shm files too (main: 0644, 0666 with
    umask 0); a unique that is not UTF-8 is stored as gearmand stores it, and gearmand runs
    the job (main: it could not be stored)."""
    path = tmp_path / "queue.db"
    proc, address = _queue_server(path, tmp_path / "server.log", umask=0)
    with gearnb.Client(address) as client:
        client.do_background("moving", b"payload", unique=b"u\xff\xfe")
        client.do_background("moving", b"second")
    for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    _stop(proc, signal.SIGKILL)
    gearmand = GearmandProcess("-q", "libsqlite3", "--libsqlite3-db", str(path)).start()
    try:
        ran = []
        with worker_thread(gearmand.address, {"moving": lambda job: ran.append((job.unique, job.data)) or b""}):
            wait_until(lambda: len(ran) == 2, timeout=30)
        assert (b"u\xff\xfe", b"payload") in ran
    finally:
        gearmand.stop()


def test_a_unique_longer_than_gearmands_is_refused_at_submit(server_address, kind):
    """The gearnb server refuses a unique of 64 bytes or more (gearmand 1.1.20 takes 64 bytes,
    keeps 63 and hands the job out with a NUL in front of its data); both refuse 65."""
    with gearnb.Client(server_address) as client:
        client.do_background("f", b"x", unique="u" * 63)
        for size in (64, 65) if kind == "gearnb" else (65,):
            with pytest.raises(gearnb.ServerError, match="ARGUMENT_TOO_LARGE"):
                client.do_background("f", b"x", unique="u" * size)
