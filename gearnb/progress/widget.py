"""The ipywidgets panel: a bar, a line of numbers, and a bar per task that reports status."""

from __future__ import annotations

import html
from typing import Any

from .tracker import Snapshot, describe


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
        self._task_bars: dict[str, Any] = {}
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
        for name, numerator, denominator in s.tasks:
            bar = self._task_bar(name)
            bar.value = numerator / denominator if denominator else 0
            bars.append(bar)
        if bars != list(self.tasks.children):
            self.tasks.children = bars

    def close(self, s: Snapshot) -> None:
        self.draw(s)
        self.tasks.children = []
        if not s.failed and (s.total is None or s.done >= s.total):
            self.bar.value = self.bar.max
            self.bar.bar_style = "success"
