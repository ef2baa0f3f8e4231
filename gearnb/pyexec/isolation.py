"""Each worker's tasks run in a task process of its own, so that a task that dies takes only
itself down: its job fails with :class:`~gearnb.errors.WorkerDied`, signed for its call, and
the worker's connections to its job servers stay up (no job server requeues the job, gearmand's
"requeue for ever" included).

A ``gearnb worker`` process is a :class:`Guard`; its *task process* (``python -m
gearnb.pyexec.isolation``, :func:`task_main`) is an ordinary :class:`~gearnb.worker.Worker`
that grabs and runs jobs itself - nothing is relayed, so isolation costs a job nothing but a
few writes to shared memory. What makes that safe is that the guard holds a copy of every
connection its task process opens (passed over a Unix socket), and a :class:`JobSlot` the
task process keeps up to date: which job of which server it runs, the job's call, and
whether it is in the middle of writing to a server. Order of events:

1. The guard starts the task process, handing it the connections it already holds.
2. The task process connects where it has no connection yet, and passes each new one to the
   guard; per job it marks the slot RUNNING (server, handle, then the call once verified),
   runs it, marks it IDLE, and sends the result with its next grab.
3. When the task process dies, the guard reads the slot. A job RUNNING on a connection that
   was not being written to is at a packet boundary there: the guard answers it itself
   (WORK_EXCEPTION with a signed WorkerDied saying how the process ended, or WORK_FAIL for a
   job that is not a pyexec call) and keeps that connection. Every other connection may hold
   half a packet, so the guard closes it (the task process connects again; a job a server had
   just handed over on it is requeued). TLS connections are always closed: their state lived
   in the dead process (the job server requeues the job, up to its ``--job-retries``).
4. The guard starts a fresh task process at once, handing it the connections it kept.

:meth:`Guard.stop` (a caller's request, through :mod:`.control`) stops a running task: SIGINT
(a KeyboardInterrupt in the task, which ends its chunk with TaskStopped), then SIGKILL after
``STOP_GRACE`` if it is still running the same job; its death is then answered as stopped.
"""

from __future__ import annotations

import logging
import mmap
import os
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
from typing import Any, Sequence

from ..errors import TaskStopped, WorkerDied
from ..supervisor import PARENT_ENV, describe_exit, die_with_parent
from . import envelope
from .signing import MAC_SIZE, MAGIC, PREFIX_SIZE, CallId, Signer

log = logging.getLogger("gearnb.pyexec")

# A task asked to stop gets this long to stop (SIGINT: a KeyboardInterrupt in Python code)
# before its process is killed; C code that does not check for signals never stops by itself.
STOP_GRACE = 2.0
SOCKETS_ENV = "GEARNB_TASK_SOCKETS"  # "index:fd,..." the connections a task process adopts

# The slot: one page of shared memory, written by the task process, read by its guard.
IDLE, RUNNING = 0, 1
_STATE, _SERVER, _WRITING, _HANDLE_SIZE, _CALL_SIZE, _FUNCTION_SIZE = 0, 1, 2, 3, 4, 5  # one byte each
_HANDLE = 8  # up to MAX_HANDLE bytes
MAX_HANDLE = 64  # gearmand's GEARMAND_JOB_HANDLE_SIZE, NUL included
_CALL = _HANDLE + MAX_HANDLE  # the call's MAC and header
CALL_SIZE = PREFIX_SIZE - len(MAGIC)  # MAC (32) + header (28)
_FUNCTION = _CALL + CALL_SIZE  # the Gearman function the call was signed for (its MAC covers it)
MAX_FUNCTION = 255
SLOT_SIZE = 4096


