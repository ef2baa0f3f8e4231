"""What ``submit()`` and ``map()`` share: a function's calls sent as chunks, and how a chunk's
answer settles into values, errors and retries.

A :class:`Chunk` is one pyexec job (one Gearman job): the calls of items ``indices``. A
:class:`Run` owns the function (pickled once), sends its chunks through the executor's
:class:`~gearnb.executor.calls.PyexecCalls`, and decides in :meth:`Run.settle` - the one
place for it - what an ended chunk means: values, item errors to raise, items to retry
(``retries``), the whole chunk to send again (the worker needs the function's code; a full
server queue). Order of calls: ``Run.send(chunks)`` -> each chunk's job ends on the I/O thread
-> ``Run.chunk_ended(chunk)`` -> ``Run.settle(chunk)`` on the thread that consumes the run:
the thread iterating a map (:class:`~gearnb.executor.mapping.MapRun`, so decoding is the
caller's CPU work), or the I/O thread itself for a ``submit()`` (:class:`CallRun`: no thread
waits for it).

While a chunk runs, its worker's WORK_DATA batches (:mod:`gearnb.pyexec.taskio`) come to
``Chunk.event`` on the I/O thread: the output goes to :meth:`Run.show_output` (each line tagged
with its item) and the count of items done to the progress. A settled chunk's worker timing
goes to the run's task stream (:meth:`Run.record`). Inside a task, a run whose jobs no worker
takes runs them itself (:meth:`Run.take_back_and_run`, see ``HELP_AFTER``).
"""

from __future__ import annotations

import contextvars
import io
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from ..client.submission import EV_DATA, EV_END, EV_STATUS, EV_WARNING, Submission
from ..errors import PacketTooLarge, ServerError, WorkerDied
from ..pyexec import envelope, taskio
from ..pyexec.runner import HOST, task_cluster
from ..pyexec.sharing import RunShares
from ..pyexec.signing import RefusedPayload
from ..visual.stream import TaskRecord, TaskStream
from ..worker_text import shown
from .modules import function_blob

if TYPE_CHECKING:
    import concurrent.futures

    from .calls import PyexecCalls

SMALL_CODE = 8 * 1024  # bytes of pickled function that always travel with every chunk
# A task whose process dies is tried this many times in all, each time in a fresh process, as
# dask does (distributed.scheduler.allowed-failures): a crash is often the task's own doing.
DEFAULT_CRASH_ATTEMPTS = 3
# Inside a task (a nested map, or future.result()), the caller is one of its cluster's tasks:
# when none of its jobs ended for this long, it takes a queued one back from the job server and
# runs it itself (Run.take_back_and_run). Tasks that wait for jobs of their own cluster would
# otherwise deadlock it once every worker runs one; this way they always finish, in parallel as
# far as workers are free. Short: the waiting task's process has nothing else to do.
HELP_AFTER = 0.1
# The task stream's lane for runs whose task process died: they carry no worker timing, so
# their bars are the caller's view (sent -> answered).
LOST_LANE = "(task process died)"

# A settled piece of a run: (first index, values of consecutive indices, {offset: exception}).
Piece = tuple[int, list[Any], dict[int, BaseException]]


class Chunk:
    """One pyexec job of a run: the calls of the items at ``indices`` (a range, or a list for
    a retry), their positional arguments as ``columns`` (one list per argument position) and,
    for a single ``submit()`` call, its keyword arguments (``kwargs``; None for a map)."""

    __slots__ = ("run", "indices", "columns", "kwargs", "attempts", "crashes", "sub", "with_code", "call",
                 "inline", "tokens", "sent_at", "local")

    def __init__(self, run: Run, indices: Sequence[int], columns: list[list[Any]],
                 kwargs: dict[str, Any] | None = None) -> None:
        self.run = run
        self.indices = indices
        self.columns = columns
        self.kwargs = kwargs
        self.attempts = 0  # retries after an exception (``retries``)
        self.crashes = 0  # times the process running it died (``crash_attempts``)
        self.sub: Submission | None = None
        self.with_code = False
        self.call = None  # the CallId of its latest job: only that call's result is accepted
        self.inline = False  # its worker could not reach shared memory: buffers go in the job
        self.tokens: list[bytes] = []  # the shared values its job carries (pyexec/sharing/)
        self.sent_at = 0.0  # time.time() when its latest job was sent
        self.local: tuple[list[Any], dict[int, BaseException], list[Any]] | None = None  # run here: see Run.help

    def event(self, sub: Submission, event: int, argument: Any) -> None:
        """The listener of this chunk's job (on the I/O thread)."""
        if sub is not self.sub:
            return  # a job this chunk sent earlier (before a resend)
        run = self.run
        if event == EV_END:
            run.chunk_ended(self)
        elif event == EV_DATA:
            done, records = taskio.decode_batch(argument)
            if records:
                run.show_output(self, records)
            if done is not None and run.progress_running is not None:
                run.progress_running(sub, done, len(self.indices))
        elif event == EV_WARNING:  # stderr of a gearnb worker from before batches
            run.show_output(self, [(0, taskio.STDERR, argument)])
        elif event == EV_STATUS and run.progress is not None:
            run.progress.status(sub, *argument)


