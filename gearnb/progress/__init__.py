"""Live progress for map / imap / as_completed: an ipywidgets panel in Jupyter, one text line
on a terminal, nothing in logs. ``progress=False`` turns it off, ``True`` forces it.

:func:`make_progress` makes a map's tracker; :func:`start_notice` a line saying what starts
(the local cluster) for calls without a panel (``submit``)."""

from __future__ import annotations

import sys
from typing import Any

from .tracker import ProgressTracker, Snapshot, describe

__all__ = ["ProgressTracker", "Snapshot", "StartNotice", "describe", "make_progress", "start_notice"]


def in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()  # type: ignore[attr-defined]
    return shell is not None and getattr(shell, "kernel", None) is not None


def make_progress(progress: Any, *, total: int | None, label: str, workers: int) -> ProgressTracker | None:
    """Turn a ``progress=`` argument into a tracker (or None for no progress).

    ``None`` (the default) picks a widget inside a Jupyter kernel, a text line when stderr is
    a terminal, and nothing otherwise. An object with ``submitted/finished/status/close``
    methods is used as it is.
    """
    if progress is False:
        return None
    if progress is not None and progress is not True:
        return progress
    if in_jupyter_kernel():
        try:
            from .widget import WidgetView

            return ProgressTracker(WidgetView(label, total), total=total, label=label, workers=workers)
        except ImportError:
            pass  # no ipywidgets: fall through to text
    if progress is True or (sys.stderr is not None and sys.stderr.isatty()):
        from .text import TextView

        return ProgressTracker(TextView(sys.stderr), total=total, label=label, workers=workers)
    return None


class StartNotice:
    """One line that says what is starting, updated in place: an HTML output in Jupyter (no
    widget needed), a carriage-return line on a terminal."""

    def __init__(self, jupyter: bool) -> None:
        self.jupyter = jupyter
        self.handle: Any = None

    def starting(self, text: str) -> None:
        self._show(text)

    def close(self, text: str) -> None:
        self._show(text, last=True)

    def _show(self, text: str, last: bool = False) -> None:
        if self.jupyter:
            from IPython.display import HTML, display

            import html

            shown = HTML(f"<span class='gearnb-start' style='font-family:monospace'>{html.escape(text)}</span>")
            if self.handle is None:
                self.handle = display(shown, display_id=True)
            else:
                self.handle.update(shown)
        else:
            sys.stderr.write("\r\x1b[2K" + text + ("\n" if last else ""))
            sys.stderr.flush()


def start_notice() -> StartNotice | None:
    """A :class:`StartNotice` where someone watches (a Jupyter kernel, a terminal), else None."""
    if in_jupyter_kernel():
        return StartNotice(jupyter=True)
    if sys.stderr is not None and sys.stderr.isatty():
        return StartNotice(jupyter=False)
    return None
