"""Drawing a :class:`~gearnb.visual.cluster.ClusterSnapshot`, once or live.

:func:`render_svg` draws the job server's functions (a row of boxes per priority queue, one
box per waiting job, and the running jobs; an idle function takes one line), its workers (abilities, the job each runs, or
asleep) and the running jobs with their WORK_STATUS progress. :class:`ClusterView` polls a
source and redraws, adding what happened between polls: the jobs seen starting and
finishing, in order (a high-priority job overtaking queued normal ones shows there).
:func:`render_text` is the terminal's version.
"""

from __future__ import annotations

import time
from typing import Any

from . import svg
from .cluster import PRIORITIES, ClusterSnapshot, JobState, source_for
from .live import DEFAULT_DURATION, LiveView

WIDTH = 760
MAX_BOXES = 40  # boxes drawn per queue row; more are counted ("+12")
BOX = 10
HISTORY = 14  # jobs kept in the started / finished lines of a live view
DEFAULT_INTERVAL = 0.5  # seconds between polls: live enough, and ~8 admin round trips a second at most


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 10) % 10}"


def _job_label(job: JobState) -> str:
    parts = [job.handle]
    if job.function:
        parts.append(job.function)
    if job.priority:
        parts.append(job.priority)
    if job.background:
        parts.append("background")
    if job.denominator:
        parts.append(f"{job.numerator}/{job.denominator}")
    if job.worker:
        parts.append(f"on {job.worker}")
    return " ".join(parts)


def _boxes(x: float, y: float, count: int, colour: str, handles: tuple[str, ...] | None, *,
           row: str, filled: bool = True) -> list[str]:
    """A box per job of one row (``row``: a priority, or "running": the boxes' class)."""
    parts = []
    for i in range(min(count, MAX_BOXES)):
        title = handles[i] if handles is not None and i < len(handles) else None
        parts.append(svg.rect(x + i * (BOX + 3), y - BOX + 1, BOX, BOX, rx=2, title=title, fill=colour,
                              fill_opacity=1 if filled else 0.3, stroke=colour, class_=f"job {row}"))
    if count > MAX_BOXES:
        parts.append(svg.text(x + MAX_BOXES * (BOX + 3) + 4, y, f"+{count - MAX_BOXES}", size=10,
                              fill=svg.COLOURS["muted"]))
    if not count:
        parts.append(svg.text(x, y, "–", size=10, fill=svg.COLOURS["grid"]))
    return parts


def _progress_bar(x: float, y: float, width: float, job: JobState) -> list[str]:
    c = svg.COLOURS
    parts = [svg.rect(x, y - 9, width, 10, rx=2, fill="none", stroke=c["grid"])]
    if job.progress is not None:
        parts.append(svg.rect(x, y - 9, width * min(job.progress, 1.0), 10, rx=2, fill=c["status"]))
        parts.append(svg.text(x + width + 6, y, f"{job.numerator}/{job.denominator}", size=10))
    else:
        parts.append(svg.text(x + width + 6, y, "no status yet", size=10, fill=c["muted"]))
    return parts


