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
                 "elapsed", "tasks", "finished", "stopped")

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, values.get(name))


class ProgressTracker:
    """What MapRun reports to: ``submitted``, ``finished``, ``status``, ``close``."""

    def __init__(self, view: View, *, total: int | None, label: str, workers: int) -> None:
        self.view = view
        self.total = total
        self.label = label
        self.workers = max(workers, 1)
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self.task_status: dict[int, tuple[str, int, int]] = {}  # id(task) -> (name, n, d)
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._closed = False

    # -- events ---------------------------------------------------------------------------
    def submitted(self, items: int) -> None:
        with self._lock:
            self.in_flight += items

    def finished(self, items: int, failed: int = 0, task: Any = None) -> None:
        with self._lock:
            self.in_flight = max(self.in_flight - items, 0)
            self.done += items
            self.failed += failed
            if task is not None:
                self.task_status.pop(id(task), None)

    def status(self, task: Any, numerator: int, denominator: int) -> None:
        """WORK_STATUS from inside a task (``gearnb.report``); called on the I/O thread."""
        with self._lock:
            name = (task.handle or b"?").decode(errors="replace") if task is not None else "?"
            self.task_status[id(task)] = (name, numerator, denominator)

    # -- drawing (calling thread) ---------------------------------------------------------
    def snapshot(self, finished: bool = False, stopped: str | None = None) -> Snapshot:
        with self._lock:
            elapsed = time.monotonic() - self.started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            # Gearman does not tell a client when a job starts, so "running" is what the
            # workers can hold; tasks that reported status are certainly running.
            running = min(self.in_flight, max(self.workers, len(self.task_status)))
            if finished:  # the map has stopped: whatever it left is not running any more
                running = 0
            remaining = (self.total - self.done) if self.total is not None else None
            eta = remaining / rate if remaining is not None and rate > 0 else None
            tasks = sorted(self.task_status.values())[:MAX_TASK_BARS]
            return Snapshot(label=self.label, total=self.total, done=self.done, failed=self.failed,
                            in_flight=self.in_flight, running=running,
                            queued=0 if finished else self.in_flight - running,
                            rate=rate, eta=eta, elapsed=elapsed, tasks=tasks, finished=finished,
                            stopped=stopped)

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
    """One line: ``12/100 done · 2 running · 86 queued · 0 failed · 31.2/s · ETA 3s``."""
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
