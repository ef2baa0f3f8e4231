"""The Gearman packet table: every packet type, its number and how many arguments it carries.

Numbers and argument counts come from gearmand's PROTOCOL document and
``libgearman/command.cc`` (see ../shared/reference/gearman-protocol.md, section 1.2).
The last argument of a packet is "the rest of the data" and may contain NUL bytes.
"""

from __future__ import annotations

import enum
import struct
import types
from typing import NamedTuple

REQ = b"\0REQ"  # magic of packets sent to the job server
RES = b"\0RES"  # magic of packets sent by the job server
HEADER = struct.Struct(">4sII")  # magic, type, body size; all big-endian
HEADER_SIZE = HEADER.size  # 12

# The header's size field is 32 bits: no packet body is larger than this. It is the default
# limit too (gearnb.limits: the one max_packet_size setting): receivers grow a packet's buffer
# as its bytes arrive, and the job server bounds its memory as a whole (server/bounds.py).
DEFAULT_MAX_PACKET_SIZE = 0xFFFFFFFF

# Limits from gearmand: GEARMAND_JOB_HANDLE_SIZE 64 and GEARMAN_MAX_UNIQUE_SIZE 64, each
# including a terminating NUL, and GEARMAN_FUNCTION_MAX_SIZE 512.
MAX_HANDLE_SIZE = 63
MAX_UNIQUE_SIZE = 63
MAX_FUNCTION_SIZE = 512


class PacketType(enum.IntEnum):
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


P = PacketType

# The same numbers as plain ints under the same names, for code that runs for every packet:
# reading PacketType.X goes through the enum metaclass each time (~0.1 us on CPython 3.11),
# an attribute of this namespace is one dict lookup.
PT = types.SimpleNamespace(**{member.name: int(member) for member in PacketType})

# Number of arguments of each type. The last one may hold NULs.
# SUBMIT_REDUCE_JOB has 5 fields: function, unique, reducer, an unused aggregator, data
# (libgearman's command.cc, not the 3+data that PROTOCOL lists).
ARG_COUNT: dict[int, int] = {
    P.CAN_DO: 1, P.CANT_DO: 1, P.RESET_ABILITIES: 0, P.PRE_SLEEP: 0, P.UNUSED: 0, P.NOOP: 0,
    P.SUBMIT_JOB: 3, P.JOB_CREATED: 1, P.GRAB_JOB: 0, P.NO_JOB: 0, P.JOB_ASSIGN: 3,
    P.WORK_STATUS: 3, P.WORK_COMPLETE: 2, P.WORK_FAIL: 1, P.GET_STATUS: 1,
    P.ECHO_REQ: 1, P.ECHO_RES: 1, P.SUBMIT_JOB_BG: 3, P.ERROR: 2, P.STATUS_RES: 5,
    P.SUBMIT_JOB_HIGH: 3, P.SET_CLIENT_ID: 1, P.CAN_DO_TIMEOUT: 2, P.ALL_YOURS: 0,
    P.WORK_EXCEPTION: 2, P.OPTION_REQ: 1, P.OPTION_RES: 1, P.WORK_DATA: 2, P.WORK_WARNING: 2,
    P.GRAB_JOB_UNIQ: 0, P.JOB_ASSIGN_UNIQ: 4, P.SUBMIT_JOB_HIGH_BG: 3, P.SUBMIT_JOB_LOW: 3,
    P.SUBMIT_JOB_LOW_BG: 3, P.SUBMIT_JOB_SCHED: 8, P.SUBMIT_JOB_EPOCH: 4,
    P.SUBMIT_REDUCE_JOB: 5, P.SUBMIT_REDUCE_JOB_BACKGROUND: 5, P.GRAB_JOB_ALL: 0,
    P.JOB_ASSIGN_ALL: 5, P.GET_STATUS_UNIQUE: 1, P.STATUS_RES_UNIQUE: 6,
}
assert len(ARG_COUNT) == 42

# Submit packets -> (priority, background). Priorities: 0 high, 1 normal, 2 low.
HIGH, NORMAL, LOW = 0, 1, 2
PRIORITY_NAMES = {"high": HIGH, "normal": NORMAL, "low": LOW}
SUBMIT_TYPES: dict[int, tuple[int, bool]] = {
    P.SUBMIT_JOB: (NORMAL, False),
    P.SUBMIT_JOB_BG: (NORMAL, True),
    P.SUBMIT_JOB_HIGH: (HIGH, False),
    P.SUBMIT_JOB_HIGH_BG: (HIGH, True),
    P.SUBMIT_JOB_LOW: (LOW, False),
    P.SUBMIT_JOB_LOW_BG: (LOW, True),
    P.SUBMIT_JOB_EPOCH: (NORMAL, True),
    P.SUBMIT_REDUCE_JOB: (NORMAL, False),
    P.SUBMIT_REDUCE_JOB_BACKGROUND: (NORMAL, True),
}
SUBMIT_TYPE_FOR: dict[tuple[int, bool], PacketType] = {
    (NORMAL, False): P.SUBMIT_JOB, (NORMAL, True): P.SUBMIT_JOB_BG,
    (HIGH, False): P.SUBMIT_JOB_HIGH, (HIGH, True): P.SUBMIT_JOB_HIGH_BG,
    (LOW, False): P.SUBMIT_JOB_LOW, (LOW, True): P.SUBMIT_JOB_LOW_BG,
}


class Packet(NamedTuple):
    """One decoded binary packet. ``args`` holds exactly ``ARG_COUNT[type]`` byte strings."""

    magic: bytes
    type: int
    args: tuple[bytes, ...]

    def __repr__(self) -> str:
        try:
            name = PacketType(self.type).name
        except ValueError:  # pragma: no cover - decoded packets always have a known type
            name = str(self.type)
        side = "REQ" if self.magic == REQ else "RES"
        return f"Packet({side} {name} {self.args!r})"


# What a raw Decoder hands out for a line of the text protocol: (ADMIN_LINE, text).
ADMIN_LINE = -1


class AdminLine(NamedTuple):
    """One line of the text (administrative) protocol, without its line ending."""

    text: str
