"""The map engine behind map / imap / imap_unordered / Executor.map.

The calling thread does the CPU work (chunking, encoding, decoding), the I/O thread only
moves bytes. At most ``window`` jobs are in flight, so an input iterator is consumed lazily
and a million-item map does not build a million jobs up front.
"""

from __future__ import annotations

import itertools
import math
import queue
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..client.task import Task
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
PROGRESS_POLL = 0.1  # seconds between progress redraws while waiting (10 per second at most)


class Chunk:
    """One Gearman job of a map: the items at ``indices``."""

    __slots__ = ("indices", "calls", "attempts", "task", "with_code")

    def __init__(self, indices: list[int], calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        self.indices = indices
        self.calls = calls
        self.attempts = 0
        self.task: Task | None = None
        self.with_code = False


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
        self.items = enumerate(zip(*iterables))
        self.ordered = ordered
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.retries = retries
        self.priority = priority
        self.window = max(1, window)
        from ..progress import make_progress

        self.progress = make_progress(progress, total=self.total, label=self.label,
                                      workers=executor.worker_count() if progress is not False else 1)
        self._tick = getattr(self.progress, "tick", None)
        self.events: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self.in_flight: dict[int, Chunk] = {}  # id(chunk) -> chunk
        self.code_sent = False
        self.closed = False
        self.failed = 0
        self.done = 0

    # -- producing ------------------------------------------------------------------------
    def _next_chunk(self) -> Chunk | None:
        batch = list(itertools.islice(self.items, self.chunksize))
        if not batch:
            return None
        return Chunk([i for i, _ in batch], [(args, {}) for _, args in batch])

    def _task(self, chunk: Chunk) -> Task:
        with_code = chunk.with_code or not self.code_sent
        self.code_sent = True
        body = envelope.encode_call(self.blob, chunk.calls, with_code=with_code, chunk=True)
        task = Task(self.executor.function, self.executor.signer.sign(self.executor.function, body),
                    priority=self.priority)
        events = self.events
        task._done_hooks.append(lambda t, c=chunk: events.put(c))
        self.executor._attach_output(task, self.label, chunk.indices[0], self.progress)
        chunk.task = task
        return task

    def _fill(self, exhausted: bool, buffered: int) -> bool:
        """Submit chunks until ``window`` are in flight or waiting to be yielded in order."""
        tasks = []
        while not exhausted and len(self.in_flight) + len(tasks) + buffered < self.window:
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
        pending: dict[int, tuple[bool, Any]] = {}  # ordered mode: index -> (ok, value)
        next_index = 0
        exhausted = False
        try:
            while True:
                exhausted = self._fill(exhausted, len(pending) // self.chunksize)
                if not self.in_flight:
                    break
                chunk = self._wait()
                del self.in_flight[id(chunk)]
                for index, ok, value in self._outcomes(chunk):
                    if self.ordered:
                        pending[index] = (ok, value)
                    elif ok:
                        yield index, value
                    else:
                        raise value
                while next_index in pending:
                    ok, value = pending.pop(next_index)
                    next_index += 1
                    if not ok:
                        raise value
                    yield next_index - 1, value
        finally:
            self.close()

    def _wait(self) -> Chunk:
        while True:
            remaining = None if self.deadline is None else self.deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("map() did not finish within its timeout")
            if self._tick is not None:
                # Wake up now and then to redraw progress on this (the calling) thread.
                self._tick()
                remaining = PROGRESS_POLL if remaining is None else min(remaining, PROGRESS_POLL)
            try:
                return self.events.get(timeout=remaining)
            except queue.Empty:
                continue

    def _outcomes(self, chunk: Chunk) -> list[tuple[int, bool, Any]]:
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
            values, errors = [None] * len(chunk.indices), {i: exc for i in range(len(chunk.indices))}
        retry = [i for i in errors if chunk.attempts < self.retries]
        out = [(index, i not in errors, errors.get(i, values[i] if i < len(values) else None))
               for i, index in enumerate(chunk.indices) if i not in retry]
        if retry:
            again = Chunk([chunk.indices[i] for i in retry], [chunk.calls[i] for i in retry])
            again.attempts = chunk.attempts + 1
            self._resubmit(again)
        if self.progress is not None:
            self.progress.finished(len(out), sum(1 for _, ok, _ in out if not ok), task)
        self.done += len(out)
        return out

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
