"""The task stream: which worker ran which task, when, and how it ended (dask's task stream).

:class:`TaskRecord` is one run of one task; a :class:`TaskStream` collects them (from any
thread) and lays them out once, in :meth:`TaskStream.layout`: a lane per worker, a bar per
run from its start to its end, red when it failed, marked when it was a retry. Three
drawings read that layout: :meth:`TaskStream.plot` (a matplotlib Figure),
:meth:`TaskStream.svg` (the notebook's picture and the live view's) and :meth:`TaskStream.text`.

Where records come from:

* :meth:`TaskStream.record` / :func:`task_stream` watch a gearnb job server in this process (or,
  by address, a separate-process gearnb server's trace stream) and turn its packets into
  records: JOB_ASSIGN starts a run on the worker it went to, that worker's WORK_COMPLETE /
  WORK_FAIL / WORK_EXCEPTION ends it, the worker's connection closing mid-job fails it; a
  job assigned again (the server's own retry) is the next attempt. Times are the server's.
* :meth:`TaskStream.add` takes records made elsewhere: every map makes its stream so
  (:mod:`gearnb.executor.runs`, ``Run.record``) from the timings gearnb workers send with each
  result (start and end on the worker's clock, host, worker pid, task process pid), with the
  attempt and outcome the map knows: ``gearnb.last_task_stream()``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from . import svg
from .events import CLOSED, IN, OUT, PacketEvent

if TYPE_CHECKING:
    from .live import LiveView


@dataclass(frozen=True)
class TaskRecord:
    """One run of one task on one worker.

    ``task`` names the task (a job handle, or a map's chunk: ``"#3"``), the same for all its
    attempts; ``worker`` the process that ran it (``"host:pid"``, a client id); ``start`` and
    ``end`` are seconds on one clock (``time.time()`` on the worker); ``attempt`` is 1 for the
    first run and counts retries; ``ok`` is False for a run that raised, failed or lost its
    worker, and ``error`` then says how. ``items``: the map items the task carried.
    ``process``: the process that ran it, when the worker runs its tasks in a task process of
    its own (``"host:pid"``).
    """

    task: str
    worker: str
    start: float
    end: float
    ok: bool = True
    attempt: int = 1
    error: str = ""
    items: int = 1
    process: str = ""

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"task {self.task!r} ends ({self.end}) before it starts ({self.start})")
        if self.attempt < 1:
            raise ValueError(f"task {self.task!r}: attempt counts from 1, got {self.attempt}")

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Bar:
    """A record placed in the picture: ``lane`` (index into ``StreamLayout.workers``) and its
    start and end in seconds from the stream's first start."""

    record: TaskRecord
    lane: int
    x0: float
    x1: float

    @property
    def colour(self) -> str:
        return svg.COLOURS["ok"] if self.record.ok else svg.COLOURS["fail"]

    @property
    def retry(self) -> bool:
        return self.record.attempt > 1

    @property
    def label(self) -> str:
        r = self.record
        outcome = "ok" if r.ok else f"failed: {r.error or 'error'}"
        retry = f", attempt {r.attempt}" if r.attempt > 1 else ""
        items = f", {r.items} items" if r.items != 1 else ""
        process = f" (task process {r.process})" if r.process and r.process != r.worker else ""
        return f"{r.task} on {r.worker}{process}: {r.duration * 1000:,.1f} ms, {outcome}{retry}{items}"


@dataclass(frozen=True)
class StreamLayout:
    workers: tuple[str, ...]
    bars: tuple[Bar, ...]
    origin: float  # the earliest start: x = 0
    span: float  # seconds from the earliest start to the latest end


def _natural(name: str) -> list[Any]:
    """Sort key putting "w2" before "w10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class TaskStream:
    """Task runs per worker over time. Display it (SVG), ``stream.plot()`` for a matplotlib
    figure, ``stream.live()`` for a panel that redraws while records arrive."""

    def __init__(self, records: Iterable[TaskRecord] = ()) -> None:
        self._records: list[TaskRecord] = []
        self._lock = threading.Lock()
        self.version = 0  # bumped by every add: live views redraw when it moves
        self._tap: Any = None  # a PacketTap while recording a server
        self.extend(records)

    # -- records -------------------------------------------------------------------------
    def add(self, record: TaskRecord) -> None:
        with self._lock:
            self._records.append(record)
            self.version += 1

    def extend(self, records: Iterable[TaskRecord]) -> None:
        records = list(records)
        with self._lock:
            self._records.extend(records)
            self.version += 1

    @property
    def records(self) -> list[TaskRecord]:
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    # -- from a job server's packets -----------------------------------------------------
    @classmethod
    def from_trace(cls, trace: Any) -> TaskStream:
        """The runs a :class:`~gearnb.visual.trace.Trace` saw (times: the server's clock)."""
        stream = cls()
        recorder = _PacketRecorder(stream)
        for event in list(trace.events):
            recorder(event)
        return stream

    def record(self, server: Any) -> TaskStream:
        """Start adding the runs ``server`` hands out (a gearnb Server in this process, or the
        "host:port" of a gearnb server); :meth:`stop` ends it. Also a context manager."""
        from .recorder import PacketTap

        if self._tap is not None:
            raise RuntimeError("this task stream already records a server; stop() it first")
        self._tap = PacketTap(server, _PacketRecorder(self))
        self._tap.start()
        return self

    def stop(self) -> None:
        """Stop recording (runs still going are not added)."""
        tap, self._tap = self._tap, None
        if tap is not None:
            tap.stop()

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- layout and drawings ---------------------------------------------------------------
    def layout(self) -> StreamLayout:
        """A lane per worker (in natural order of their names), a bar per record."""
        records = self.records
        workers = tuple(sorted({r.worker for r in records}, key=_natural))
        lane = {w: i for i, w in enumerate(workers)}
        origin = min((r.start for r in records), default=0.0)
        bars = tuple(Bar(r, lane[r.worker], r.start - origin, r.end - origin)
                     for r in sorted(records, key=lambda r: (r.start, r.end)))
        span = max((b.x1 for b in bars), default=0.0)
        return StreamLayout(workers, bars, origin, span)

    def plot(self, ax: Any = None, *, title: str | None = "task stream") -> Any:
        """A matplotlib Figure of the stream (drawn into ``ax`` when given). Made without
        pyplot, so a notebook shows it once: as the value of the cell."""
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        lay = self.layout()
        if ax is None:
            height = 1.2 + 0.38 * max(len(lay.workers), 1)
            fig = Figure(figsize=(9, min(height, 12)), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        for lane_index in range(len(lay.workers)):
            bars = [b for b in lay.bars if b.lane == lane_index]
            spans = [(b.x0, max(b.x1 - b.x0, lay.span * 1e-3)) for b in bars]
            # A white edge keeps back-to-back runs apart; a retry gets a dark one.
            ax.broken_barh(spans, (lane_index - 0.4, 0.8), facecolors=[b.colour for b in bars],
                           edgecolors=["#24292f" if b.retry else "white" for b in bars], linewidth=0.8)
            for b in bars:
                if b.retry:
                    ax.plot([b.x0], [lane_index], marker=">", color="#24292f", markersize=4)
        ax.set_yticks(range(len(lay.workers)), labels=list(lay.workers))
        ax.set_ylim(max(len(lay.workers), 1) - 0.5, -0.5)  # first worker on top
        ax.set_xlim(0, max(lay.span, 1e-6) * 1.02)
        ax.set_xlabel("seconds since the first task started")
        ax.grid(axis="x", alpha=0.3)
        failed = sum(not b.record.ok for b in lay.bars)
        retried = sum(b.retry for b in lay.bars)
        handles = [Patch(color=svg.COLOURS["ok"], label="ok"), Patch(color=svg.COLOURS["fail"], label="failed")]
        if retried:
            handles.append(Patch(facecolor="white", edgecolor="#24292f", label="retry (▸)"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
        if title:
            ax.set_title(f"{title}: {len(lay.bars)} runs on {len(lay.workers)} workers, {failed} failed, "
                         f"{retried} retries", fontsize="medium")
        return fig

    def svg(self, *, width: int = 760) -> str:
        return render_svg(self.layout(), width=width)

    def text(self) -> str:
        lay = self.layout()
        lines = [f"task stream: {len(lay.bars)} runs on {len(lay.workers)} workers over {lay.span:,.3f} s"]
        for i, worker in enumerate(lay.workers):
            bars = [b for b in lay.bars if b.lane == i]
            failed = sum(not b.record.ok for b in bars)
            busy = sum(b.x1 - b.x0 for b in bars)
            lines.append(f"  {worker}: {len(bars)} runs, {failed} failed, busy {busy:,.3f} s")
        return "\n".join(lines)

    def live(self, *, interval: float = 0.5, duration: float | None = None) -> LiveView:
        """A panel redrawn while records arrive (every ``interval`` s at most)."""
        from .live import DEFAULT_DURATION, LiveView

        seen = [-1, ""]

        def draw() -> str:
            if self.version != seen[0]:
                seen[0], seen[1] = self.version, self.svg()
            return str(seen[1])

        return LiveView("task stream", draw, interval=interval,
                        duration=DEFAULT_DURATION if duration is None else duration)

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def __repr__(self) -> str:
        return self.text()


# -- drawing --------------------------------------------------------------------------------
LANE_HEIGHT = 22
LABEL_WIDTH = 150  # px for the worker names on the left
AXIS = 34


def _ticks(span: float) -> list[float]:
    """About six round tick values from 0 to ``span``."""
    if span <= 0:
        return [0.0]
    raw = span / 6
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 10 ** -len(str(int(1 / raw)))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    return [i * step for i in range(int(span / step) + 1)]


def render_svg(lay: StreamLayout, *, width: int = 760) -> str:
    """The layout as SVG: lanes of bars, a time axis, a count of runs, failures and retries."""
    c = svg.COLOURS
    plot_width = width - LABEL_WIDTH - 20
    scale = plot_width / lay.span if lay.span > 0 else 0.0
    top = 30
    height = top + LANE_HEIGHT * max(len(lay.workers), 1) + AXIS
    failed = sum(not b.record.ok for b in lay.bars)
    retried = sum(b.retry for b in lay.bars)
    parts = [svg.text(10, 18, f"task stream: {len(lay.bars)} runs on {len(lay.workers)} workers · "
                              f"{failed} failed · {retried} retries · {lay.span:,.3f} s", size=11, font_weight="bold")]
    for i, worker in enumerate(lay.workers):
        y = top + i * LANE_HEIGHT
        if i % 2:
            parts.append(svg.rect(LABEL_WIDTH, y, plot_width, LANE_HEIGHT, fill=c["grid"], fill_opacity=0.25))
        parts.append(svg.text(LABEL_WIDTH - 8, y + LANE_HEIGHT / 2 + 4, svg.fit(worker, LABEL_WIDTH - 14, 10),
                              size=10, anchor="end", title=worker, class_="lane"))
    for bar in lay.bars:
        y = top + bar.lane * LANE_HEIGHT + 3
        x = LABEL_WIDTH + bar.x0 * scale
        w = max((bar.x1 - bar.x0) * scale, 1.0)
        parts.append(svg.rect(x, y, w, LANE_HEIGHT - 6, fill=bar.colour, fill_opacity=0.85,
                              stroke=c["ink"] if bar.retry else c["background"], stroke_width=1.2 if bar.retry else 0.6,
                              stroke_dasharray="3 2" if bar.retry else None, title=bar.label,
                              class_="bar failed" if not bar.record.ok else "bar"))
        if bar.retry:
            parts.append(svg.polygon([(x, y), (x + 6, y + (LANE_HEIGHT - 6) / 2), (x, y + LANE_HEIGHT - 6)],
                                     fill=c["ink"]))
    axis_y = top + LANE_HEIGHT * max(len(lay.workers), 1) + 4
    parts.append(svg.line(LABEL_WIDTH, axis_y, LABEL_WIDTH + plot_width, axis_y, stroke=c["muted"]))
    for tick in _ticks(lay.span):
        x = LABEL_WIDTH + tick * scale
        parts.append(svg.line(x, axis_y, x, axis_y + 4, stroke=c["muted"]))
        parts.append(svg.text(x, axis_y + 16, f"{tick:g} s", size=9.5, anchor="middle", fill=c["muted"]))
    if not lay.bars:
        parts.append(svg.text(LABEL_WIDTH, top + 14, "no tasks yet", size=10, fill=c["muted"]))
    return svg.document(width, height, parts, label="task stream")


# -- records from a job server's packets ---------------------------------------------------------
_ASSIGN = ("JOB_ASSIGN", "JOB_ASSIGN_UNIQ", "JOB_ASSIGN_ALL")
_ENDS = {"WORK_COMPLETE": "", "WORK_FAIL": "WORK_FAIL", "WORK_EXCEPTION": "exception"}


class _PacketRecorder:
    """Turns a job server's packet events into TaskRecords (a trace sink)."""

    def __init__(self, stream: TaskStream) -> None:
        self.stream = stream
        self.running: dict[tuple[int, str], tuple[float, str, int]] = {}  # (conn, handle) -> start, worker, attempt
        self.attempts: dict[str, int] = {}

    def __call__(self, event: PacketEvent) -> None:
        if event.kind == OUT and event.name in _ASSIGN:
            handle = event.arg("handle")
            attempt = self.attempts[handle] = self.attempts.get(handle, 0) + 1
            worker = event.client_id if event.client_id not in ("", "-") else f"fd {event.fd}"
            self.running[(event.conn, handle)] = (event.time, worker, attempt)
        elif event.kind == IN and event.name in _ENDS:
            handle = event.arg("handle")
            run = self.running.pop((event.conn, handle), None)
            if run is not None:
                start, worker, attempt = run
                error = _ENDS[event.name]
                self.stream.add(TaskRecord(handle, worker, start, max(event.time, start), not error, attempt, error))
                if not error:
                    self.attempts.pop(handle, None)
        elif event.kind == CLOSED:
            for key in [k for k in self.running if k[0] == event.conn]:
                start, worker, attempt = self.running.pop(key)
                self.stream.add(TaskRecord(key[1], worker, start, max(event.time, start), False, attempt,
                                           "worker lost"))
