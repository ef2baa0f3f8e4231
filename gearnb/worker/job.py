"""A job as a worker's function sees it: its handle, function, unique and data, and the
updates it sends while it runs (status, data, warnings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocol import PacketType as P, request

if TYPE_CHECKING:
    from .connection import _ServerConn


class Job:
    """A job being run: ``data``, ``handle``, ``unique``, ``function``; report back with
    :meth:`send_status`, :meth:`send_data`, :meth:`send_warning`."""

    __slots__ = ("handle", "function", "unique", "data", "_conn", "reducer")

    def __init__(self, conn: _ServerConn, handle: bytes, function: bytes, unique: bytes,
                 data: bytes, reducer: bytes = b"") -> None:
        self._conn = conn
        self.handle = handle
        self.function = function.decode(errors="replace")
        self.unique = unique
        self.data = data
        self.reducer = reducer

    @property
    def server(self) -> str:
        """The job server that assigned this job (its address as the worker was given it)."""
        return self._conn.address

    def send_status(self, numerator: int, denominator: int) -> None:
        """WORK_STATUS: how far along the job is (the client sees numerator/denominator)."""
        self._conn.send(request(P.WORK_STATUS, self.handle, str(int(numerator)).encode(),
                                str(int(denominator)).encode()))

    def send_data(self, data: bytes | str) -> None:
        """WORK_DATA: a partial result for the client (dropped where the server lacks it)."""
        self._conn.send_update(P.WORK_DATA, self.handle, _to_bytes(data))

    def send_warning(self, data: bytes | str) -> None:
        """WORK_WARNING: a warning for the client (dropped where the server lacks it)."""
        self._conn.send_update(P.WORK_WARNING, self.handle, _to_bytes(data))

    def __repr__(self) -> str:
        return f"<Job {self.function} {self.handle!r}>"


def _to_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a worker function must return bytes, str or None, not {type(value).__name__}")


