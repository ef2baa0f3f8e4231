"""The worker side of pyexec: verify, admit, unpack, call, capture output, answer.

Registered on every gearnb worker as the Gearman function ``pyexec``. For each job, in this
order: the call's signature (:meth:`Signer.verify_call`), the replay guard (fresh, not run
here before: :class:`ReplayGuard`) - nothing is unpacked before both pass; then the envelope,
the function (cached by digest), the calls, each with its output going to the caller through
a :class:`~gearnb.pyexec.taskio.TaskChannel` (tagged with the call, batched, cut at the call's
output limit); the answer is signed over the call's identity and carries when the calls ran
and where (:data:`TIMING`). A refusal goes back as plain unsigned text (WORK_EXCEPTION), which
callers show, never unpickle.

Inside a task, :func:`task_cluster` names the cluster running it, so that ``gearnb.map`` and
``gearnb.submit`` there use it (nested maps) rather than start a cluster of their own.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, NamedTuple

from ..errors import TaskStopped, WorkException
from ..buffers import BufferList
from ..worker import Job
from . import envelope, sharing
from .replay import NotRun, ReplayGuard
from .signing import MAC_SIZE, MAGIC, PREFIX_SIZE, CallId, RefusedPayload, Signer
from .taskio import TaskChannel
from .usercode import ModuleWatch

log = logging.getLogger("gearnb.pyexec")

PYEXEC = "pyexec"
# Functions kept unpickled per worker, by digest. A sweep uses a handful; 256 bounds memory
# for a long-lived worker that sees many notebooks' functions...
FUNCTION_CACHE_SIZE = 256
# ...and so do the bytes of the arrays they capture, when those came in the job rather than
# shared (a function's shared buffers are dropped when its caller releases them, at the end of
# its map): a few 200 MB captured datasets.
FUNCTION_CACHE_BYTES = 1 << 30
# The result field saying when the job's calls ran and where:
# [start, end (time.time() of the worker's host), host, worker pid, task process pid].
TIMING = "tm"
HOST = socket.gethostname()



class TaskCluster(NamedTuple):
    """The cluster running a task, as the task sees it (see :func:`task_cluster`)."""

    servers: list[str]  # the job server that handed out the task
    key: bytes
    worker: str  # "host:pid" of the worker running the task, as its results' timings name it
    ssl: Any = None  # the worker's TLS context: a nested map connects as the worker does


_current: TaskChannel | None = None  # the channel of the job this process is running, for report()
# The cluster running the current task, for nested maps, and the thread running it (None in a
# task process of its own, where every thread belongs to the task).
_cluster: tuple[TaskCluster, int | None] | None = None


def report(done: int, total: int) -> None:
    """Inside a task: tell the caller how far along it is (sends Gearman WORK_STATUS).

    Outside a gearnb worker it does nothing, so the same function runs locally too.
    """
    channel = _current
    if channel is not None:
        channel.send_status(done, total)


def task_cluster() -> TaskCluster | None:
    """Inside a task: the job server that handed it out and the cluster key, which
    ``gearnb.map`` / ``submit`` in the task use (nested maps). None outside a task."""
    cluster = _cluster
    if _current is None or cluster is None:
        return None
    found, thread = cluster
    if thread is not None and thread != threading.get_ident():
        return None  # a worker thread in this process runs a task; this thread is not it
    return found


class _Deliver:
    """The sharer of a result (an :class:`~gearnb.pyexec.envelope.Sharer`): a large buffer goes
    to the caller's value store, tagged with the call's nonce, or inline if it is out of reach."""

    __slots__ = ("links", "store", "nonce")

    def __init__(self, links: sharing.StoreLinks, store: bytes, nonce: bytes) -> None:
        self.links, self.store, self.nonce = links, store, nonce

    def share(self, raw: memoryview, pin: bool = False) -> list[Any] | None:
        return self.links.deliver(self.store, self.nonce, [raw])


class PyexecRunner:
    """Callable as a worker function: ``worker.register("pyexec", PyexecRunner(key))``."""

    def __init__(self, key: bytes, function_name: str = PYEXEC, slot: Any = None, *,
                 worker_pid: int | None = None, ssl: Any = None) -> None:
        self.signer = Signer(key)
        self.ssl = ssl  # the worker's TLS context, for nested maps: task_cluster()
        # In a task process: the guard's JobSlot, told each job's call once it is verified, so
        # the guard can answer for the call if this process dies (isolation.py).
        self.slot = slot
        self._key = key  # for nested maps: task_cluster()
        # In a task process (gearnb.pyexec.isolation): its guard's pid, the worker a result's
        # timing names; a runner in a worker process of its own runs tasks on its own thread.
        self.worker_pid = worker_pid
        self._pids = (worker_pid or os.getpid(), os.getpid())  # for the timing of every result
        self.channel = TaskChannel()
        self.function_name = function_name.encode()
        # digest -> (function, tokens of its shared buffers, bytes of its buffers sent inline)
        self.functions: OrderedDict[bytes, tuple[Any, frozenset[bytes], int]] = OrderedDict()
        self._function_bytes = 0
        self.replay_guard = ReplayGuard()
        self.module_watch = ModuleWatch()  # edited files of modules tasks imported by name
        # Connections to callers' value stores (large values through shared memory, pyexec/sharing/).
        self.links = sharing.StoreLinks() if sharing.available() else None
        if self.links is not None:
            self.links.on_release = self._released
        self.stop_requested = False  # see stop()

    def __call__(self, job: Job) -> bytes | BufferList:
        self.stop_requested = False
        try:
            return self._answer(job)
        except KeyboardInterrupt:
            if not self.stop_requested:
                raise
            # Stopped outside its calls (decoding, encoding): the whole job is answered so.
            raise self._stopped(job) from None

    def _stopped(self, job: Job) -> WorkException:
        """The answer of a job stopped on its caller's request, signed for its call."""
        data = job.data
        if len(data) < PREFIX_SIZE or not data.startswith(MAGIC):
            return WorkException(b"gearnb worker: stopped: its caller gave up on it")
        call = CallId(bytes(data[len(MAGIC):len(MAGIC) + MAC_SIZE]), bytes(data[len(MAGIC) + MAC_SIZE:PREFIX_SIZE]))
        error = TaskStopped("stopped: its caller gave up on it")
        return WorkException(self.signer.sign_result(job.function.encode(), call, [envelope.encode_failure(error)]))

    def _answer(self, job: Job) -> bytes | BufferList:
        name = job.function.encode()
        try:
            body, call = self.signer.verify_call(name, job.data)
            if self.slot is not None:
                self.slot.call(name, job.data)
            self.replay_guard.admit(call, job.handle)
        except NotRun as exc:
            log.warning("did not run job %r: %s", job.handle, exc)
            # A genuine call: the answer is signed for it, so its caller can trust it and send
            # the work again as a new call; a replayer gets nothing it can use.
            answer = envelope.encode_not_run(f"gearnb worker did not run the job: {exc}")
            raise WorkException(self.signer.sign_result(name, call, [answer])) from None
        except RefusedPayload as exc:
            log.warning("refused job %r: %s", job.handle, exc)
            # Plain text, unsigned: the caller shows it, never unpickles it.
            raise WorkException(f"gearnb worker refused the job: {exc}".encode()) from None
        if self.links is not None:
            self.links.poll()  # values its callers released meanwhile
        started_ns = time.time_ns()  # file times are wall-clock times
        try:
            if self.module_watch.drop_changed():
                self.functions.clear()  # they may hold the old modules' objects
                self._function_bytes = 0
            msg = envelope.decode_call(body)
            store = msg.get("sa")
            try:
                tokens = envelope.resolve_shared(msg, None if self.links is None or store is None
                                                 else lambda ref: self.links.fetch(store, ref))  # type: ignore[union-attr]
            except sharing.SharedUnavailable as exc:
                log.info("job %r: %s; asking for it inline", job.handle, exc)
                return self.signer.sign_result(name, call, [envelope.encode_need_inline(str(exc))])
            fn = self._function(msg, tokens)
            if fn is None:
                return self.signer.sign_result(name, call, [envelope.encode_need_code()])
            columns = envelope.call_columns(msg)
            calls = envelope.call_arguments(msg) if columns is None else columns
            options = msg.get("o")
            limit = options.get("ol") if isinstance(options, dict) else None
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            if isinstance(exc, ModuleNotFoundError):
                exc = ModuleNotFoundError(
                    f"{exc} on the worker: workers import installed packages from their own Python; install "
                    f"it where the workers run. Your own modules (outside site-packages) travel with the "
                    f"call once the caller has imported them", name=exc.name)
            raise WorkException(self.signer.sign_result(name, call, [envelope.encode_failure(exc)])) from None
        try:
            result = self._run(job, fn, calls, columns is not None, self._result_sharer(store, call), limit)
        except TaskStopped as exc:
            raise WorkException(self.signer.sign_result(name, call, [envelope.encode_failure(exc)])) from None
        finally:
            self.module_watch.note_imported(started_ns)  # what this job imported, as its files are now
        if not msg.get("ch") and 0 in result[1]:
            # A single call that raised: WORK_EXCEPTION, so Gearman tools see a failure.
            raise WorkException(self.signer.sign_result(name, call, result[2]))
        parts = result[2]
        # A large result goes out in pieces, its array data not copied: the worker sends it
        # before anything can change it.
        if len(parts) > 1:
            return self.signer.signed_result_parts(name, call, parts)
        return self.signer.sign_result(name, call, parts)

    def _function(self, msg: dict[str, Any], tokens: dict[int, bytes]) -> Any:
        digest = msg["fd"]
        entry = self.functions.get(digest)
        if entry is not None:
            self.functions.move_to_end(digest)
            return entry[0]
        if msg.get("fc") is None:
            return None
        fn = envelope.load_function(msg)
        own = msg.get("zb", ())[:msg.get("fn", 0)]  # the function's buffers come first
        shared = frozenset(tokens[i] for i in range(len(own)) if i in tokens)
        inline = sum(memoryview(own[i]).nbytes for i in range(len(own)) if i not in tokens)
        self.functions[digest] = (fn, shared, inline)
        self._function_bytes += inline
        while len(self.functions) > FUNCTION_CACHE_SIZE or (
                self._function_bytes > FUNCTION_CACHE_BYTES and len(self.functions) > 1):
            self._function_bytes -= self.functions.popitem(last=False)[1][2]
        return fn

    def _released(self, tokens: set[bytes]) -> None:
        """Callers released shared values: forget the functions that captured them."""
        for digest in [d for d, (_, shared, _) in self.functions.items() if shared & tokens]:
            self._function_bytes -= self.functions.pop(digest)[2]

    def _result_sharer(self, store: Any, call: CallId) -> _Deliver | None:
        """Where a large result goes: the caller's value store, if this process reaches it."""
        if self.links is None or not isinstance(store, bytes):
            return None
        return _Deliver(self.links, store, call.nonce)

    def _run(self, job: Job, fn: Any, calls: Any, columns: bool = False, sharer: Any = None,
             output_limit: int | None = None) -> tuple[list[Any], dict[int, Any], list[Any]]:
        """Call ``fn`` on each of ``calls`` (``(args, kwargs)`` pairs, or with ``columns`` the
        argument columns of a map chunk); returns values, error records and the result body.

        Whatever a call raises is that call's error, ``BaseException`` included (``sys.exit``,
        a KeyboardInterrupt raised by the task itself): the worker carries on. A stop asked for
        by the caller (:meth:`stop`, SIGINT in a task process) ends the whole chunk."""
        global _current, _cluster
        values: list[Any] = []
        errors: dict[int, dict[str, Any]] = {}
        channel = self.channel
        channel.begin(job, output_limit)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = channel.stdout, channel.stderr
        server = getattr(job, "server", "")
        if server:
            _cluster = (TaskCluster([server], self._key, f"{HOST}:{self._pids[0]}", self.ssl),
                        None if self.worker_pid else threading.get_ident())
        _current = channel
        started = time.time()
        try:
            if not columns:
                for index, (args, kwargs) in enumerate(calls):
                    channel.current = index
                    try:
                        values.append(fn(*args, **kwargs))
                    except BaseException as exc:  # noqa: BLE001 - goes back to the caller
                        values.append(self._failed(index, exc, errors))
            elif len(calls) == 1:  # map(fn, items): the common case, one argument per call
                append = values.append
                for index, item in enumerate(calls[0]):
                    channel.current = index
                    try:
                        append(fn(item))
                    except BaseException as exc:  # noqa: BLE001 - goes back to the caller
                        append(self._failed(index, exc, errors))
            else:
                for index, args in enumerate(zip(*calls)):
                    channel.current = index
                    try:
                        values.append(fn(*args))
                    except BaseException as exc:  # noqa: BLE001 - goes back to the caller
                        values.append(self._failed(index, exc, errors))
        finally:
            ended = time.time()
            _current = None
            sys.stdout, sys.stderr = saved
            channel.end()
        timing = [started, ended, HOST, *self._pids]
        try:
            body = envelope.encode_result_parts(values, errors, sharer, {TIMING: timing})
        except Exception as exc:  # noqa: BLE001 - a result that does not serialise
            errors = {i: envelope.error_record(exc) for i in range(len(values))}
            body = envelope.encode_result_parts([None] * len(values), errors, extra={TIMING: timing})
        return values, errors, body

    def _failed(self, index: int, exc: BaseException, errors: dict[int, dict[str, Any]]) -> None:
        """Record call ``index``'s exception; a stop the caller asked for ends the chunk."""
        if self.stop_requested:
            raise TaskStopped("stopped: its caller gave up on it") from None
        errors[index] = envelope.error_record(exc, skip_frames=1)  # from the user's function on

    def stop(self, signum: int = 0, frame: Any = None) -> None:
        """Stop the running task: a KeyboardInterrupt in it, and no further call of its chunk
        (a SIGINT handler in a task process; callable from the thread running the task)."""
        self.stop_requested = True
        raise KeyboardInterrupt