class Settled(NamedTuple):
    """What an ended chunk came to (see :meth:`Run.settle`)."""

    pieces: list[Piece]  # items settled, with their values or errors
    resend: list[Chunk]  # chunks to send again: items to retry, or the same chunk with its code
    backlog: bool = False  # the server's queue was full: send this chunk again later


def noted(exc: BaseException, index: int) -> BaseException:
    """Say which item of the map failed (a note under the traceback, Python >= 3.11)."""
    if hasattr(exc, "add_note") and not getattr(exc, "_gearnb_noted", False):
        exc.add_note(f"(raised by item #{index} of the map)")
        exc._gearnb_noted = True  # type: ignore[attr-defined]
    return exc


def _pieces(indices: Sequence[int], values: list[Any], errors: dict[int, BaseException],
            skip: set[int]) -> list[Piece]:
    """The settled items of a chunk as runs of consecutive indices (``skip``: positions retried)."""
    if not errors and type(indices) is range and len(values) == len(indices):
        return [(indices.start, values, {})]  # the usual case: the whole chunk, as it came
    pieces: list[Piece] = []
    for i, index in enumerate(indices):
        if i in skip:
            continue
        if pieces and pieces[-1][0] + len(pieces[-1][1]) == index:
            piece = pieces[-1]
        else:
            piece = (index, [], {})
            pieces.append(piece)
        if i in errors:
            piece[2][len(piece[1])] = errors[i]
            piece[1].append(None)
        else:
            piece[1].append(values[i] if i < len(values) else None)
    return pieces


