"""One packet seen by the job server, as a trace keeps it: :class:`PacketEvent`.

What a packet's arguments are called and which of them an arrow shows come from here
(:func:`key_arguments`, :func:`describe_args`), for the recorder (:mod:`.recorder`), which
makes the events on the server's thread, and for the drawings (:mod:`.sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote, unquote

from ..protocol import PacketType

P = PacketType

# The first bytes of a job's data or result shown on an arrow, when they are printable text.
DATA_PREVIEW = 24
# Other arguments (handles, function names, uniques) are cut at this many characters.
ARG_PREVIEW = 64

# The arguments of each packet type, by name (../shared/reference/gearman-protocol.md, 1.2).
_SUBMIT = ("function", "unique", "data")
ARG_NAMES: dict[int, tuple[str, ...]] = {
    P.CAN_DO: ("function",), P.CANT_DO: ("function",), P.CAN_DO_TIMEOUT: ("function", "timeout"),
    P.SUBMIT_JOB: _SUBMIT, P.SUBMIT_JOB_BG: _SUBMIT, P.SUBMIT_JOB_HIGH: _SUBMIT,
    P.SUBMIT_JOB_HIGH_BG: _SUBMIT, P.SUBMIT_JOB_LOW: _SUBMIT, P.SUBMIT_JOB_LOW_BG: _SUBMIT,
    P.SUBMIT_JOB_EPOCH: ("function", "unique", "epoch", "data"),
    P.SUBMIT_JOB_SCHED: ("function", "unique", "minute", "hour", "mday", "month", "wday", "data"),
    P.SUBMIT_REDUCE_JOB: ("function", "unique", "reducer", "aggregator", "data"),
    P.SUBMIT_REDUCE_JOB_BACKGROUND: ("function", "unique", "reducer", "aggregator", "data"),
    P.JOB_CREATED: ("handle",),
    P.JOB_ASSIGN: ("handle", "function", "data"),
    P.JOB_ASSIGN_UNIQ: ("handle", "function", "unique", "data"),
    P.JOB_ASSIGN_ALL: ("handle", "function", "unique", "reducer", "data"),
    P.WORK_STATUS: ("handle", "numerator", "denominator"),
    P.WORK_COMPLETE: ("handle", "data"), P.WORK_DATA: ("handle", "data"),
    P.WORK_WARNING: ("handle", "data"), P.WORK_EXCEPTION: ("handle", "data"),
    P.WORK_FAIL: ("handle",),
    P.GET_STATUS: ("handle",),
    P.STATUS_RES: ("handle", "known", "running", "numerator", "denominator"),
    P.GET_STATUS_UNIQUE: ("unique",),
    P.STATUS_RES_UNIQUE: ("unique", "known", "running", "numerator", "denominator", "clients"),
    P.ECHO_REQ: ("data",), P.ECHO_RES: ("data",), P.ERROR: ("code", "text"),
    P.SET_CLIENT_ID: ("id",), P.OPTION_REQ: ("option",), P.OPTION_RES: ("option",),
}
# Packets only a worker sends, and packets only a client sends: how a lane gets its role.
WORKER_PACKETS = frozenset((P.CAN_DO, P.CANT_DO, P.CAN_DO_TIMEOUT, P.RESET_ABILITIES, P.PRE_SLEEP,
                            P.GRAB_JOB, P.GRAB_JOB_UNIQ, P.GRAB_JOB_ALL, P.WORK_STATUS, P.WORK_COMPLETE,
                            P.WORK_FAIL, P.WORK_EXCEPTION, P.WORK_DATA, P.WORK_WARNING))
CLIENT_PACKETS = frozenset((*(t for t in ARG_NAMES if P(t).name.startswith("SUBMIT_")),
                            P.GET_STATUS, P.GET_STATUS_UNIQUE))

IN, OUT, STATE, CLOSED = "in", "out", "state", "closed"  # PacketEvent.kind
TEXT = "text"  # PacketEvent.name of an admin text line


@dataclass(frozen=True)
class PacketEvent:
    """One thing the job server saw, in the order it saw them.

    ``kind``: ``"in"`` (a packet or admin line to the server), ``"out"`` (a packet from it),
    ``"state"`` (a connection already open when the trace began: ``args`` holds its
    abilities and whether it sleeps), ``"closed"`` (the connection ended).
    ``conn`` numbers the connection within the trace; ``fd``, ``peer`` and ``client_id``
    are the connection's at that moment. ``args`` are the key arguments as text, by name;
    a job's data is shown by size (and its start, when it is text). ``size`` is the
    packet's body in bytes; ``time`` is the server's ``time.perf_counter()`` (seconds).
    """

    seq: int
    time: float
    conn: int
    kind: str
    name: str
    args: tuple[tuple[str, str], ...] = ()
    size: int = 0
    fd: int = -1
    peer: str = "-"
    client_id: str = "-"

    def arg(self, name: str, default: str = "") -> str:
        for key, value in self.args:
            if key == name:
                return value
        return default

    @property
    def detail(self) -> str:
        """The key arguments in a few words: ``H:vm:1 1/4``, ``addition [3 B]``."""
        return describe_args(self.name, self.args)

    def to_line(self) -> str:
        """This event as one line of the ``trace`` admin stream (see :meth:`from_line`)."""
        fields = [str(self.seq), f"{self.time:.6f}", str(self.conn), self.kind, self.name, str(self.size),
                  str(self.fd), self.peer, self.client_id]
        fields += [f"{key}={value}" for key, value in self.args]
        return "E " + " ".join(quote(field, safe="=:/.-_") for field in fields)

    @classmethod
    def from_line(cls, line: str) -> PacketEvent:
        words = line.split(" ")
        if len(words) < 10 or words[0] != "E":
            raise ValueError(f"not a trace event line: {line[:80]!r}")
        seq, when, conn, kind, name, size, fd, peer, client_id = (unquote(w) for w in words[1:10])
        args = tuple(tuple(unquote(w).split("=", 1)) for w in words[10:])
        return cls(int(seq), float(when), int(conn), kind, name, args, int(size), int(fd), peer,  # type: ignore[arg-type]
                   client_id)


def short_text(value: bytes, limit: int) -> str:
    """``value`` as text, cut at ``limit`` characters."""
    out = value.decode(errors="replace")
    return out if len(out) <= limit else out[:limit - 1] + "…"


def _data(value: bytes) -> str:
    """How a job's data reads on an arrow: its size, and its start when that is text."""
    size = f"{len(value):,} B"
    head = value[:DATA_PREVIEW]
    try:
        text = head.decode()
    except UnicodeDecodeError:
        return size
    if not text or not text.isprintable():
        return size
    more = "…" if len(value) > DATA_PREVIEW else ""
    return f"{size} {text!r}{more}" if more else f"{size} {text!r}"


def key_arguments(ptype: int, args: Iterable[bytes]) -> tuple[tuple[str, str], ...]:
    """``args`` of a packet of type ``ptype`` as (name, text) pairs (see :class:`PacketEvent`)."""
    names = ARG_NAMES.get(ptype, ())
    out = []
    for name, value in zip(names, args):
        out.append((name, _data(value) if name == "data" else short_text(value, ARG_PREVIEW)))
    return tuple(out)


def describe_args(name: str, args: tuple[tuple[str, str], ...]) -> str:
    """The key arguments of a packet in a few words, as an arrow's second line shows them."""
    values = dict(args)
    parts = []
    for key, value in args:
        if key in ("numerator", "denominator", "known", "running", "aggregator") or (key == "unique" and not value):
            continue
        parts.append(f"[{value}]" if key == "data" else (f"unique={value}" if key == "unique" else value))
    if "numerator" in values:  # WORK_STATUS, STATUS_RES: n/d after the handle
        flags = [flag for flag in ("known", "running") if values.get(flag) == "1"]
        parts[1:1] = flags + [f"{values['numerator']}/{values.get('denominator', '?')}"]
    if name == TEXT:
        return values.get("line", "")
    return " ".join(parts)
