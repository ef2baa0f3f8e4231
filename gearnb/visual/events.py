"""One packet seen by the job server, as a trace keeps it: :class:`PacketEvent`.

The recorder (:mod:`.recorder`) makes the events on the server's thread, keeping each
packet's arguments as they came (:func:`raw_arguments`); what the arguments are called, and
how an arrow shows them (:attr:`PacketEvent.args`, :func:`describe_args`), is read from here
by the drawings (:mod:`.sequence`) and the task stream, only when they look.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote, quote_from_bytes, unquote, unquote_to_bytes

from ..protocol import PacketType

P = PacketType

# The first bytes of a job's data or result shown on an arrow, when they are printable text.
DATA_PREVIEW = 24
# Other arguments (handles, function names, uniques) are cut at this many characters.
ARG_PREVIEW = 64
# Bytes of a job's data an event keeps (enough for the preview, and to tell it is longer).
DATA_KEEP = DATA_PREVIEW + 4

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
# Argument names by event name: the packets', an admin line's, a state event's.
ARG_NAMES_BY_NAME: dict[str, tuple[str, ...]] = {P(t).name: names for t, names in ARG_NAMES.items()}
ARG_NAMES_BY_NAME[TEXT] = ("line",)
ARG_NAMES_BY_NAME[STATE] = ("abilities", "sleeping")
_DATA_LAST = frozenset(t for t, names in ARG_NAMES.items() if names[-1] == "data")


class PacketEvent(NamedTuple):
    """One thing the job server saw, in the order it saw them.

    ``kind``: ``"in"`` (a packet or admin line to the server), ``"out"`` (a packet from it),
    ``"state"`` (a connection already open when the trace began: its abilities and whether it
    sleeps), ``"closed"`` (the connection ended). ``name``: the packet type's name, ``"text"``
    for an admin line, ``""`` for the other kinds. ``conn`` numbers the connection within the
    trace; ``fd``, ``peer`` and ``client_id`` are the connection's at that moment. ``size`` is
    the packet's body in bytes; ``time`` is the server's ``time.perf_counter()`` (seconds).

    ``raw`` holds the packet's arguments as sent, the last one cut to DATA_KEEP bytes when it
    is a job's data; :attr:`args` and :meth:`arg` read them as text, by name (recording stays
    cheap: nothing is formatted until it is read).
    """

    seq: int
    time: float
    conn: int
    kind: str
    name: str
    raw: tuple[bytes, ...] = ()
    size: int = 0
    fd: int = -1
    peer: str = "-"
    client_id: str = "-"

    @property
    def args(self) -> tuple[tuple[str, str], ...]:
        """The arguments as (name, text) pairs; a job's data as its size (and start, if text)."""
        names = ARG_NAMES_BY_NAME.get(self.name or self.kind, ())
        return tuple((name, self._text(i, name)) for i, name in enumerate(names[:len(self.raw)]))

    def arg(self, name: str, default: str = "") -> str:
        """One argument as text (see :attr:`args`), or ``default``."""
        names = ARG_NAMES_BY_NAME.get(self.name or self.kind, ())
        if name in names:
            i = names.index(name)
            if i < len(self.raw):
                return self._text(i, name)
        return default

    def _text(self, i: int, name: str) -> str:
        value = self.raw[i]
        if name != "data":
            return short_text(value, ARG_PREVIEW)
        # The whole data's length: the body less the other arguments and their NULs.
        length = self.size - sum(len(a) + 1 for a in self.raw[:i])
        return _data(value, length)

    @property
    def detail(self) -> str:
        """The key arguments in a few words: ``H:vm:1 1/4``, ``addition [3 B]``."""
        return describe_args(self.name, self.args)

    def to_line(self) -> str:
        """This event as one line of the ``trace`` admin stream (see :meth:`from_line`)."""
        head = [str(self.seq), f"{self.time:.6f}", str(self.conn), self.kind, self.name or "-", str(self.size),
                str(self.fd), self.peer, self.client_id]
        return " ".join(["E", *(quote(field, safe=":/.-_") for field in head),
                         *(quote_from_bytes(value, safe=":/.-_") for value in self.raw)])

    @classmethod
    def from_line(cls, line: str) -> PacketEvent:
        words = line.split(" ")
        if len(words) < 10 or words[0] != "E":
            raise ValueError(f"not a trace event line: {line[:80]!r}")
        seq, when, conn, kind, name, size, fd, peer, client_id = (unquote(w) for w in words[1:10])
        raw = tuple(unquote_to_bytes(w) for w in words[10:])
        return cls(int(seq), float(when), int(conn), kind, "" if name == "-" else name, raw, int(size), int(fd),
                   peer, client_id)


def packet_name(ptype: int) -> str:
    """``PacketType(ptype).name`` without the enum's cost (this runs for every packet traced)."""
    name = _PACKET_NAMES.get(ptype)
    return name if name is not None else f"TYPE_{ptype}"


_PACKET_NAMES = {int(t): t.name for t in PacketType}


def raw_arguments(ptype: int, args: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """What an event keeps of a packet's arguments: all of them, a job's data cut short."""
    if args and ptype in _DATA_LAST and len(args[-1]) > DATA_KEEP:
        return (*args[:-1], args[-1][:DATA_KEEP])
    return args


def short_text(value: bytes, limit: int) -> str:
    """``value`` as text, cut at ``limit`` characters."""
    out = value.decode(errors="replace")
    return out if len(out) <= limit else out[:limit - 1] + "…"


def _data(head: bytes, length: int) -> str:
    """How a job's data reads on an arrow: its size, and its start when that is text."""
    size = f"{length:,} B"
    try:
        text = head[:DATA_PREVIEW].decode()
    except UnicodeDecodeError:
        return size
    if not text or not text.isprintable():
        return size
    return f"{size} {text!r}…" if length > DATA_PREVIEW else f"{size} {text!r}"


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
