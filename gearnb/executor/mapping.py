"""The map engine behind map / imap / imap_unordered / Executor.map.

A :class:`MapRun` is a :class:`~gearnb.executor.runs.Run` consumed by the thread that
iterates it: that thread cuts the input into chunks, sends them (at most ``window`` jobs in
flight, so an input iterator is consumed lazily and a million-item map does not build a
million jobs up front), settles the chunks that ended (decoding is its CPU work, not the I/O
thread's) and yields values in order or as they come. Closing it - finished, failed, timed
out, interrupted - cancels what it still has queued on the job servers.

Its progress tracker hears of items submitted, items done on workers inside running chunks
(reported by the workers) and chunks settled; its task stream (``executor.last_task_stream``)
gets a bar per settled chunk. Inside a task it helps (``_help``): see ``runs.HELP_AFTER``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..progress import ProgressTracker, make_progress
from ..visual.stream import TaskStream
from ..pyexec.runner import task_cluster
from .runs import HELP_AFTER, Chunk, Piece, Run, noted

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
# A job server whose queue is full (gearmand's maxqueue) answers QUEUE_ERROR: wait, then send
# the refused chunks again with fewer in flight. 50 ms doubling to 1 s.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0


def auto_chunksize(total: int | None, workers: int) -> int:
    if total is None:
        return UNSIZED_AUTO_CHUNK
    return max(1, min(MAX_AUTO_CHUNK, math.ceil(total / (max(workers, 1) * CHUNKS_PER_WORKER))))


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, GeneratorExit):
        return "abandoned"
    return "failed"


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C waits until the block ends (on the main thread; elsewhere there are no signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class MapRun(Run):
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
        crash_attempts: int | None = None,
        output_limit: int | None = None,
    ) -> None:
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        workers = executor.worker_count()
        super().__init__(executor.calls, fn, retries=retries, priority=priority, code_sends=2 * workers,
                         crash_attempts=executor.crash_attempts if crash_attempts is None else crash_attempts,
                         output_limit=output_limit)
        self.total = _length(iterables)
        if chunksize == "auto":
            chunksize = auto_chunksize(self.total, workers)
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be a positive int or 'auto'")
        self.chunksize = chunksize
        # One iterable (the usual map): its items are the arguments, taken as they are.
        self.one_column = iter(iterables[0]) if len(iterables) == 1 else None
        self.rows = zip(*iterables)
        self.produced = 0  # index of the next item
        self.ordered = ordered
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.window = self.max_window = max(1, window)
        # Chunks a full server queue refused (maxqueue): sent again after a pause.
        self.backlog: list[Chunk] = []
        self.resume_at = 0.0
        self.backoff = BACKOFF_FIRST
        # Which worker ran which chunk, when (the workers' own timings): the executor keeps the
        # last map's (gearnb.last_task_stream()), and the progress panel draws it live.
        self.stream = executor.last_task_stream = TaskStream()
        self.progress = make_progress(progress, total=self.total, label=self.label,
                                      workers=workers if progress is not False else 1)
        if isinstance(self.progress, ProgressTracker):
            self.progress.attach(workers=workers, chunksize=chunksize, stream=self.stream)
        self._tick = getattr(self.progress, "tick", None)
        # Workers report how many items of a running chunk are done (gearnb.pyexec.taskio).
        self.progress_running = getattr(self.progress, "running", None)
        self.events: queue.SimpleQueue[Chunk] = queue.SimpleQueue()  # chunks that ended
        self.in_flight: dict[int, Chunk] = {}  # id(chunk) -> chunk
        self.closed = False
        self.stopped: str | None = None  # why it ended early, for the progress panel
        self.done = 0
        # Inside a task: run queued chunks here when the cluster is busy (runs.HELP_AFTER).
        self.helping = task_cluster() is not None

    def chunk_ended(self, chunk: Chunk) -> None:  # on the I/O thread
        self.events.put(chunk)  # settled by the iterating thread

    # -- producing ------------------------------------------------------------------------
    def _next_chunk(self) -> Chunk | None:
        if self.one_column is not None:
            column = list(itertools.islice(self.one_column, self.chunksize))
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
        return Chunk(self, range(start, self.produced), columns)

    def _fill(self, exhausted: bool, buffered: int) -> bool:
        """Submit chunks until ``window`` are in flight or waiting to be yielded in order."""
        chunks = []
        if self.backlog and time.monotonic() >= self.resume_at:
            while self.backlog and len(self.in_flight) < self.window:
                chunk = self.backlog.pop(0)
                chunks.append(chunk)
                self.in_flight[id(chunk)] = chunk
        while not exhausted and not self.backlog and len(self.in_flight) + buffered < self.window:
            chunk = self._next_chunk()
            if chunk is None:
                exhausted = True
                break
            chunks.append(chunk)
            self.in_flight[id(chunk)] = chunk
            if self.progress is not None:
                self.progress.submitted(len(chunk.indices))
        if chunks:
            self.send(chunks)
        return exhausted

    # -- consuming ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, Any]]:
        pieces = self._iter_pieces()
        try:  # noqa: SIM105 - the except clauses only say why the map stopped
            for start, values, errors in pieces:
                if not errors:
                    yield from zip(range(start, start + len(values)), values)
                    continue
                for offset, value in enumerate(values):
                    if offset in errors:
                        raise noted(errors[offset], start + offset)
                    yield start + offset, value
        except BaseException as exc:
            self.stopped = _why(exc)
            raise
        finally:
            pieces.close()
            self.close()

    def collect(self) -> list[Any]:
        """Every value as one list (``gmap``): in input order, or in completion order if not
        ``ordered``; raises the first failed item's exception, as iterating would."""
        out: list[Any] = []
        pieces = self._iter_pieces()
        try:
            for start, values, errors in pieces:
                if errors:
                    first = min(errors)
                    raise noted(errors[first], start + first)
                out.extend(values)
        except BaseException as exc:
            self.stopped = _why(exc)
            raise
        finally:
            pieces.close()
            self.close()
        return out

    def _iter_pieces(self) -> Iterator[Piece]:
        """Settled pieces of the map: in index order if ``ordered``, else as chunks end."""
        pending: dict[int, Piece] = {}  # ordered mode: first index -> piece
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
                # Take every chunk that ended meanwhile: one _fill (one wake-up of the I/O
                # thread) then sends the chunks that replace them together.
                ended = [chunk]
                while True:
                    try:
                        ended.append(self.events.get_nowait())
                    except queue.Empty:
                        break
                for chunk in ended:
                    for piece in self._settle(chunk):
                        if not self.ordered:
                            yield piece
                        else:
                            pending[piece[0]] = piece
                while next_index in pending:
                    piece = pending.pop(next_index)
                    next_index = piece[0] + len(piece[1])
                    yield piece
        finally:
            self.close()

    def _wait(self) -> Chunk | None:
        """The next chunk that ended, or None when it is time to send the backlog again."""
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
            if self.helping:
                remaining = HELP_AFTER if remaining is None else min(remaining, HELP_AFTER)
            try:
                return self.events.get(timeout=remaining)
            except queue.Empty:
                if self.helping:
                    self._help()
                continue

    def _help(self) -> None:
        """Inside a task, nothing ended for HELP_AFTER: run the latest queued chunk here."""
        waiting = [c for c in self.in_flight.values() if c.sub is not None and c.local is None]
        # The latest sent is the last in the server's queue: the least likely to start soon.
        if waiting and self.take_back_and_run(waiting[-1]):
            self.events.put(waiting[-1])

    def _settle(self, chunk: Chunk) -> list[Piece]:
        """Settle an ended chunk (Run.settle) and act on it: resend, back off, count."""
        if self.in_flight.pop(id(chunk), None) is None:
            return []  # settled already: a chunk run here, whose cancelled job also ended
        settled = self.settle(chunk)
        if settled.backlog:
            # Backpressure: the queue is full. Keep the chunk and send fewer at a time: halve
            # the window and pause, once per burst of refusals (the other chunks refused in
            # the same burst only join the backlog).
            self.backlog.append(chunk)
            now = time.monotonic()
            if now >= self.resume_at:
                self.window = max(1, self.window // 2)
                self.resume_at = now + self.backoff
                self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return []
        # A job that ended freed a place in the server's queue: the backlog may go now.
        self.resume_at = 0.0
        errors = sum(len(piece[2]) for piece in settled.pieces)
        if not errors and not settled.resend and self.window < self.max_window:
            self.window += 1
            self.backoff = BACKOFF_FIRST
        ended = chunk.sub  # its job is over, even when the chunk goes again as a new one
        if settled.resend:
            for again in settled.resend:
                self.in_flight[id(again)] = again
            self.send(settled.resend)
        items = sum(len(piece[1]) for piece in settled.pieces)
        if self.progress is not None:
            self.progress.finished(items, errors, ended)
        self.done += items
        return settled.pieces

    def close(self) -> None:
        """Stop: whatever is still queued on the job servers is cancelled there."""
        if self.closed:
            return
        self.closed = True
        with deferred_interrupts():  # a second Ctrl-C must not leave jobs behind
            if self.in_flight:
                # Queued jobs are dropped, running ones stopped: nothing of this map keeps a worker.
                self.calls.cancel([c.sub for c in self.in_flight.values() if c.sub is not None],
                                  stop_running=True)
            self.release_shared(list(self.in_flight.values()) + self.backlog)
            self.in_flight.clear()
            self.flush_output()
            if isinstance(self.progress, ProgressTracker):
                self.progress.close(self.stopped)
            elif self.progress is not None:  # a progress object of the caller's (make_progress)
                self.progress.close()
