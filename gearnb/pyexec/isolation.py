"""Each pyexec task runs in a task process of its worker, so that a task that dies takes only
itself down: the worker answers that job with a :class:`~gearnb.errors.WorkerDied` failure,
signed for its call, starts a fresh task process, and its Gearman connections never drop (so
no job server requeues the job, gearmand's "requeue forever" included).

Two processes per worker: the *worker* (the Gearman connections, the grab loop, this module's
:class:`IsolatedRunner` registered as ``pyexec``) never runs user code; its *task process*
(``python -m gearnb.pyexec.isolation``, :func:`task_main`) runs every call with the in-process
:class:`~gearnb.pyexec.runner.PyexecRunner`. Order of calls, per job: the worker sends the job
to the task process (a JOB frame); the task process sends back frames for the task's
WORK_DATA, WORK_WARNING and WORK_STATUS, which the worker passes on at once, then one
outcome frame (COMPLETE, EXCEPTION or FAIL). End of stream before the outcome means the task
process died: the worker reaps it, says how (``killed by SIGSEGV``) and answers the job so.

:meth:`IsolatedRunner.stop` (the control channel, :mod:`.control`) stops the task that is
running a given job: SIGINT first (a KeyboardInterrupt in the task, which its call loop turns
into :class:`~gearnb.errors.TaskStopped`), SIGKILL after ``STOP_GRACE`` if it has not stopped.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

from ..buffers import BufferList, nbytes, new_bytes
from ..errors import JobFailed, TaskStopped, WorkerDied, WorkException
from ..supervisor import PARENT_ENV, describe_exit, die_with_parent
from . import envelope
from .signing import MAC_SIZE, MAGIC, PREFIX_SIZE, CallId, Signer

log = logging.getLogger("gearnb.pyexec")

# Frames between a worker and its task process: kind (1 byte), length (8 bytes), payload.
FRAME = struct.Struct(">BQ")
SMALL_FRAME = 65536  # frames below this are joined and sent with one send; larger ones gathered
READ_SIZE = 256 * 1024  # the frame reader's buffer: every small frame of a job in one recv
MAX_IOV = 512  # parts per sendmsg (Linux allows 1024)
JOB, DATA, WARNING, STATUS, COMPLETE, EXCEPTION, FAIL = range(7)
# A task asked to stop gets this long to stop (SIGINT: a KeyboardInterrupt in Python code)
# before its process is killed; C code that does not check for signals never stops by itself.
STOP_GRACE = 2.0
START_TIMEOUT = 60.0  # seconds for a task process to say it is ready
READY = b"gearnb-task-ready"


def send_frame(sock: socket.socket, kind: int, payload: bytes | BufferList | memoryview = b"") -> None:
    """One frame, in one system call; a payload given in pieces (a large result) is sent
    without joining them."""
    parts = list(payload) if isinstance(payload, BufferList) else [payload]
    size = sum(map(nbytes, parts))
    if size < SMALL_FRAME:
        sock.sendall(FRAME.pack(kind, size) + b"".join(parts))
    else:
        _send_parts(sock, [FRAME.pack(kind, size), *parts])


def send_job(sock: socket.socket, head: bytes, data: bytes | memoryview) -> None:
    """A JOB frame (``head``: handle, function and unique) and its data, in one system call."""
    if nbytes(data) < SMALL_FRAME:
        sock.sendall(b"".join((FRAME.pack(JOB, len(head)), head, FRAME.pack(DATA, nbytes(data)), data)))
    else:
        _send_parts(sock, [FRAME.pack(JOB, len(head)) + head + FRAME.pack(DATA, nbytes(data)), data])


def _send_parts(sock: socket.socket, parts: list[Any]) -> None:
    """``sendmsg`` the parts (gathered by the kernel, not joined here) until all are sent."""
    views = [memoryview(part).cast("B") for part in parts]
    while views:
        sent = sock.sendmsg(views[:MAX_IOV])
        while sent and views:
            if sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class FrameReader:
    """Frames from one end of the socket pair: one ``recv`` brings whatever has arrived (a job's
    two frames, a task's output and its outcome), a large payload is read into its own bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    def next(self) -> tuple[int, bytes] | None:
        """The next frame, or None at the end of the stream (the other side is gone)."""
        if not self._fill(FRAME.size):
            return None
        kind, size = FRAME.unpack_from(self._buffer, self._start)
        self._start += FRAME.size
        if size <= READ_SIZE - FRAME.size:
            if not self._fill(size):
                return None
            payload = bytes(self._view[self._start:self._start + size])
            self._start += size
            return kind, payload
        have = self._end - self._start  # a large payload: what is buffered, then the rest
        made = new_bytes(size)
        if made is None:
            out = bytearray(size)
            view = memoryview(out)
        else:
            out, view = made  # type: ignore[assignment]
        view[:have] = self._view[self._start:self._end]
        self._start = self._end = 0
        got = have
        while got < size:
            n = self.sock.recv_into(view[got:])
            if not n:
                view.release()
                return None
            got += n
        view.release()
        return kind, bytes(out) if made is None else out  # type: ignore[return-value]

    def _fill(self, want: int) -> bool:
        """At least ``want`` bytes buffered from ``_start``; False at the end of the stream."""
        if self._end - self._start >= want:
            return True
        if self._start:  # move what is left to the front
            left = self._end - self._start
            self._buffer[:left] = self._buffer[self._start:self._end]
            self._start, self._end = 0, left
        while self._end < want:
            n = self.sock.recv_into(self._view[self._end:])
            if not n:
                return False
            self._end += n
        return True

    def buffered(self) -> bool:
        return self._end > self._start


class TaskProcess:
    """A worker's task process: started on first use and again after it dies."""

    def __init__(self, key: bytes, function_name: str) -> None:
        self.key = key
        self.function_name = function_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.reader: FrameReader | None = None
        self.starts = 0

    def ensure_started(self) -> socket.socket:
        if self.sock is not None and self.proc is not None and self.proc.poll() is None:
            return self.sock
        self.close()
        ours, theirs = socket.socketpair()
        # The task process ends with its worker (die_with_parent), even a SIGKILLed one.
        env = dict(os.environ, GEARNB_KEY=self.key.hex(), **{PARENT_ENV: str(os.getpid())})
        env.pop("GEARNB_KEY_FILE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gearnb.pyexec.isolation", str(theirs.fileno()), self.function_name],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        ours.settimeout(START_TIMEOUT)
        reader = FrameReader(ours)
        try:
            ready = reader.next()
        except OSError:
            ready = None
        ours.settimeout(None)
        if ready is None or ready[1] != READY:
            code = self.proc.wait()
            ours.close()
            raise RuntimeError(f"the task process could not start ({describe_exit(code)})")
        self.sock = ours
        self.reader = reader
        self.starts += 1
        return ours

    def reap(self) -> str:
        """The task process is gone (end of stream): wait for it; how did it end?"""
        proc, self.proc = self.proc, None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.reader = None
        if proc is None:
            return "ended"
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:  # the stream ended but the process lingers: end it
            proc.kill()
            code = proc.wait()
        return describe_exit(code)

    def signal(self, signum: int) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.reader = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


class IsolatedRunner:
    """The worker's ``pyexec`` function: each job runs in the task process (see the module
    docstring). ``worker.register("pyexec", IsolatedRunner(key))``."""

    def __init__(self, key: bytes, function_name: str = "pyexec") -> None:
        self.signer = Signer(key)
        self.function_name = function_name
        self.process = TaskProcess(key, function_name)
        self._lock = threading.Lock()  # current job, against stop() from the control thread
        self._current: tuple[str, bytes] | None = None  # (server, handle) of the job running
        self._stopping: threading.Timer | None = None
        self._stopped = False

    def __call__(self, job: Any) -> bytes | BufferList:
        process = self.process
        with self._lock:
            self._current = (job.server, job.handle)
            self._stopped = False
        try:
            sock = process.ensure_started()
            if self._stopped:  # asked to stop while its task process was starting
                raise self._stopped_before_start(job)
            # The server that gave the job goes along: nested maps in the task use it.
            send_job(sock, b"\0".join((job.handle, job.function.encode(), job.unique, job.server.encode())), job.data)
            reader = process.reader
            assert reader is not None
            while True:
                frame = reader.next()
                if frame is None:
                    how = process.reap()
                    raise self._died(job, how)
                kind, payload = frame
                if kind == COMPLETE:
                    return payload
                if kind == EXCEPTION:
                    raise WorkException(payload)
                if kind == FAIL:
                    raise JobFailed()
                if kind == DATA:
                    job.send_data(payload)
                elif kind == WARNING:
                    job.send_warning(payload)
                elif kind == STATUS:
                    numerator, denominator = payload.split(b"/")
                    job.send_status(int(numerator), int(denominator))
        except OSError as exc:  # the socket pair broke: the task process is gone
            how = process.reap()
            raise self._died(job, f"{how} ({exc})") from None
        finally:
            with self._lock:
                self._current = None
                if self._stopping is not None:
                    self._stopping.cancel()
                    self._stopping = None

    def _stopped_before_start(self, job: Any) -> WorkException:
        call = _call_of(job.data)
        error = TaskStopped("stopped before it started: its caller gave up on it")
        if call is None:
            return WorkException(f"gearnb worker: {error}".encode())
        return WorkException(self.signer.sign_result(job.function.encode(), call, [envelope.encode_failure(error)]))

    def _died(self, job: Any, how: str) -> WorkException:
        """The answer for a job whose task process died: WorkerDied (or TaskStopped, when it
        was killed because it did not stop when asked), signed for the job's call."""
        stopped = self._stopped
        # INFO: the caller hears of it (one error per task, after its attempts), the cell not
        # once per restart.
        log.info("the task process running job %r %s%s; starting another", job.handle, how,
                    " after it did not stop when asked" if stopped else "")
        error: BaseException = TaskStopped(f"stopped: the task process was {how}") if stopped else WorkerDied(how)
        call = _call_of(job.data)
        if call is None:  # not a signed call (it was refused): nothing to bind an answer to
            return WorkException(f"gearnb worker: {error}".encode())
        name = job.function.encode()
        return WorkException(self.signer.sign_result(name, call, [envelope.encode_failure(error)]))

    def stop(self, server: str, handles: set[bytes]) -> bool:
        """Stop the task running the job ``(server, handle)`` if it is one of ``handles``
        (from any thread): SIGINT now, SIGKILL after STOP_GRACE if it is still the same job."""
        with self._lock:
            current = self._current
            if current is None or current[0] != server or current[1] not in handles:
                return False
            self._stopped = True
            self.process.signal(signal.SIGINT)  # nothing yet if its process is still starting
            if self._stopping is None:
                self._stopping = threading.Timer(STOP_GRACE, self._kill_if_still, (current,))
                self._stopping.daemon = True
                self._stopping.start()
        log.info("stopping job %r of %s: its caller gave up on it", current[1], server)
        return True

    def _kill_if_still(self, job: tuple[str, bytes]) -> None:
        with self._lock:
            if self._current == job:
                self.process.signal(signal.SIGKILL)

    def close(self) -> None:
        self.process.close()


def _call_of(payload: bytes) -> CallId | None:
    """The identity of the call a job's payload carries, read without checking its MAC: the
    answer is signed over it, and only the caller that made this call can use that answer."""
    if len(payload) < PREFIX_SIZE or not payload.startswith(MAGIC):
        return None
    return CallId(bytes(payload[len(MAGIC):len(MAGIC) + MAC_SIZE]),
                  bytes(payload[len(MAGIC) + MAC_SIZE:PREFIX_SIZE]))


# -- the task process ------------------------------------------------------------------------
class _RelayedJob:
    """What a task sees as its job in the task process: the worker's Job, over the frames."""

    __slots__ = ("handle", "function", "unique", "data", "server", "_sock")

    def __init__(self, sock: socket.socket, handle: bytes, function: str, unique: bytes, data: bytes) -> None:
        self._sock = sock
        self.handle = handle
        self.function = function
        self.unique = unique
        self.data = data
        self.server = ""

    def send_status(self, numerator: int, denominator: int) -> None:
        send_frame(self._sock, STATUS, b"%d/%d" % (int(numerator), int(denominator)))

    def send_data(self, data: bytes | str) -> None:
        send_frame(self._sock, DATA, data.encode() if isinstance(data, str) else bytes(data))

    def send_warning(self, data: bytes | str) -> None:
        send_frame(self._sock, WARNING, data.encode() if isinstance(data, str) else bytes(data))


def _idle(sock: socket.socket, runner: Any) -> None:
    """Wait for the next job; meanwhile drop the shared values callers release (sharing.py),
    so a finished map's data does not stay mapped in an idle worker."""
    links = runner.links
    while links is not None and links.filenos():
        readable, _, _ = select.select([sock, *links.filenos()], [], [])
        if sock in readable:
            return
        for link in readable:
            links.poll(link)


def task_main(fd: int, function_name: str) -> int:
    """The task process: run the jobs its worker sends, one at a time, until it goes away."""
    from .keys import load_key
    from .runner import PyexecRunner

    die_with_parent()
    sock = socket.socket(fileno=fd)
    key = load_key()
    if not key:
        return 2
    os.environ.pop("GEARNB_KEY", None)  # user code in this process does not need the key
    runner = PyexecRunner(key, function_name, worker_pid=os.getppid())
    # SIGINT stops the running task (a KeyboardInterrupt there); between tasks it is ignored.
    # Installed once: switching handlers around every task cost two system calls a task.
    running = [False]

    def on_sigint(signum: int, frame: Any) -> None:
        if running[0]:
            runner.stop(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    send_frame(sock, DATA, READY)
    reader = FrameReader(sock)
    while True:
        if not reader.buffered():
            _idle(sock, runner)
        frame = reader.next()
        if frame is None:
            return 0
        kind, head = frame
        frame = reader.next()
        if kind != JOB or frame is None:
            return 0
        handle, function, unique, server = head.split(b"\0", 3)
        job = _RelayedJob(sock, handle, function.decode(errors="replace"), unique, frame[1])
        job.server = server.decode(errors="replace")
        try:
            running[0] = True
            try:
                result = runner(job)
            finally:
                running[0] = False
            send_frame(sock, COMPLETE, result)
        except WorkException as exc:
            send_frame(sock, EXCEPTION, exc.data)
        except JobFailed:
            send_frame(sock, FAIL)
        except KeyboardInterrupt:  # stopped outside the calls themselves
            call = _call_of(job.data)
            answer = envelope.encode_failure(TaskStopped("stopped: its caller gave up on it"))
            if call is None:
                send_frame(sock, FAIL)
            else:
                send_frame(sock, EXCEPTION, runner.signer.sign_result(function, call, [answer]))
        job = frame = head = result = None  # the job's data goes now, not when the next job comes


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(task_main(int(sys.argv[1]), sys.argv[2]))
