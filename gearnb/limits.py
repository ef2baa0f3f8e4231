"""The one packet-size setting, and how sizes are written and said.

``max_packet_size`` is the largest Gearman packet body a gearnb process sends or accepts:
the job server (``gearnb server --max-packet-size``), workers (``Worker(max_packet_size=)``,
``gearnb worker --max-packet-size``), clients (``Client``, ``Executor``, ``gearnb.connect``,
``gearnb.local``). Left unset, each takes ``GEARNB_MAX_PACKET_SIZE`` from its environment
(children of the local cluster inherit it), else the protocol's own limit: a packet's size
field is 32 bits, so a body holds at most 4 GiB - 1 bytes. Memory is not reserved up front
for that: a receiver's buffer grows as the bytes arrive, and the job server has a global
bound of its own (``--max-memory``, :mod:`gearnb.server.bounds`).

Order of calls: constructors call :func:`max_packet_size` with what they were given; a side
that finds a packet too large says so with :func:`too_large`, which names the limit and the
setting that raises it.
"""

from __future__ import annotations

import os
import re

# The Gearman header's size field is an unsigned 32-bit integer (gearman-protocol.md, 1.2).
PROTOCOL_MAX_PACKET = 0xFFFFFFFF
MAX_PACKET_ENV = "GEARNB_MAX_PACKET_SIZE"
# Below this a pyexec call of a trivial function does not fit (signed envelope: ~200 bytes).
MIN_PACKET_SIZE = 1024

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)


def parse_size(text: str | int) -> int:
    """Bytes from ``"134217728"``, ``"512M"``, ``"1GiB"``, ``"1.5g"`` (binary units)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"not a size: {text!r} (write bytes, or a number with K, M, G or T: 512M, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def max_packet_size(value: int | str | None = None) -> int:
    """The packet-size limit to use: ``value`` if given, else ``GEARNB_MAX_PACKET_SIZE``, else
    the protocol's limit. Raises ValueError for a size outside 1 KiB .. 4 GiB - 1."""
    where = "max_packet_size"
    if value is None:
        value = os.environ.get(MAX_PACKET_ENV) or PROTOCOL_MAX_PACKET
        where = MAX_PACKET_ENV
    size = parse_size(value)
    if not MIN_PACKET_SIZE <= size <= PROTOCOL_MAX_PACKET:
        raise ValueError(f"{where} must be between {MIN_PACKET_SIZE} bytes and the protocol's limit of "
                         f"{PROTOCOL_MAX_PACKET} bytes (4 GiB - 1), not {size}")
    return size


def said(size: int) -> str:
    """``size`` bytes, as people read it: ``1,073,741,824 bytes (1.0 GiB)``."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size:,} bytes ({size / unit:.1f} {name})"
    return f"{size:,} bytes"


# Who has a limit, and the setting that raises it there.
SERVER_SETTING = f"'gearnb server --max-packet-size' (or {MAX_PACKET_ENV} where the server starts)"
WORKER_SETTING = (f"'gearnb worker --max-packet-size', Worker(max_packet_size=) or {MAX_PACKET_ENV} "
                  f"where the workers start")
CLIENT_SETTING = (f"max_packet_size= of Client / Executor / gearnb.connect / gearnb.local, or "
                  f"{MAX_PACKET_ENV}")


def too_large(what: str, size: int, limit: int, whose: str, setting: str) -> str:
    """The sentence for a packet over a limit: what, how big, whose limit, how to raise it."""
    if limit >= PROTOCOL_MAX_PACKET:
        return (f"{what} of {said(size)} exceeds the Gearman protocol's limit of {said(PROTOCOL_MAX_PACKET)} "
                f"per packet; send it in smaller pieces")
    return f"{what} of {said(size)} exceeds {whose} max packet size of {said(limit)}; raise it with {setting}"
