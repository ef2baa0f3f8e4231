"""Counting a map's progress: one stream of task events in, numbers for a view out.

Events arrive on two threads - submissions and results on the calling thread, WORK_STATUS
on the I/O thread - so counters change under a lock. Views are drawn only from the calling
thread (see :meth:`ProgressTracker.tick`), which keeps widget updates on the thread that
owns the cell on every ipykernel version.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

# At most this many redraws a second: enough to look live, cheap for the kernel and browser.
MAX_REDRAWS_PER_SECOND = 10
# Per-task bars shown for tasks that call gearnb.report(); more would crowd the cell.
MAX_TASK_BARS = 8


class View(Protocol):
    def draw(self, snapshot: Snapshot) -> None: ...

    def close(self, snapshot: Snapshot) -> None: ...


class Snapshot:
    __slots__ = ("label", "total", "done", "failed", "in_flight", "running", "queued", "rate", "eta",
                 "elapsed", "tasks", "finished", "stopped", "phase", "stream")

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, values.get(name))


class ProgressTracker:
    """What MapRun reports to: ``submitted``, ``running``, ``finished``, ``status``, ``close``.

    Counts are items: ``done`` (finished on a worker, including those of chunks still running,
    which workers report as they go), ``running`` and ``queued`` (the rest of those in flight).
    A chunk is known to run once its worker reported on it (a chunk running longer than
    ``gearnb.pyexec.taskio.REPORT_INTERVAL`` does); of the others, as many chunks as there are
    workers not known to be busy count as running.
    """

    def __init__(self, view: View, *, total: int | None, label: str, workers: int) -> None:
        self.view = view
        self.total = total
        self.label = label
        self.workers = max(workers, 1)
        self.chunksize = 1
        self.stream: Any = None  # the map's TaskStream, which a view may draw
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self.task_status: dict[int, tuple[str, int, int]] = {}  # id(task) -> (name, n, d)
        self.reported: dict[int, tuple[int, int]] = {}  # id(task) -> (items done, items) of running chunks
        self.phase: str | None = None  # before the map starts: "starting 4 workers…"
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._closed = False

    def attach(self, *, workers: int, chunksize: int, stream: Any = None) -> None:
        """The map's shape, once it is known (the tracker may exist before, see :meth:`starting`)."""
        with self._lock:
            self.workers = max(workers, 1)
            self.chunksize = max(chunksize, 1)
            self.stream = stream
            self.phase = None
            self.started = time.monotonic()

    # -- events ---------------------------------------------------------------------------
    def starting(self, text: str) -> None:
        """Before the map: what is being started (the local cluster), shown at once."""
        with self._lock:
            self.phase = text
        self.tick(force=True)

    def submitted(self, items: int) -> None:
        with self._lock:
            self.in_flight += items

    def running(self, task: Any, done: int, items: int) -> None:
        """A worker runs ``task``, ``done`` of its ``items`` finished (on the I/O thread)."""
        with self._lock:
            self.reported[id(task)] = (min(max(done, 0), items), items)

    def finished(self, items: int, failed: int = 0, task: Any = None) -> None:
        with self._lock:
            self.in_flight = max(self.in_flight - items, 0)
            self.done += items
            self.failed += failed
            if task is not None:
                self.task_status.pop(id(task), None)
                self.reported.pop(id(task), None)

    def status(self, task: Any, numerator: int, denominator: int) -> None:
        """WORK_STATUS from inside a task (``gearnb.report``); called on the I/O thread."""
        with self._lock:
            name = (task.handle or b"?").decode(errors="replace") if task is not None else "?"
            self.task_status[id(task)] = (name, numerator, denominator)

    # -- drawing (calling thread) ---------------------------------------------------------
    def snapshot(self, finished: bool = False, stopped: str | None = None) -> Snapshot:
        with self._lock:
            elapsed = time.monotonic() - self.started
            partial = sum(done for done, _ in self.reported.values())
            known = sum(items - done for done, items in self.reported.values())
            busy = len(self.reported)
            unknown = max(self.in_flight - sum(items for _, items in self.reported.values()), 0)
            # Gearman does not tell a client when a job starts: chunks not reported on yet
            # count as running as far as there are workers not known to be busy.
            running = known + min(unknown, max(self.workers - busy, 0) * self.chunksize)
            done = self.done + partial
            if finished:  # the map has stopped: whatever it left is not running any more
                running, done = 0, self.done
            rate = done / elapsed if elapsed > 0 else 0.0
            remaining = (self.total - done) if self.total is not None else None
            eta = remaining / rate if remaining is not None and rate > 0 else None
            tasks = sorted(self.task_status.values())[:MAX_TASK_BARS]
            return Snapshot(label=self.label, total=self.total, done=done, failed=self.failed,
                            in_flight=self.in_flight, running=running,
                            queued=0 if finished else max(self.in_flight - partial - running, 0),
                            rate=rate, eta=eta, elapsed=elapsed, tasks=tasks, finished=finished,
                            stopped=stopped, phase=self.phase, stream=self.stream)

    def tick(self, force: bool = False) -> None:
        """Redraw if the last redraw is old enough (throttled)."""
        now = time.monotonic()
        if self._closed or (not force and now - self._last_draw < 1.0 / MAX_REDRAWS_PER_SECOND):
            return
        self._last_draw = now
        self.view.draw(self.snapshot())

    def close(self, stopped: str | None = None) -> None:
        """The map ended; ``stopped`` says why, when it did not run to its end
        (``"interrupted"``, ``"timed out"``, ``"failed"``): its queued jobs were cancelled."""
        if self._closed:
            return
        self._closed = True
        self.view.close(self.snapshot(finished=True, stopped=stopped))


def describe(s: Snapshot) -> str:
    """One line: ``12/100 done · 2 running · 86 queued · 0 failed · 31.2/s · ETA 3s`` (items),
    or before the map starts, what is starting: ``starting 4 workers… 2/4 ready``."""
    if s.phase and not s.finished:
        return s.phase
    total = "?" if s.total is None else str(s.total)
    parts = [f"{s.done}/{total} done", f"{s.running} running", f"{s.queued} queued"]
    if s.failed:
        parts.append(f"{s.failed} failed")
    parts.append(f"{s.rate:,.1f}/s")
    if s.stopped:
        parts.append(f"{s.stopped} after {format_seconds(s.elapsed)}: the rest cancelled")
    elif s.finished:
        parts.append(f"in {format_seconds(s.elapsed)}")
    elif s.eta is not None:
        parts.append(f"ETA {format_seconds(s.eta)}")
    return " · ".join(parts)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
