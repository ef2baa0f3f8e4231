"""Live progress for map / imap / as_completed: an ipywidgets panel in Jupyter, one text line
on a terminal, nothing in logs. ``progress=False`` turns it off, ``True`` forces it."""

from __future__ import annotations

import sys
from typing import Any

from .tracker import ProgressTracker, Snapshot, describe

__all__ = ["ProgressTracker", "Snapshot", "describe", "make_progress"]


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
