"""Job server addresses: ``"h1:4730,h2"``, lists of them, and the GEARMAN_SERVERS variable."""

from __future__ import annotations

import os
from typing import Iterable, Union

DEFAULT_PORT = 4730  # IANA's Gearman port
ServerSpec = Union[str, Iterable[str], None]


def parse_servers(servers: ServerSpec = None) -> list[str]:
    """Normalise server specs to ``["host:port", ...]``.

    ``None`` reads ``GEARMAN_SERVERS`` (as libgearman does), then falls back to
    ``127.0.0.1:4730``. Entries may be separated by commas; a missing port means 4730;
    IPv6 addresses go in brackets (``[::1]:4730``).
    """
    if servers is None:
        servers = os.environ.get("GEARMAN_SERVERS") or f"127.0.0.1:{DEFAULT_PORT}"
    if isinstance(servers, str):
        servers = [servers]
    out: list[str] = []
    for spec in servers:
        for part in str(spec).split(","):
            part = part.strip()
            if part:
                host, port = split_address(part)
                out.append(join_address(host, port))
    if not out:
        raise ValueError("no job servers given (expected 'host:port[,host:port...]')")
    return out


def split_address(address: str) -> tuple[str, int]:
    address = address.strip()
    if address.startswith("["):  # [v6]:port
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":") or str(DEFAULT_PORT)
    elif address.count(":") == 1:
        host, port = address.split(":")
    elif ":" in address:  # a bare IPv6 address
        host, port = address, str(DEFAULT_PORT)
    else:
        host, port = address, str(DEFAULT_PORT)
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad job server address {address!r}: the port must be a number") from None
    return host or "127.0.0.1", number


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
