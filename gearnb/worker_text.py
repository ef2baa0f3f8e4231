"""Worker text is data: what the notebook shows of text that came from a worker.

A worker's ``print()`` output (WORK_DATA), its stderr (WORK_WARNING), the text of a remote
exception and a worker's unsigned refusal reach the calling cell. None of it may drive the
terminal or the notebook's output area: a worker (or whoever answers in its place) could clear
the screen, move the cursor over another task's lines, recolour text or reverse it with
Unicode bidi controls. :func:`neutralise` shows every such character as a visible escape
(``ESC`` as ``\\x1b``, U+202E as ``\\u202e``, a lone carriage return as ``\\r``) and keeps
newlines and tabs, so ordinary output reads as it was printed.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (U+009B is a one-character CSI for some
# terminals), and the Unicode bidi controls (the "Trojan Source" set: ALM, LRM, RLM,
# LRE..RLO, LRI..PDI).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\r":
        return "\\r"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def neutralise(text: str) -> str:
    """``text`` with control characters shown as escapes; newlines and tabs kept, CR LF
    read as a newline."""
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return _CONTROL.sub(_escape, text)


def shown(data: bytes | str) -> str:
    """Worker bytes as text to show: UTF-8 (undecodable bytes as U+FFFD), neutralised."""
    text = data if isinstance(data, str) else bytes(data).decode(errors="replace")
    return neutralise(text)