def render_svg(snap: ClusterSnapshot, *, started: list[JobState] | None = None,
               finished: list[JobState] | None = None) -> str:
    """The snapshot as an SVG picture; ``started`` / ``finished``: a live view's history."""
    c = svg.COLOURS
    parts: list[str] = []
    y = 20.0
    parts.append(svg.text(10, y, f"job server {snap.server}", size=13, font_weight="bold", fill=c["server"]))
    parts.append(svg.text(WIDTH - 10, y, f"{snap.source} · {_clock(snap.taken)}", size=10, anchor="end",
                          fill=c["muted"]))
    y += 16
    parts.append(svg.text(10, y, f"{len(snap.functions)} functions · {len(snap.workers)} workers · "
                                 f"{len(snap.running)} jobs running · {snap.connections} connections",
                          size=10, fill=c["muted"]))
    running_by_function: dict[str, list[JobState]] = {}
    for job in snap.running:
        if job.function is not None:
            running_by_function.setdefault(job.function, []).append(job)

    # Functions and their queues.
    y += 26
    parts.append(svg.text(10, y, "functions and their queues (oldest first)", size=11, font_weight="bold"))
    if not snap.functions:
        y += 18
        parts.append(svg.text(20, y, "no functions yet", size=10, fill=c["muted"]))
    for f in snap.functions:
        y += 22
        parts.append(svg.group([
            svg.text(20, y, svg.fit(f.name, 300, 12), size=12, font_weight="bold", class_="function"),
            svg.text(WIDTH - 10, y, f"waiting {sum(f.queued)} · running {f.running} · workers {f.workers}",
                     size=10, anchor="end", fill=c["muted"]),
        ], title=f"{f.name}: total {f.total}"))
        if not f.total:  # nothing waits or runs: one line, so busy functions stand out
            continue
        for p, name in enumerate(PRIORITIES):
            y += 16
            parts.append(svg.text(40, y, name, size=10, fill=c[name]))
            handles = f.queue[p] if f.queue is not None else None
            parts.extend(_boxes(100, y, f.queued[p], c[name], handles, row=name))
        y += 16
        parts.append(svg.text(40, y, "running", size=10, fill=c["worker"]))
        handles = tuple(_job_label(j) for j in running_by_function.get(f.name, ())) or None
        parts.extend(_boxes(100, y, f.running, c["worker"], handles, row="running", filled=False))

    # Workers.
    y += 30
    parts.append(svg.text(10, y, "workers", size=11, font_weight="bold"))
    if not snap.workers:
        y += 18
        parts.append(svg.text(20, y, "no workers connected", size=10, fill=c["muted"]))
    jobs = {job.handle: job for job in snap.jobs}
    for w in snap.workers:
        y += 18
        parts.append(svg.text(20, y, svg.fit(w.name, 150, 11), size=11, font_weight="bold", fill=c["worker"],
                              title=f"{w.name}: fd {w.fd}, {w.ip}", class_="worker"))
        parts.append(svg.text(180, y, svg.fit("can do " + " ".join(w.functions), 250, 10), size=10,
                              fill=c["muted"]))
        if w.running:
            job = jobs.get(w.running[0]) or JobState(w.running[0], "running")
            label = svg.fit(f"running {_job_label(JobState(job.handle, 'running', job.function))}", 190, 10)
            parts.append(svg.text(440, y, label, size=10, fill=c["worker"]))
            parts.extend(_progress_bar(640, y, 60, job))
        elif w.sleeping is True:
            parts.append(svg.text(440, y, "asleep (PRE_SLEEP): waits for a NOOP", size=10, fill=c["sleep"]))
        elif w.sleeping is False:
            parts.append(svg.text(440, y, "awake, asking for work", size=10, fill=c["muted"]))

    # Running jobs and their progress.
    y += 30
    parts.append(svg.text(10, y, "running jobs", size=11, font_weight="bold"))
    if not snap.running:
        y += 18
        parts.append(svg.text(20, y, "none", size=10, fill=c["muted"]))
    for job in snap.running[:MAX_BOXES]:
        y += 18
        parts.append(svg.text(20, y, svg.fit(_job_label(JobState(job.handle, "running", job.function,
                                                                 job.priority, job.background, worker=job.worker)),
                                             480, 10), size=10, class_="running-job"))
        parts.extend(_progress_bar(520, y, 150, job))

    # What a live view saw happen between polls.
    for title, history in (("started, in order", started), ("finished, in order", finished)):
        if history is None:
            continue
        y += 24
        parts.append(svg.text(10, y, title, size=11, font_weight="bold"))
        x = 150.0
        if not history:
            parts.append(svg.text(x, y, "nothing yet", size=10, fill=c["muted"]))
        for job in history[-HISTORY:]:
            label = job.handle + (f" {job.priority}" if job.priority else "")
            colour = c.get(job.priority or "", c["ink"])
            parts.append(svg.text(x, y, label, size=10, fill=colour, title=_job_label(job)))
            x += svg.text_width(label, 10) + 12
            if x > WIDTH - 80:
                y += 15
                x = 150.0

    for note in snap.notes:
        y += 16
        parts.append(svg.text(10, y, "note: " + note, size=9.5, fill=c["muted"], font_style="italic"))
    return svg.document(WIDTH, y + 14, parts, label=f"Gearman job server {snap.server}")


def render_text(snap: ClusterSnapshot) -> str:
    """The snapshot as text: a table of functions, the workers, the running jobs."""
    lines = [f"job server {snap.server} ({snap.source}) at {_clock(snap.taken)}: {len(snap.workers)} workers, "
             f"{snap.connections} connections"]
    lines.append(f"  {'function':<20}{'high':>6}{'normal':>8}{'low':>6}{'running':>9}{'workers':>9}")
    for f in snap.functions:
        high, normal, low = f.queued
        lines.append(f"  {f.name:<20}{high:>6}{normal:>8}{low:>6}{f.running:>9}{f.workers:>9}")
    for w in snap.workers:
        doing = ("running " + " ".join(w.running) if w.running else "asleep" if w.sleeping
                 else "awake" if w.sleeping is False else "")
        lines.append(f"  worker {w.name} (fd {w.fd}) can do {' '.join(w.functions)}  {doing}".rstrip())
    for job in snap.running:
        lines.append(f"  running {_job_label(job)}")
    lines.extend(f"  note: {note}" for note in snap.notes)
    return "\n".join(lines)


class ClusterView(LiveView):
    """The live picture of a job server: ``gearnb.visual.cluster_view(server)``.

    Polls ``server`` (a gearnb Server in this process: read directly; "host:port": through
    the admin protocol) every ``interval`` seconds and redraws when something changed.
    ``view.snapshot`` is the latest :class:`ClusterSnapshot`; ``view.started`` and
    ``view.finished`` the jobs seen starting and finishing, in order.
    """

    def __init__(self, server: Any, *, interval: float = DEFAULT_INTERVAL,
                 duration: float | None = DEFAULT_DURATION) -> None:
        self.source = source_for(server)
        self.snapshot: ClusterSnapshot | None = None
        self.started: list[JobState] = []
        self.finished: list[JobState] = []
        self._seen: dict[str, JobState] = {}
        super().__init__(f"job server {self.source.address}", self._poll, interval=interval, duration=duration,
                         on_stop=self.source.close)

    def _poll(self) -> str:
        snap = self.source.snapshot()
        self._note_changes(snap)
        self.snapshot = snap
        return render_svg(snap, started=self.started, finished=self.finished)

    def _note_changes(self, snap: ClusterSnapshot) -> None:
        now = {job.handle: job for job in snap.jobs}
        for handle, job in now.items():
            before = self._seen.get(handle)
            if job.state == "running" and (before is None or before.state != "running"):
                self.started.append(job)
        for handle, job in self._seen.items():
            if handle not in now and job.state == "running":
                self.finished.append(job)
        del self.started[:-HISTORY * 4], self.finished[:-HISTORY * 4]
        self._seen = now


def cluster_view(server: Any, *, interval: float = DEFAULT_INTERVAL,
                 duration: float | None = DEFAULT_DURATION) -> ClusterView:
    """A live picture of ``server``'s queues, workers and running jobs (an ipywidgets panel)."""
    return ClusterView(server, interval=interval, duration=duration)
