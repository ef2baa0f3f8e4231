"""The persistent queue: background jobs survive a crash of the job server.

``gearnb server --queue sqlite:PATH`` keeps every background job in an SQLite file with
gearmand's libsqlite3 table layout, so one file moves between the gearnb server and
gearmand (``gearmand -q libsqlite3 --libsqlite3-db PATH``)::

    CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT, priority INTEGER,
                                data BLOB, when_to_run INTEGER,
                                PRIMARY KEY (unique_key, function_name))

A job is written before its JOB_CREATED leaves (the server commits in :meth:`flush`, just
before it writes replies) and deleted when it ends. Foreground jobs are never stored, as in
gearmand: their client is gone after a crash.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import uuid
from typing import TYPE_CHECKING, Iterator, NamedTuple, Protocol

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger("gearnb.server")

DEFAULT_TABLE = "gearman_queue"  # gearmand's --libsqlite3-table default


class StoredJob(NamedTuple):
    unique: bytes
    function: bytes
    priority: int
    data: bytes
    when: int


class Queue(Protocol):
    def store(self, job: Job) -> bytes: ...

    def delete(self, job: Job) -> None: ...

    def commit(self) -> None: ...

    def load(self) -> Iterator[StoredJob]: ...

    def close(self) -> None: ...


class SqliteQueue:
    """Background jobs in an SQLite file, in gearmand's libsqlite3 layout."""

    def __init__(self, path: str, table: str = DEFAULT_TABLE) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise ValueError(f"bad table name {table!r}")
        self.path = path
        self.table = table
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL with synchronous=NORMAL: a committed job survives kill -9 of the server (the
        # write is in the OS before JOB_CREATED leaves) without an fsync per job.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (unique_key TEXT, function_name TEXT, priority INTEGER, "
            "data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))")
        self._in_transaction = False
        self._insert = (f"INSERT OR REPLACE INTO {table} (unique_key, function_name, priority, data, when_to_run) "
                        "VALUES (?, ?, ?, ?, ?)")
        self._delete = f"DELETE FROM {table} WHERE unique_key = ? AND function_name = ?"

    def _begin(self) -> None:
        if not self._in_transaction:
            self.db.execute("BEGIN")
            self._in_transaction = True

    def store(self, job: Job) -> bytes:
        """Write the job (in the open transaction); returns the unique it is stored under.

        gearmand's table needs a unique: a job submitted without one gets a UUID here, as
        libgearman gives every background job.
        """
        unique = job.unique or str(uuid.uuid4()).encode()
        self._begin()
        self.db.execute(self._insert, (unique.decode(errors="surrogateescape"),
                                       job.function.name.decode(errors="surrogateescape"),
                                       job.priority, job.data, int(job.when or 0)))
        return unique

    def delete(self, job: Job) -> None:
        if not job.stored:
            return
        self._begin()
        self.db.execute(self._delete, (job.stored.decode(errors="surrogateescape"),
                                       job.function.name.decode(errors="surrogateescape")))

    def commit(self) -> None:
        if self._in_transaction:
            self.db.execute("COMMIT")
            self._in_transaction = False

    def load(self) -> Iterator[StoredJob]:
        rows = self.db.execute(
            f"SELECT unique_key, function_name, priority, data, when_to_run FROM {self.table} ORDER BY rowid")
        for unique, function, priority, data, when in rows.fetchall():
            yield StoredJob(_as_bytes(unique), _as_bytes(function), int(priority or 0),
                            _as_bytes(data), int(when or 0))

    def close(self) -> None:
        self.commit()
        self.db.close()


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode(errors="surrogateescape")
    return bytes(value)  # type: ignore[arg-type]


def open_queue(spec: str | None) -> Queue | None:
    """``sqlite:PATH`` (the only kind so far) -> a queue; None -> no persistence."""
    if not spec:
        return None
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        path, _, table = rest.partition("#")
        return SqliteQueue(path, table or DEFAULT_TABLE)
    raise ValueError(f"unknown queue {spec!r}: expected sqlite:PATH (optionally sqlite:PATH#TABLE)")
