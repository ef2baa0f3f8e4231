"""A picture that redraws itself in the notebook: an ipywidgets panel and the thread behind it.

:class:`LiveView` calls a ``draw()`` function (which returns an SVG or HTML string) every
``interval`` seconds on a daemon thread, and puts the result into an ``ipywidgets.HTML``
only when it changed. A thread, not the kernel's event loop: a cell that waits for jobs
blocks that loop, and the picture is meant to move exactly then. Widget updates from a
thread are comm messages, which ipykernel sends from any thread (tested in
tests/test_visual_live.py against a real kernel).

The thread stops on :meth:`LiveView.stop`, after ``duration`` seconds, or after
MAX_FAILURES draws in a row failed (a job server that went away); each says why in the
panel's status line.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("gearnb.visual")

# Draws in a row that may fail (server unreachable) before the view gives up.
MAX_FAILURES = 10
# A view left running in a forgotten notebook stops by itself after this long (seconds).
DEFAULT_DURATION = 3600.0
MIN_INTERVAL = 0.1  # seconds between draws, at least: the browser redraws no faster usefully


class LiveView:
    """An ipywidgets panel whose picture ``draw()`` makes, redrawn every ``interval`` s.

    Display it (last expression of a cell, or ``display(view)``); ``view.stop()`` ends the
    updates (the last picture stays), ``view.start()`` resumes them.
    """

    def __init__(self, title: str, draw: Callable[[], str], *, interval: float = 0.5,
                 duration: float | None = DEFAULT_DURATION, on_stop: Callable[[], None] | None = None) -> None:
        try:
            import ipywidgets as widgets
        except ImportError as exc:  # pragma: no cover - ipywidgets is in the notebook extra
            raise ImportError("a live view needs ipywidgets: pip install 'gearnb[notebook]' "
                              "(or draw a still picture, which needs nothing)") from exc
        self.title = title
        self.draw = draw
        self.interval = max(interval, MIN_INTERVAL)
        self.duration = duration
        self.on_stop = on_stop
        self.draws = 0  # pictures put into the widget
        self.failures = 0
        self.stopped_because = ""
        self.status = widgets.HTML()
        self.picture = widgets.HTML()
        self.widget = widgets.VBox([self.status, self.picture])
        self.widget.add_class("gearnb-live")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = ""
        self.start()

    def start(self) -> LiveView:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self.stopped_because = ""
        self._thread = threading.Thread(target=self._run, name=f"gearnb-live {self.title}", daemon=True)
        self._thread.start()
        return self

    def stop(self, why: str = "stopped") -> None:
        """Stop redrawing (``why`` goes to the status line); waits for the thread to end."""
        self.stopped_because = self.stopped_because or why
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def redraw(self) -> bool:
        """Draw once now; True if the picture changed."""
        picture = self.draw()
        if picture == self._last:
            return False
        self._last = picture
        self.picture.value = picture
        self.draws += 1
        return True

    def _run(self) -> None:
        deadline = None if self.duration is None else time.monotonic() + self.duration
        self._set_status("live")
        while not self._stop.is_set():
            try:
                self.redraw()
                if self.failures:
                    self.failures = 0
                    self._set_status("live")
            except Exception as exc:  # noqa: BLE001 - shown in the panel, not raised on a thread
                self.failures += 1
                log.debug("live view %s: %s", self.title, exc)
                if self.failures >= MAX_FAILURES:
                    self.stopped_because = f"stopped after {self.failures} failed updates: {exc}"
                    break
                self._set_status(f"cannot update ({exc}); retrying")
            if deadline is not None and time.monotonic() >= deadline:
                self.stopped_because = f"stopped after {self.duration:g} s (view.start() resumes)"
                break
            self._stop.wait(self.interval)
        if self._stop.is_set() and not self.failures:
            # Stopped by stop(): the picture that stays shows that moment, not one up to an
            # interval older.
            try:
                self.redraw()
            except Exception as exc:  # noqa: BLE001 - the source may be gone by now
                log.debug("live view %s: last redraw: %s", self.title, exc)
        self._set_status(self.stopped_because or "stopped")
        if self.on_stop is not None:
            self.on_stop()

    def _set_status(self, state: str) -> None:
        colour = "#1a7f37" if state == "live" else "#6e7781"
        every = f" · every {self.interval:g} s" if state == "live" else ""
        self.status.value = (f"<span style='font-family:monospace;font-size:12px'><b>{html.escape(self.title)}</b> "
                             f"<span style='color:{colour}'>● {html.escape(state)}{every}</span></span>")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = "live" if self.running else (self.stopped_because or "stopped")
        return f"<gearnb LiveView {self.title!r}: {state}, {self.draws} draws>"
