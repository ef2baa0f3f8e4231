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

The file holds job payloads (for pyexec: signed calls, replayable until they expire), so it
is created 0600 (its -wal and -shm files take its mode); an existing file others can read is
warned about. Uniques and function names are stored as TEXT holding the raw bytes, as
gearmand's ``sqlite3_bind_text`` does (not all are UTF-8). At start-up every row is checked:
one that no job server could run (a priority other than 0, 1, 2, an empty or oversized
function name or unique, a NUL in one, a bad run time) is logged and skipped, and stays in the
file for whoever wants to look at it; the good rows are loaded.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
import uuid
from typing import TYPE_CHECKING, Iterator, NamedTuple, Protocol

from ..protocol.packets import HIGH, LOW, MAX_FUNCTION_SIZE, MAX_UNIQUE_SIZE

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger("gearnb.server")

DEFAULT_TABLE = "gearman_queue"  # gearmand's --libsqlite3-table default
QUEUE_FILE_MODE = 0o600  # payloads in it can be sent again by whoever reads them


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
        _create_private(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.text_factory = bytes  # TEXT columns may hold any bytes (gearmand binds them raw)
        # WAL with synchronous=NORMAL: a committed job survives kill -9 of the server (the
        # write is in the OS before JOB_CREATED leaves) without an fsync per job.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (unique_key TEXT, function_name TEXT, priority INTEGER, "
            "data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))")
        self._in_transaction = False
        # Bytes bound as BLOB and cast to TEXT: the raw bytes in a TEXT column, as gearmand writes them.
        self._insert = (f"INSERT OR REPLACE INTO {table} (unique_key, function_name, priority, data, when_to_run) "
                        "VALUES (CAST(? AS TEXT), CAST(? AS TEXT), ?, ?, ?)")
        # Either storage class matches (a BLOB row written by another tool too); IN keeps the key's index.
        self._delete = (f"DELETE FROM {table} WHERE unique_key IN (CAST(? AS TEXT), ?) "
                        "AND function_name IN (CAST(? AS TEXT), ?)")

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
        self.db.execute(self._insert, (bytes(unique), bytes(job.function.name), job.priority, job.data,
                                       int(job.when or 0)))
        return unique

    def delete(self, job: Job) -> None:
        if not job.stored:
            return
        self._begin()
        unique, name = bytes(job.stored), bytes(job.function.name)
        self.db.execute(self._delete, (unique, unique, name, name))

    def commit(self) -> None:
        if self._in_transaction:
            self.db.execute("COMMIT")
            self._in_transaction = False

    def load(self) -> Iterator[StoredJob]:
        """The stored jobs a job server can run; each other row is logged and skipped."""
        rows = self.db.execute(
            f"SELECT rowid, unique_key, function_name, priority, data, when_to_run FROM {self.table} ORDER BY rowid")
        skipped = 0
        for rowid, unique, function, priority, data, when in rows.fetchall():
            job = StoredJob(_as_bytes(unique), _as_bytes(function), priority, _as_bytes(data), when)
            fault = _fault(job)
            if fault:
                skipped += 1
                log.error("persistent queue %s: row %d (function %r, unique %r) skipped: %s; it stays in the file",
                          self.path, rowid, job.function[:80], job.unique[:80], fault)
                continue
            yield job._replace(priority=int(priority), when=int(when or 0))
        if skipped:
            log.error("persistent queue %s: %d rows skipped (see above); the other jobs are queued", self.path, skipped)

    def close(self) -> None:
        self.commit()
        self.db.close()


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode(errors="surrogateescape")
    if isinstance(value, (int, float)):  # a number in a TEXT/BLOB column: its text, as SQLite gives it
        return str(value).encode()
    return bytes(value)  # type: ignore[arg-type]


def _fault(job: StoredJob) -> str:
    """Why no job server could run this row ("" if it can): each check names the limit."""
    if type(job.priority) is not int or not HIGH <= job.priority <= LOW:
        return f"priority {job.priority!r} is not 0 (high), 1 (normal) or 2 (low)"
    if not job.function:
        return "the function name is empty"
    if len(job.function) > MAX_FUNCTION_SIZE:
        return f"the function name is {len(job.function)} bytes, more than gearmand's {MAX_FUNCTION_SIZE}"
    if len(job.unique) > MAX_UNIQUE_SIZE:
        # gearmand 1.1.20 takes a 64-byte unique, keeps it as 63 bytes and a NUL, and hands the
        # job out with a NUL in front of its data: such a row is not run half-broken here.
        return (f"the unique is {len(job.unique)} bytes, more than the {MAX_UNIQUE_SIZE} a job server keeps "
                f"intact")
    if b"\0" in job.function or b"\0" in job.unique:
        return "a NUL byte in the function name or unique (Gearman separates arguments with NUL)"
    if job.when is not None and (type(job.when) is not int or job.when < 0):
        return f"when_to_run {job.when!r} is not a time in seconds since the epoch"
    return ""


def _create_private(path: str) -> None:
    """Create the queue file 0600 if it does not exist (whatever the umask); warn if an
    existing one can be read by others."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), QUEUE_FILE_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            log.warning("persistent queue %s can be read by other users (mode %04o): its job payloads can be "
                        "submitted again by anyone who reads them; run `chmod 600 %s`", path, mode, path)
        return
    try:
        os.fchmod(fd, QUEUE_FILE_MODE)
    finally:
        os.close(fd)


def open_queue(spec: str | None) -> Queue | None:
    """``sqlite:PATH`` (the only kind so far) -> a queue; None -> no persistence."""
    if not spec:
        return None
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        path, _, table = rest.partition("#")
        return SqliteQueue(path, table or DEFAULT_TABLE)
    raise ValueError(f"unknown queue {spec!r}: expected sqlite:PATH (optionally sqlite:PATH#TABLE)")
