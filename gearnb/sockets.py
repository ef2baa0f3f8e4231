"""Socket options every gearnb connection sets: TCP_NODELAY and dead-peer detection.

A Gearman connection that goes quiet may be a dead peer behind a cut link: without
keepalive, a job server keeps a vanished worker's job assigned forever, and an idle worker
sleeps forever on a server that is gone. Keepalive probes find an idle dead peer
(30 s + 3 x 10 s); TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged,
which keepalive alone cannot probe.
"""

from __future__ import annotations

import socket

KEEPALIVE_IDLE = 30      # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 10  # seconds between probes
KEEPALIVE_COUNT = 3      # unanswered probes before the connection is declared dead
USER_TIMEOUT_MS = 60_000  # unacknowledged data older than this kills the connection (Linux)


def tune(sock: socket.socket | None) -> None:
    """TCP_NODELAY (no Nagle delay on small packets) and keepalive on a TCP socket."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has them all; elsewhere, what the platform offers
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass
