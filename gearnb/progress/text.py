"""A single-line progress on a terminal's stderr (outside Jupyter)."""

from __future__ import annotations

import shutil
from typing import TextIO

from .tracker import Snapshot, describe

BAR_WIDTH = 24


class TextView:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _line(self, s: Snapshot) -> str:
        fraction = (s.done / s.total) if s.total else 0.0
        filled = int(BAR_WIDTH * min(fraction, 1.0))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        line = f"{s.label} [{bar}] {describe(s)}"
        if self.stream.isatty():  # one line must stay one line on a narrow terminal
            line = line[:shutil.get_terminal_size((100, 20)).columns - 1]
        return line

    def draw(self, snapshot: Snapshot) -> None:
        self.stream.write("\r\x1b[2K" + self._line(snapshot))
        self.stream.flush()

    def close(self, snapshot: Snapshot) -> None:
        self.stream.write("\r\x1b[2K" + self._line(snapshot) + "\n")
        self.stream.flush()