class JobSlot:
    """What the task process is doing, in memory its guard reads after it died.

    The task process writes a job's fields before it marks the job RUNNING, so a guard that
    sees RUNNING sees whole fields; ``writing`` is the connection (index + 1) a send is under
    way on, whose stream may hold half a packet if the process died meanwhile."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("gearnb-job-slot", os.MFD_CLOEXEC)
            os.ftruncate(fd, SLOT_SIZE)
        self.fd = fd
        self.memory = mmap.mmap(fd, SLOT_SIZE)

    # -- the task process (gearnb.worker.Worker and the pyexec runner call these) ----------
    def running(self, server: int, handle: bytes) -> None:
        memory = self.memory
        memory[_STATE] = IDLE
        size = min(len(handle), MAX_HANDLE)
        memory[_HANDLE:_HANDLE + size] = handle[:size]
        memory[_HANDLE_SIZE] = size
        memory[_CALL_SIZE] = 0
        memory[_SERVER] = server
        memory[_STATE] = RUNNING

    def call(self, function: bytes, payload: bytes | memoryview) -> None:
        """The running job's call (its MAC and header, and the function it was signed for),
        once the runner verified it."""
        memory = self.memory
        size = len(function)
        if size > MAX_FUNCTION:
            return  # then the guard answers a plain WORK_FAIL
        memory[_FUNCTION:_FUNCTION + size] = function
        memory[_FUNCTION_SIZE] = size
        memory[_CALL:_CALL + CALL_SIZE] = payload[len(MAGIC):PREFIX_SIZE]
        memory[_CALL_SIZE] = CALL_SIZE

    def idle(self) -> None:
        self.memory[_STATE] = IDLE

    def writing(self, server: int) -> None:
        self.memory[_WRITING] = server + 1

    def written(self) -> None:
        self.memory[_WRITING] = 0

    # -- the guard ---------------------------------------------------------------------------
    def read(self) -> tuple[int, int, bytes, tuple[bytes, CallId] | None, int]:
        """(state, server index, handle, (function, call) or None, writing: server index + 1 or 0)."""
        memory = self.memory
        handle = bytes(memory[_HANDLE:_HANDLE + memory[_HANDLE_SIZE]])
        call = None
        if memory[_CALL_SIZE] == CALL_SIZE:
            raw = bytes(memory[_CALL:_CALL + CALL_SIZE])
            function = bytes(memory[_FUNCTION:_FUNCTION + memory[_FUNCTION_SIZE]])
            call = (function, CallId(raw[:MAC_SIZE], raw[MAC_SIZE:]))
        return memory[_STATE], memory[_SERVER], handle, call, memory[_WRITING]

    def clear(self) -> None:
        self.memory[:16] = bytes(16)

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)


class Guard:
    """A ``gearnb worker`` process: it starts its task process, holds its connections,
    answers the job of a task process that died, stops tasks on request (module docstring)."""

    def __init__(self, servers: Sequence[str], key: bytes | None, argv: list[str], *, ssl_context: Any = None) -> None:
        self.servers = list(servers)
        self.signer = Signer(key) if key else None
        self.key = key  # handed to each task process in its environment (which it then forgets)
        self.argv = argv  # the task process's arguments after ``-m gearnb.pyexec.isolation``
        self.ssl_context = ssl_context
        self.slot = JobSlot()
        self.connections: dict[int, socket.socket] = {}  # server index -> our copy of the task's connection
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: socket.socket | None = None  # the task process passes its new connections here
        self.starts = 0
        self._lock = threading.Lock()  # the slot and the process, against stop() from the control thread
        self._stop_asked: tuple[int, bytes] | None = None  # (server, handle) we asked to stop
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)

    # -- the task process --------------------------------------------------------------------
    def _connect_missing(self) -> None:
        """Open the plain TCP connections the task process lacks, so it starts with them (it
        connects by itself where this fails, and always for TLS, whose state is its own)."""
        if self.ssl_context is not None:
            return
        from ..addresses import split_address

        for index, address in enumerate(self.servers):
            if index not in self.connections:
                try:
                    self.connections[index] = socket.create_connection(split_address(address), timeout=5)
                except OSError:
                    pass  # the task process tries, and keeps trying, itself

    def start_task(self) -> None:
        """Start a task process; it adopts the connections held here."""
        self._connect_missing()
        ours, theirs = socket.socketpair()
        keep = [self.slot.fd, theirs.fileno(), *(sock.fileno() for sock in self.connections.values())]
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid()),
                                  SOCKETS_ENV: ",".join(f"{i}:{s.fileno()}" for i, s in self.connections.items())})
        env.pop("GEARNB_WORKER_CHILD", None)
        env.pop("GEARNB_KEY_FILE", None)
        env.pop("GEARNB_KEY", None)
        if self.key:
            env["GEARNB_KEY"] = self.key.hex()
        self.slot.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gearnb.pyexec.isolation", str(self.slot.fd), str(theirs.fileno()), *self.argv],
            pass_fds=keep, env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        if self.channel is not None:
            self.channel.close()
        self.channel = ours
        self.starts += 1

    def run(self) -> int:
        """Until SIGTERM / Ctrl-C: keep a task process running."""
        def stop(*_: object) -> None:
            self._stopping = True
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        forwarded = False
        while True:
            if self.proc is None:
                self.start_task()
            assert self.proc is not None and self.channel is not None
            pidfd = os.pidfd_open(self.proc.pid)
            selector.register(pidfd, selectors.EVENT_READ, "died")
            selector.register(self.channel, selectors.EVENT_READ, "channel")
            died = False
            while not died:
                if self._stopping and not forwarded:
                    forwarded = True
                    self.proc.send_signal(signal.SIGTERM)  # the task finishes its job, then exits
                for key, _ in selector.select():
                    if key.data == "wake":
                        self._wake_r.recv(4096)
                    elif key.data == "channel":
                        self._adopt_passed()
                    elif key.data == "died":
                        died = True
            selector.unregister(pidfd)
            os.close(pidfd)
            selector.unregister(self.channel)
            code = self.proc.wait()
            if self._stopping:
                self.proc = None
                break
            self._task_died(code)
            self.proc = None
        for sock in self.connections.values():
            sock.close()
        return 0

    def _adopt_passed(self) -> None:
        """The task process opened a connection: keep a copy of it (or it closed the channel)."""
        assert self.channel is not None
        try:
            message, fds, _, _ = socket.recv_fds(self.channel, 64, 8)
        except OSError:
            return
        if not fds:
            return
        index = int(message.split(b":")[0])
        old = self.connections.pop(index, None)
        if old is not None:
            old.close()
        sock = socket.socket(fileno=fds[0])
        self.connections[index] = sock
        for extra in fds[1:]:
            os.close(extra)

    def _task_died(self, code: int) -> None:
        how = describe_exit(code)
        state, server, handle, call, writing = self.slot.read()
        with self._lock:
            stopped = self._stop_asked is not None and self._stop_asked == (server, handle)
            self._stop_asked = None
        keep = None
        if state == RUNNING and writing != server + 1 and server in self.connections:
            if self._answer(server, handle, call, how, stopped):
                keep = server
        for index in list(self.connections):
            if index != keep or self.ssl_context is not None:
                self.connections.pop(index).close()
        log.info("the task process %s%s%s; starting another", how,
                 f" while running job {handle!r}" if state == RUNNING else "",
                 " after it did not stop when asked" if stopped else "")

    def _answer(self, server: int, handle: bytes, call: tuple[bytes, CallId] | None, how: str, stopped: bool) -> bool:
        """Answer the job the dead task process ran, on our copy of its connection."""
        from ..protocol import PT, request

        sock = self.connections[server]
        if isinstance(sock, ssl.SSLSocket) or self.ssl_context is not None:
            return False
        if call is not None and self.signer is not None:
            function, call_id = call
            error: BaseException = TaskStopped(f"stopped: its process {how}") if stopped else WorkerDied(how)
            answer = self.signer.sign_result(function, call_id, [envelope.encode_failure(error)])
            packet = request(PT.WORK_EXCEPTION, handle, answer)
        else:  # not a pyexec call, or not verified yet: a plain failure
            packet = request(PT.WORK_FAIL, handle)
        try:
            sock.sendall(packet)
        except OSError as exc:
            log.info("could not answer job %r for its dead task process: %s", handle, exc)
            return False
        return True

    # -- stopping a task on request (the control thread) --------------------------------------
    def stop(self, server_address: str, handles: set[bytes]) -> bool:
        """Stop the task running the job ``(server, handle)`` if it is one of ``handles``: SIGINT
        now, SIGKILL after STOP_GRACE if it still runs the same job."""
        with self._lock:
            state, server, handle, _, _ = self.slot.read()
            if (state != RUNNING or server >= len(self.servers) or self.servers[server] != server_address
                    or handle not in handles or self.proc is None):
                return False
            self._stop_asked = (server, handle)
            proc = self.proc
            proc.send_signal(signal.SIGINT)
            timer = threading.Timer(STOP_GRACE, self._kill_if_still, (proc, server, handle))
            timer.daemon = True
            timer.start()
        log.info("stopping job %r of %s: its caller gave up on it", handle, server_address)
        return True

    def _kill_if_still(self, proc: subprocess.Popen[bytes], server: int, handle: bytes) -> None:
        with self._lock:
            state, now_server, now_handle, _, _ = self.slot.read()
            if proc is self.proc and proc.poll() is None and state == RUNNING and (now_server, now_handle) == (server, handle):
                proc.kill()


# -- the task process ------------------------------------------------------------------------
def task_main(argv: list[str]) -> int:
    """A task process: ``SLOT_FD CHANNEL_FD`` then ``gearnb worker``'s own arguments."""
    import argparse

    from ..launcher import load_functions
    from ..worker import Worker
    from .keys import load_key
    from .runner import PYEXEC, PyexecRunner

    die_with_parent()
    slot = JobSlot(int(argv[0]))
    channel = socket.socket(fileno=int(argv[1]))
    os.set_inheritable(channel.fileno(), False)  # a task's own children must not keep it
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers")
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--client-id")
    parser.add_argument("--job-timeout", type=float)
    parser.add_argument("--no-exception-packets", dest="exception_packets", action="store_false")
    parser.add_argument("--max-packet-size")
    for option in ("--ssl-ca", "--ssl-cert", "--ssl-key"):
        parser.add_argument(option)
    args = parser.parse_args(argv[2:])
    from ..tls import client_context_from

    context = client_context_from(args.ssl_ca, args.ssl_cert, args.ssl_key)
    worker = Worker(args.servers, client_id=args.client_id, exception_packets=args.exception_packets, slot=slot,
                    max_packet_size=args.max_packet_size, ssl=context)

    def passed(index: int, sock: socket.socket) -> None:
        try:
            socket.send_fds(channel, [b"%d:" % index], [sock.fileno()])
        except OSError as exc:
            log.warning("could not hand connection %d to the worker: %s", index, exc)

    worker.on_connect = passed
    for entry in filter(None, os.environ.pop(SOCKETS_ENV, "").split(",")):
        index, fd = map(int, entry.split(":"))
        worker.adopt(index, socket.socket(fileno=fd))
    key = load_key()
    os.environ.pop("GEARNB_KEY", None)  # user code in the task process does not need the key
    runner = None
    if key:
        runner = PyexecRunner(key, slot=slot, worker_pid=os.getppid(), ssl=context)  # the guard: its worker
        worker.register(PYEXEC, runner, timeout=args.job_timeout)
    load_functions(worker, args.imports)
    links = runner.links if runner is not None else None
    if links is not None:  # asleep, still drop the shared memory callers release
        worker.extra_readers = lambda: [(link, lambda link=link: links.poll(link)) for link in links.filenos()]

    def interrupt(signum: int, frame: Any) -> None:
        # The guard asks a running pyexec task to stop; anything else goes on.
        if runner is not None and slot.read()[0] == RUNNING:
            runner.stop(signum, frame)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.work(handle_signals=False)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(task_main(sys.argv[1:]))