class Run:
    """One function's calls, sent as chunks; see the module docstring."""

    single = False  # one call (submit): its output is tagged without an item number
    stream: TaskStream | None = None  # where a map records its tasks' runs
    progress_running: Callable[[Any, int, int], None] | None = None  # the progress's per-item report

    def __init__(self, calls: PyexecCalls, fn: Callable[..., Any], *, retries: int = 0,
                 priority: str = "normal", progress: Any = None, code_sends: int = 1,
                 crash_attempts: int = DEFAULT_CRASH_ATTEMPTS, output_limit: int | None = None) -> None:
        self.calls = calls
        self.crash_attempts = max(1, crash_attempts)
        self.blob = function_blob(fn)
        self.label = getattr(fn, "__name__", None) or type(fn).__name__
        self.retries = retries
        self.priority = priority
        self.progress = progress
        # How the workers run the calls: only what differs from their defaults travels.
        limit = calls.output_limit if output_limit is None else output_limit
        self.options = None if limit == taskio.DEFAULT_OUTPUT_LIMIT else {"ol": int(limit)}
        self.context = contextvars.copy_context()  # worker output goes to the calling cell
        self.printed = False
        # The function's code goes with the first chunks, enough for each worker to see it
        # once (a worker without it answers "need code" and the chunk makes a second trip);
        # small code always goes along, which costs less than that trip.
        self.code_sends_left = (1 << 62) if self.blob.size <= SMALL_CODE else code_sends
        # Large values this run shares through memory with workers on this host, each once
        # (pyexec/sharing/): held while a chunk in flight carries them, the function's
        # captured arrays until the run ends (release_shared).
        store = calls.store
        self.shares = None if store is None else RunShares(store)
        self._release_after_send: list[bytes] = []

    def send(self, chunks: list[Chunk]) -> None:
        """Encode, sign and submit ``chunks`` (in one hand-over to the I/O thread)."""
        jobs = []
        now = time.time()
        shares = self.shares
        for chunk in chunks:
            with_code = chunk.with_code or self.code_sends_left > 0
            self.code_sends_left -= 1
            sharer = None if shares is None or chunk.inline else shares.for_chunk()
            carried = chunk.tokens
            try:
                chunk.sub = self.calls.job(self.blob, chunk, with_code, self.priority, chunk.event, sharer,
                                           self.options)
            except BaseException:  # an argument that does not pickle: the run ends here
                if shares is not None:
                    shares.close()
                raise
            chunk.sent_at = now
            jobs.append(chunk.sub)
            chunk.tokens = [] if sharer is None else sharer.tokens
            if sharer is not None:
                shares.carried(sharer.tokens)  # type: ignore[union-attr]
            if carried and shares is not None:  # the same chunk sent again: what it carried before
                shares.settled(carried)
        if self._release_after_send and shares is not None:
            shares.settled(self._release_after_send)  # a settled chunk's, once its retries carry them
            self._release_after_send = []
        self.calls.submit(jobs)

    def chunk_ended(self, chunk: Chunk) -> None:  # on the I/O thread
        raise NotImplementedError

    # -- output ------------------------------------------------------------------------------
    def show_output(self, chunk: Chunk, records: list[taskio.Record]) -> None:
        """A batch of a chunk's output (on the I/O thread): each line tagged with the item that
        printed it, a batch's lines written together (one write per stream)."""
        if not self.calls.show_output:
            return
        label, indices = self.label, chunk.indices
        out: list[str] = []
        err: list[str] = []
        for offset, stream, data in records:
            if self.single:
                tag = f"[{label}] "
            else:
                tag = f"[{label} #{indices[offset] if 0 <= offset < len(indices) else indices[0]}] "
            lines = shown(data).splitlines(keepends=True)
            block = tag + tag.join(lines)
            if lines and not lines[-1].endswith("\n"):
                block += "\n"
            (err if stream == taskio.STDERR else out).append(block)
        self.printed = True
        self.calls.print_output(self.context, "".join(out), "".join(err))

    def flush_output(self) -> None:
        """Send what the run printed to the cell now (at its end), not a stream's interval later."""
        if self.printed:
            self.printed = False
            self.calls.flush_output(self.context)

    # -- outcomes ----------------------------------------------------------------------------
    def settle(self, chunk: Chunk) -> Settled:
        """Decode an ended chunk; say what is settled and what must be sent again."""
        settled = self._decide(chunk)
        if chunk.tokens and self.shares is not None and not settled.backlog \
                and not any(again is chunk for again in settled.resend):
            # Its shared values are free once no chunk in flight carries them; retries (new
            # chunks, sent next) carry the same objects, so those wait for that send.
            if settled.resend:
                self._release_after_send.extend(chunk.tokens)
            else:
                self.shares.settled(chunk.tokens)
            chunk.tokens = []
        return settled

    def release_shared(self, chunks: list[Chunk]) -> None:
        """The run ended (or gave up on ``chunks``): results they may still deliver are closed,
        and every value the run shared is released (its workers drop their mappings)."""
        store = self.calls.store
        if store is not None:
            for chunk in chunks:
                if chunk.call is not None:
                    store.forget(chunk.call.nonce)
        if self.shares is not None:
            self.shares.close()

    def _decide(self, chunk: Chunk) -> Settled:
        sub = chunk.sub
        try:
            if chunk.local is not None:  # taken back from the job server and run here
                values, errors, timing = chunk.local
            else:
                assert sub is not None
                values, errors, timing = self.calls.outcome(sub, chunk.call)
        except envelope.NeedInline:
            chunk.inline = True
            return Settled([], [chunk])
        except envelope.NeedCode:
            chunk.with_code = True
            return Settled([], [chunk])
        except WorkerDied as died:
            self.record(chunk, None, {0: died})
            return self._died(chunk, died)
        except BaseException as exc:  # the whole chunk failed (job failed, refused, no server)
            if isinstance(exc, ServerError) and exc.code == "QUEUE_ERROR":
                return Settled([], [], backlog=True)
            values, errors, timing = [None] * len(chunk.indices), {i: exc for i in range(len(chunk.indices))}, None
        self.record(chunk, timing, errors)
        retry = [i for i in sorted(errors) if chunk.attempts < self.retries and _retryable(errors[i])]
        pieces = _pieces(chunk.indices, values, errors, set(retry))
        if not retry:
            return Settled(pieces, [])
        again = Chunk(self, [chunk.indices[i] for i in retry], [[column[i] for i in retry] for column in chunk.columns],
                      chunk.kwargs)
        again.attempts = chunk.attempts + 1
        return Settled(pieces, [again])

    # -- inside a task: helping -----------------------------------------------------------
    def take_back_and_run(self, chunk: Chunk) -> bool:
        """Inside a task: take ``chunk``'s job back from its job server if no worker has it yet
        (admin ``cancel job``) and run its calls in this process; True if it was. Its result is
        then ``chunk.local``, settled like an answer."""
        sub = chunk.sub
        if sub is None or sub.finished or chunk.local is not None:
            return False
        if not self.calls.cancel([sub])[0]:
            return False  # a worker runs it: its answer will come
        chunk.sub = None  # whatever the server still says of that job is not this chunk's
        fn, kwargs = self.blob.fn, chunk.kwargs or {}
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        started = time.time()
        saved = sys.stdout, sys.stderr
        for i, args in enumerate(zip(*chunk.columns)):
            # Its output is tagged with its item, as a worker's would be (show_output).
            sys.stdout, sys.stderr = out, err = io.StringIO(), io.StringIO()
            try:
                values.append(fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - the item's error, as from a worker
                values.append(None)
                errors[i] = exc
            finally:
                sys.stdout, sys.stderr = saved
            records = [(i, stream, text.getvalue().encode(errors="replace"))
                       for stream, text in ((taskio.STDOUT, out), (taskio.STDERR, err)) if text.getvalue()]
            if records:
                self.show_output(chunk, records)
        cluster = task_cluster()
        host, _, worker_pid = (cluster.worker if cluster else f"{HOST}:{os.getpid()}").rpartition(":")
        chunk.local = (values, errors, [started, time.time(), host, worker_pid, os.getpid()])
        return True

    def record(self, chunk: Chunk, timing: list[Any] | None, errors: dict[int, BaseException]) -> None:
        """Add the run of ``chunk`` to the task stream: the worker's own times and identity;
        a task whose process died has none, and gets the caller's (on a lane of its own)."""
        stream = self.stream
        if stream is None:
            return
        indices = chunk.indices
        task = f"#{indices[0]}" if len(indices) == 1 else f"#{indices[0]}-{indices[-1]}"
        error = ""
        if errors:
            first = errors[min(errors)]
            error = type(first).__name__
        attempt = 1 + chunk.attempts + chunk.crashes
        try:
            start, end, host, worker_pid, task_pid = timing  # type: ignore[misc]
            worker, process = f"{host}:{worker_pid}", f"{host}:{task_pid}"
            start, end = float(start), max(float(end), float(start))
        except (TypeError, ValueError):
            start, end = chunk.sent_at, max(time.time(), chunk.sent_at)
            worker, process = LOST_LANE, ""
        stream.add(TaskRecord(task, worker, start, end, ok=not errors, attempt=attempt, error=error,
                              items=len(indices), process=process))

    def _died(self, chunk: Chunk, died: WorkerDied) -> Settled:
        """The process running the chunk died: try again in a fresh one, each item on its own
        (so one that kills its process is found and the others are not lost with it), until
        an item has crashed ``crash_attempts`` times: then it fails with WorkerDied."""
        crashes = chunk.crashes + 1
        if len(chunk.indices) > 1 or crashes < self.crash_attempts:
            parts = []
            for i in range(len(chunk.indices)):
                part = Chunk(self, [chunk.indices[i]], [[column[i]] for column in chunk.columns], chunk.kwargs)
                part.attempts, part.crashes = chunk.attempts, crashes
                parts.append(part)
            return Settled([], parts)
        error = WorkerDied(died.how, crashes)
        return Settled([(chunk.indices[0], [None], {0: error})], [])


def _retryable(exc: BaseException) -> bool:
    """Running it again cannot help a payload the worker refused or cannot read, or one too large."""
    return not isinstance(exc, (envelope.VersionMismatch, RefusedPayload, PacketTooLarge))


class CallRun(Run):
    """One ``submit(fn, *args, **kwargs)``: a run of one chunk of one call, settled on the I/O
    thread into its future."""

    single = True

    def __init__(self, calls: PyexecCalls, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], future: concurrent.futures.Future, *, retries: int = 0,
                 priority: str = "normal", crash_attempts: int = DEFAULT_CRASH_ATTEMPTS,
                 output_limit: int | None = None) -> None:
        super().__init__(calls, fn, retries=retries, priority=priority, crash_attempts=crash_attempts,
                         output_limit=output_limit)
        self.future = future
        self.chunk = Chunk(self, range(1), [[arg] for arg in args], kwargs)
        future.add_done_callback(lambda _: self.release_shared([self.chunk]))
        # cancel() and the I/O thread meet here: an end that arrives while a cancel is being
        # tried waits for its answer (a cancelled job's WORK_FAIL must not fail the future).
        self._lock = threading.Lock()
        self._cancelling = False
        self._ended_while_cancelling: Chunk | None = None

    def start(self) -> None:
        self.send([self.chunk])

    @property
    def job(self) -> Submission | None:
        return self.chunk.sub

    def chunk_ended(self, chunk: Chunk) -> None:  # on the I/O thread
        with self._lock:
            if self._cancelling:
                self._ended_while_cancelling = chunk
                return
        self._settle_into_future(chunk)

    def _settle_into_future(self, chunk: Chunk) -> None:
        if self.future.done():
            return
        try:
            settled = self.settle(chunk)
        except BaseException as exc:  # noqa: BLE001 - delivered to the future
            self.future.set_exception(exc)
            return
        if settled.resend:
            self.chunk = settled.resend[0]
            self.send(settled.resend)
            return
        self.flush_output()  # the call's output reaches the cell before its result
        if settled.backlog:  # a full queue fails a single call at once
            assert chunk.sub is not None and chunk.sub.error is not None
            self.future.set_exception(chunk.sub.error)
            return
        (_, values, errors), = settled.pieces
        if errors:
            self.future.set_exception(errors[0])
        else:
            self.future.set_result(values[0])

    def cancel(self, force: bool = False) -> bool:
        """Drop the call's job from its server's queue if no worker took it yet; with
        ``force``, also stop it where it runs."""
        return cancel_calls([self], force)[0]

    def help(self) -> bool:
        """Inside a task: run the call here if no worker has taken it yet (see HELP_AFTER)."""
        chunk = self.chunk
        if self.future.done():
            return False
        with self._lock:  # as cancel_calls: the end of a job taken back is not the call's end
            self._cancelling = True
        taken = False
        try:
            taken = self.take_back_and_run(chunk)
        finally:
            with self._lock:
                self._cancelling = False
                ended, self._ended_while_cancelling = self._ended_while_cancelling, None
            if ended is not None and not taken:
                self._settle_into_future(ended)
        if taken:
            self._settle_into_future(chunk)
        return taken


def cancel_calls(runs: list[CallRun], force: bool = False) -> list[bool]:
    """Cancel the queued jobs of several submit() calls together (one admin round trip per
    job server); True for each whose job was dropped before a worker took it. With ``force``,
    jobs already running are stopped on their workers too, and count as cancelled."""
    for run in runs:
        with run._lock:
            run._cancelling = True
    dropped = [False] * len(runs)
    try:
        live = [i for i, run in enumerate(runs) if run.chunk.sub is not None and not run.chunk.sub.finished]
        if live:
            answers = runs[0].calls.cancel([runs[i].chunk.sub for i in live], stop_running=force)  # type: ignore[misc]
            for i, answer in zip(live, answers):
                dropped[i] = answer or force
    finally:
        for i, run in enumerate(runs):
            with run._lock:
                run._cancelling = False
                ended, run._ended_while_cancelling = run._ended_while_cancelling, None
            if ended is not None and not dropped[i]:  # it ended meanwhile, for real: settle it
                run._settle_into_future(ended)
    return dropped
