"""The ipywidgets panel: a bar, a line of numbers, a bar per task that reports status, and
the map's task stream once the map has run for a while.

Before the map starts it says what is starting (the local cluster: ``starting 4 workers…``).
The task stream (the map's :class:`~gearnb.visual.TaskStream`, from the workers' timings) is
drawn after ``STREAM_AFTER`` seconds - a quick map keeps a one-line panel - and redrawn when it
changed, at most every ``STREAM_REDRAW`` seconds and at most a tenth of the time (a redraw is
made on the map's thread), and once more at the end. It shows the latest ``LIVE_BARS`` runs, as
dask's dashboard keeps a rolling window; the stream itself keeps them all.
"""

from __future__ import annotations

import html
import time
from typing import Any

from ..visual.stream import TaskStream
from .tracker import Snapshot, describe

STREAM_AFTER = 1.0  # seconds of a map before its panel shows the task stream
STREAM_REDRAW = 1.0  # seconds between redraws of the task stream (an SVG of every task so far)
STREAM_MAX_HEIGHT = "320px"  # taller pictures (many workers) scroll inside the panel
# Runs drawn in the panel: an SVG of 1,000 bars is about 190 KB and 70 ms to make here; of
# 10,000, 1.9 MB and 0.7 s, too much to send a browser every second.
LIVE_BARS = 1000
STREAM_BUSY_SHARE = 0.1  # redraws take at most this share of the map thread's time


class WidgetView:
    def __init__(self, label: str, total: int | None) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self._widgets = widgets
        self.bar = widgets.FloatProgress(value=0, min=0, max=max(total or 1, 1), bar_style="info",
                                         layout=widgets.Layout(width="50%"))
        self.title = widgets.HTML(f"<b>{html.escape(label)}</b>")
        self.info = widgets.HTML("")
        self.tasks = widgets.VBox([])
        self.stream = widgets.HTML("", layout=widgets.Layout(max_height=STREAM_MAX_HEIGHT, overflow="auto"))
        self.stream.add_class("gearnb-task-stream")
        self._task_bars: dict[str, Any] = {}
        self._stream_version = -1
        self._stream_drawn = 0.0
        self._stream_cost = 0.0  # seconds the last redraw took
        self.box = widgets.VBox([widgets.HBox([self.title, self.bar]), self.info, self.tasks])
        self.box.add_class("gearnb-progress")
        display(self.box)

    def _task_bar(self, name: str) -> Any:
        bar = self._task_bars.get(name)
        if bar is None:
            w = self._widgets
            bar = w.FloatProgress(value=0, min=0, max=1, description=name[-20:],
                                  style={"description_width": "initial"}, layout=w.Layout(width="40%"))
            self._task_bars[name] = bar
        return bar

    def draw(self, s: Snapshot) -> None:
        if s.total:
            self.bar.max = s.total
        self.bar.value = s.done
        if s.failed:
            self.bar.bar_style = "danger"  # red as soon as a task fails
        self.info.value = f"<span style='font-family:monospace'>{html.escape(describe(s))}</span>"
        bars = []
        for name, numerator, denominator in s.tasks or ():
            bar = self._task_bar(name)
            bar.value = numerator / denominator if denominator else 0
            bars.append(bar)
        if bars != list(self.tasks.children):
            self.tasks.children = bars
        self._draw_stream(s)

    def _draw_stream(self, s: Snapshot) -> None:
        stream = s.stream
        if stream is None or s.phase or len(stream) == 0:
            return
        now = time.monotonic()
        shown = self._stream_version >= 0
        if not shown and s.elapsed < STREAM_AFTER:
            return
        wait = max(STREAM_REDRAW, self._stream_cost / STREAM_BUSY_SHARE)
        if stream.version == self._stream_version or (not s.finished and now - self._stream_drawn < wait):
            return
        self._stream_version, self._stream_drawn = stream.version, now
        records = stream.records
        window = records if len(records) <= LIVE_BARS else sorted(records, key=lambda r: r.end)[-LIVE_BARS:]
        picture = TaskStream(window).svg()
        if len(window) < len(records):
            picture = (f"<div style='font:12px monospace;color:#57606a'>the latest {len(window):,} of "
                       f"{len(records):,} runs; gearnb.last_task_stream() has them all</div>{picture}")
        self.stream.value = picture
        self._stream_cost = time.monotonic() - now
        if not shown:
            self.box.children = [*self.box.children, self.stream]

    def close(self, s: Snapshot) -> None:
        self.draw(s)
        self.tasks.children = []
        if not s.failed and (s.total is None or s.done >= s.total):
            self.bar.value = self.bar.max
            self.bar.bar_style = "success"
