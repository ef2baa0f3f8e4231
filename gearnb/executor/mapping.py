"""The map engine behind map / imap / imap_unordered / Executor.map.

The calling thread does the CPU work (chunking, encoding, decoding), the I/O thread only
moves bytes. At most ``window`` jobs are in flight, so an input iterator is consumed lazily
and a million-item map does not build a million jobs up front.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import queue
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from ..client.task import Task
from ..errors import ServerError
from ..pyexec import envelope
from ..pyexec.envelope import FunctionBlob

if TYPE_CHECKING:
    from .executor import Executor

# Jobs kept in flight per map. Enough to keep a few dozen workers busy and to hide the
# round trip; small enough that Ctrl-C has little to cancel and memory stays flat.
DEFAULT_WINDOW = 1024
# chunksize="auto": about this many chunks per worker, so a slow chunk does not leave the
# others idle at the end (joblib and multiprocessing use 4 as well)...
CHUNKS_PER_WORKER = 4
# ...but no chunk above this many items, so progress stays visible and retries cheap.
MAX_AUTO_CHUNK = 20_000
UNSIZED_AUTO_CHUNK = 256  # an input without len(): chunks of this size
SMALL_CODE = 8 * 1024  # bytes of pickled function that always travel with every chunk
PROGRESS_POLL = 0.1  # seconds between progress redraws while waiting (10 per second at most)
# A job server whose queue is full (gearmand's maxqueue) answers QUEUE_ERROR: wait, then send
# the refused chunks again with fewer in flight. 50 ms doubling to 1 s.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0


class Chunk:
    """One Gearman job of a map: the items at ``indices`` (a range, or a list for a retry),
    their arguments as ``columns`` (one list per argument position)."""

    __slots__ = ("indices", "columns", "attempts", "task", "with_code")

    def __init__(self, indices: Sequence[int], columns: list[list[Any]]) -> None:
        self.indices = indices
        self.columns = columns
        self.attempts = 0
        self.task: Task | None = None
        self.with_code = False


# A settled piece of a map: (first index, values of consecutive indices, {offset: exception}).
Run = tuple[int, list[Any], dict[int, BaseException]]


def _noted(exc: BaseException, index: int) -> BaseException:
    """Say which item of the map failed (a note under the traceback, Python >= 3.11)."""
    if hasattr(exc, "add_note") and not getattr(exc, "_gearnb_noted", False):
        exc.add_note(f"(raised by item #{index} of the map)")
        exc._gearnb_noted = True  # type: ignore[attr-defined]
    return exc


def _runs(indices: Sequence[int], values: list[Any], errors: dict[int, BaseException],
          skip: set[int]) -> list[Run]:
    """The settled items of a chunk as runs of consecutive indices (``skip``: positions retried)."""
    if not errors and type(indices) is range and len(values) == len(indices):
        return [(indices.start, values, {})]  # the usual case: the whole chunk, as it came
    runs: list[Run] = []
    for i, index in enumerate(indices):
        if i in skip:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == index:
            run = runs[-1]
        else:
            run = (index, [], {})
            runs.append(run)
        if i in errors:
            run[2][len(run[1])] = errors[i]
            run[1].append(None)
        else:
            run[1].append(values[i] if i < len(values) else None)
    return runs


def auto_chunksize(total: int | None, workers: int) -> int:
    if total is None:
        return UNSIZED_AUTO_CHUNK
    return max(1, min(MAX_AUTO_CHUNK, math.ceil(total / (max(workers, 1) * CHUNKS_PER_WORKER))))


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class MapRun:
    """One map call; iterate it for ``(index, value)`` pairs (in order if ``ordered``)."""

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        *,
        chunksize: int | str = 1,
        ordered: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        priority: str = "normal",
        window: int = DEFAULT_WINDOW,
        progress: Any = None,
    ) -> None:
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        self.executor = executor
        self.blob = FunctionBlob(fn)
        self.label = getattr(fn, "__name__", None) or type(fn).__name__
        self.total = _length(iterables)
        if chunksize == "auto":
            chunksize = auto_chunksize(self.total, executor.worker_count())
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be a positive int or 'auto'")
        self.chunksize = chunksize
        # One iterable (the usual map): its items are the arguments, taken as they are.
        self.single = iter(iterables[0]) if len(iterables) == 1 else None
        self.rows = zip(*iterables)
        self.produced = 0  # index of the next item
        self.ordered = ordered
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.retries = retries
        self.priority = priority
        self.window = self.max_window = max(1, window)
        # Chunks a full server queue refused (maxqueue): sent again after a pause.
        self.backlog: list[Chunk] = []
        self.resume_at = 0.0
        self.backoff = BACKOFF_FIRST
        from ..progress import make_progress

        self.progress = make_progress(progress, total=self.total, label=self.label,
                                      workers=executor.worker_count() if progress is not False else 1)
        self._tick = getattr(self.progress, "tick", None)
        self.events: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self.in_flight: dict[int, Chunk] = {}  # id(chunk) -> chunk
        # The function's code goes with the first chunks, enough for each worker to see it once
        # (a worker without it answers "need code" and the chunk makes a second trip); small
        # code always goes along, which costs less than that trip.
        self.code_sends_left = (1 << 62) if len(self.blob.code) <= SMALL_CODE else 2 * executor.worker_count()
        self.context = contextvars.copy_context()  # worker output goes to the calling cell
        self.closed = False
        self.failed = 0
        self.done = 0

    # -- producing ------------------------------------------------------------------------
    def _next_chunk(self) -> Chunk | None:
        if self.single is not None:
            column = list(itertools.islice(self.single, self.chunksize))
            if not column:
                return None
            columns = [column]
        else:
            rows = list(itertools.islice(self.rows, self.chunksize))
            if not rows:
                return None
            columns = [list(column) for column in zip(*rows)]
        start = self.produced
        self.produced += len(columns[0])
        return Chunk(range(start, self.produced), columns)

    def _task(self, chunk: Chunk) -> Task:
        with_code = chunk.with_code or self.code_sends_left > 0
        self.code_sends_left -= 1
        parts = envelope.encode_map_chunk(self.blob, chunk.columns, with_code=with_code)
        task = Task(self.executor.function, self.executor.signer.sign_parts(self.executor.function, parts),
                    priority=self.priority)
        events = self.events
        task._done_hooks.append(lambda t, c=chunk: events.put(c))
        self.executor._attach_output(task, self.label, chunk.indices[0], self.progress, self.context)
        chunk.task = task
        return task

    def _fill(self, exhausted: bool, buffered: int) -> bool:
        """Submit chunks until ``window`` are in flight or waiting to be yielded in order."""
        tasks = []
        if self.backlog and time.monotonic() >= self.resume_at:
            while self.backlog and len(self.in_flight) < self.window:
                chunk = self.backlog.pop(0)
                tasks.append(self._task(chunk))
                self.in_flight[id(chunk)] = chunk
        while not exhausted and not self.backlog and len(self.in_flight) + buffered < self.window:
            chunk = self._next_chunk()
            if chunk is None:
                exhausted = True
                break
            tasks.append(self._task(chunk))
            self.in_flight[id(chunk)] = chunk
            if self.progress is not None:
                self.progress.submitted(len(chunk.indices))
        if tasks:
            self.executor._submit_tasks(tasks)
        return exhausted

    def _resubmit(self, chunk: Chunk) -> None:
        self.in_flight[id(chunk)] = chunk
        self.executor._submit_tasks([self._task(chunk)])

    # -- consuming ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, Any]]:
        runs = self._iter_runs()
        try:
            for start, values, errors in runs:
                if not errors:
                    yield from zip(range(start, start + len(values)), values)
                    continue
                for offset, value in enumerate(values):
                    if offset in errors:
                        raise _noted(errors[offset], start + offset)
                    yield start + offset, value
        finally:
            runs.close()
            self.close()

    def collect(self) -> list[Any]:
        """Every value as one list (``gmap``): in input order, or in completion order if not
        ``ordered``; raises the first failed item's exception, as iterating would."""
        out: list[Any] = []
        runs = self._iter_runs()
        try:
            for start, values, errors in runs:
                if errors:
                    first = min(errors)
                    raise _noted(errors[first], start + first)
                out.extend(values)
        finally:
            runs.close()
            self.close()
        return out

    def _iter_runs(self) -> Iterator[Run]:
        """Settled runs of items: in index order if ``ordered``, else as chunks finish."""
        pending: dict[int, Run] = {}  # ordered mode: first index -> run
        next_index = 0
        exhausted = False
        try:
            while True:
                exhausted = self._fill(exhausted, len(pending))
                if not self.in_flight and not self.backlog:
                    break
                chunk = self._wait()
                if chunk is None:
                    continue
                # Take every chunk that finished meanwhile: one _fill (one wake-up of the I/O
                # thread) then sends the chunks that replace them together.
                finished = [chunk]
                while True:
                    try:
                        finished.append(self.events.get_nowait())
                    except queue.Empty:
                        break
                for chunk in finished:
                    del self.in_flight[id(chunk)]
                    for run in self._outcomes(chunk):
                        if not self.ordered:
                            yield run
                        else:
                            pending[run[0]] = run
                while next_index in pending:
                    run = pending.pop(next_index)
                    next_index = run[0] + len(run[1])
                    yield run
        finally:
            self.close()

    def _wait(self) -> Chunk | None:
        """The next finished chunk, or None when it is time to send the backlog again."""
        while True:
            now = time.monotonic()
            remaining = None if self.deadline is None else self.deadline - now
            if remaining is not None and remaining <= 0:
                raise TimeoutError("map() did not finish within its timeout")
            if self.backlog and len(self.in_flight) < self.window:
                if now >= self.resume_at:
                    return None
                remaining = self.resume_at - now if remaining is None else min(remaining, self.resume_at - now)
            if self._tick is not None:
                # Wake up now and then to redraw progress on this (the calling) thread.
                self._tick()
                remaining = PROGRESS_POLL if remaining is None else min(remaining, PROGRESS_POLL)
            try:
                return self.events.get(timeout=remaining)
            except queue.Empty:
                continue

    def _outcomes(self, chunk: Chunk) -> list[Run]:
        """Decode a finished chunk; resubmit what should run again."""
        task = chunk.task
        assert task is not None
        try:
            values, errors = self.executor._decode(task)
        except envelope.NeedCode:
            chunk.with_code = True
            self._resubmit(chunk)
            return []
        except BaseException as exc:  # the whole chunk failed (job failed, refused, no server)
            if not (isinstance(exc, ServerError) and exc.code == "QUEUE_ERROR"):
                values, errors = [None] * len(chunk.indices), {i: exc for i in range(len(chunk.indices))}
                return self._settle(chunk, values, errors)
            # Backpressure: the queue is full. Keep the chunk and send fewer at a time:
            # halve the window and pause, once per burst of refusals (the other chunks
            # refused in the same burst only join the backlog).
            self.backlog.append(chunk)
            now = time.monotonic()
            if now >= self.resume_at:
                self.window = max(1, self.window // 2)
                self.resume_at = now + self.backoff
                self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return []
        return self._settle(chunk, values, errors)

    def _settle(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> list[Run]:
        if not errors and self.window < self.max_window:
            self.window += 1
            self.backoff = BACKOFF_FIRST
        # A finished job freed a place in the server's queue: the backlog may go now.
        self.resume_at = 0.0
        retry = sorted(i for i in errors if chunk.attempts < self.retries) if errors else []
        runs = _runs(chunk.indices, values, errors, set(retry))
        if retry:
            again = Chunk([chunk.indices[i] for i in retry], [[column[i] for i in retry] for column in chunk.columns])
            again.attempts = chunk.attempts + 1
            self._resubmit(again)
        settled = len(chunk.indices) - len(retry)
        if self.progress is not None:
            self.progress.finished(settled, len(errors) - len(retry), chunk.task)
        self.done += settled
        return runs

    def close(self) -> None:
        """Stop: whatever is still queued on the job servers is cancelled there."""
        if self.closed:
            return
        self.closed = True
        if self.in_flight:
            self.executor._cancel_jobs([c.task for c in self.in_flight.values() if c.task is not None])
            self.in_flight.clear()
        if self.progress is not None:
            self.progress.close()
