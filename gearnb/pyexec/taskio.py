"""What a running task sends its caller besides the result: its output and how far it got.

One Gearman packet type carries both, WORK_DATA, as *batches*: ``BATCH_MARK`` then a msgpack
list ``[done, records]``. ``done`` is how many calls of the job's chunk have finished;
``records`` are ``[offset, stream, text]``: the text (UTF-8 bytes) that call ``offset`` of the
chunk wrote to ``stream`` (0 stdout, 1 stderr). So each line is the caller's to tag with the
map item that printed it, however the items were chunked.

Worker side, :class:`TaskChannel` (one per runner; the runner calls, per job:
:meth:`~TaskChannel.begin`, sets :attr:`~TaskChannel.current` before each call,
:meth:`~TaskChannel.end` before it sends the result). A task's ``sys.stdout`` and
``sys.stderr`` append records; a batch goes out

* when the job ends, before its result (a short job sends its output in one packet, or none);
* every ``REPORT_INTERVAL`` from a flusher thread once the job has run that long: the records
  of calls that have finished, with those of the running call only once it has printed for
  ``ITEM_HOLD`` (the lines of one call stay together, and a long call still streams), and
  ``done`` whenever it moved: the caller's progress moves per item even inside a chunk, and
  only jobs longer than ``REPORT_INTERVAL`` pay for a packet more;
* at once when ``BATCH_CHARS`` characters are waiting.

Each call's output is cut at the call's ``output_limit`` (characters), with a note saying how
much was left out: a task that prints megabytes does not freeze the notebook.

Caller side: :func:`decode_batch`. A WORK_DATA without the mark (a gearnb worker from before
batches) is read as stdout text of the chunk's first call.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable

import msgpack

BATCH_MARK = b"\xc1"  # a byte msgpack never uses: a batch is never taken for plain text
STDOUT, STDERR = 0, 1
# Seconds between a running job's batches. ipykernel sends a cell's output every 0.2 s
# (OutStream.flush_interval): worker output reaches the cell about as fast as local output.
REPORT_INTERVAL = 0.2
# Seconds the running call's lines wait for the call to end, so that they reach the cell
# together, before they go out anyway.
ITEM_HOLD = 1.0
# Characters waiting that make a batch go out at once: one WORK_DATA packet stays small.
BATCH_CHARS = 64 * 1024
# Characters of output kept per call. The Jupyter server drops a kernel's output above 1 MB/s
# averaged over 3 s (ZMQChannelsWebsocketConnection.iopub_data_rate_limit): a few calls at
# this limit stay under it.
DEFAULT_OUTPUT_LIMIT = 256 * 1024
FLUSHER_IDLE = 2.0  # seconds without a job after which the flusher thread ends (it restarts)

Record = tuple[int, int, bytes]  # (offset in the chunk, stream, text)


def encode_batch(done: int, records: list[Record]) -> bytes:
    return BATCH_MARK + msgpack.packb([done, [list(r) for r in records]], use_bin_type=True)


def decode_batch(payload: bytes) -> tuple[int | None, list[Record]]:
    """``(done, records)`` of a WORK_DATA payload; a payload that is not a batch is plain text
    of the first call, and a malformed batch is shown as it is rather than lost."""
    if payload[:1] != BATCH_MARK:
        return None, [(0, STDOUT, bytes(payload))]
    try:
        done, records = msgpack.unpackb(payload[1:], raw=False)
        out = [(int(offset), STDERR if stream == STDERR else STDOUT, bytes(text)) for offset, stream, text in records]
        return int(done), out
    except Exception:  # noqa: BLE001 - worker data is data: show it, never fail on it
        return None, [(0, STDOUT, bytes(payload))]


def truncation_note(dropped: int, limit: int) -> str:
    return (f"[gearnb: {dropped:,} more characters of this task's output not shown; a task's output "
            f"is cut at output_limit={limit:,} characters (an option of map/submit/Executor)]\n")


class _TaskStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` inside a task: writes become records of the channel."""

    def __init__(self, channel: TaskChannel, stream: int) -> None:
        self._channel = channel
        self._stream = stream

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._channel.write(self._stream, text)
        return len(text)

    def flush(self) -> None:
        pass  # batches go by time and size: see the module docstring


_channels: weakref.WeakSet[TaskChannel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for channel in list(_channels):
        channel.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class TaskChannel:
    """A job's output and progress on their way to the caller (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.job: Any = None  # the job running (send_data, send_status), None between jobs
        self.current = 0  # offset in the chunk of the call running: set by the runner's loop
        self.limit = DEFAULT_OUTPUT_LIMIT
        self.stdout = _TaskStream(self, STDOUT)
        self.stderr = _TaskStream(self, STDERR)
        self._records: list[list[Any]] = []  # [offset, stream, [text pieces]]
        self._waiting = 0  # characters in _records
        self._item = -1  # the call whose output _used counts
        self._item_since = 0.0  # when that call first wrote
        self._used = 0
        self._dropped = 0  # characters of _item's output left out
        self._dropped_stream = STDOUT
        self._line_open = False  # the call's kept output ends inside a line
        self._started = 0.0  # when the job began (monotonic)
        self._sent_done = -1
        self._idle_since = 0.0
        self._thread: threading.Thread | None = None
        self._detached = False  # in a process forked from a task: output goes to the real streams
        _channels.add(self)

    # -- the runner's calls (the task's thread) ---------------------------------------------
    def begin(self, job: Any, limit: int | None = None) -> None:
        self.current = 0
        self.limit = DEFAULT_OUTPUT_LIMIT if limit is None else max(int(limit), 0)
        self._item, self._used, self._dropped, self._line_open = -1, 0, 0, False
        self._sent_done = -1
        self._started = time.monotonic()
        with self._lock:  # against the flusher ending just now (it clears _thread, under the lock)
            self.job = job  # last: the flusher reads the fields above once it sees a job
            if self._thread is None:
                self._thread = threading.Thread(target=self._flusher, name="gearnb-task-output", daemon=True)
                self._thread.start()

    def end(self) -> None:
        """The job ended: send everything it wrote (before the result goes)."""
        with self._lock:
            job = self.job
            if job is not None:
                self._note_dropped()
                if self._records:
                    self._send(job, self._take(everything=True))
            self.job = None
            self._idle_since = time.monotonic()

    def send_status(self, numerator: int, denominator: int) -> None:
        """WORK_STATUS for ``gearnb.report()``, in order with the batches."""
        with self._lock:
            if self.job is not None:
                self.job.send_status(numerator, denominator)

    # -- writes (any thread of the task) ------------------------------------------------------
    def write(self, stream: int, text: str) -> None:
        if self._detached:
            (sys.__stdout__ if stream == STDOUT else sys.__stderr__).write(text)
            return
        with self._lock:
            if self.job is None:  # a thread of the task writing after its job ended
                (sys.__stdout__ if stream == STDOUT else sys.__stderr__).write(text)
                return
            offset = self.current
            if offset != self._item:
                self._note_dropped()
                self._item, self._used, self._item_since, self._line_open = offset, 0, time.monotonic(), False
            room = self.limit - self._used
            if len(text) > room:
                self._dropped += len(text) - max(room, 0)
                self._dropped_stream = stream
                text = text[:max(room, 0)]
                if not text:
                    return
            self._used += len(text)
            self._line_open = not text.endswith("\n")
            self._append(offset, stream, text)
            if self._waiting >= BATCH_CHARS:
                self._send(self.job, self._take(everything=True))

    def _append(self, offset: int, stream: int, text: str) -> None:
        records = self._records
        if records and records[-1][0] == offset and records[-1][1] == stream:
            records[-1][2].append(text)
        else:
            records.append([offset, stream, [text]])
        self._waiting += len(text)

    def _note_dropped(self) -> None:
        """The call ``_item`` is over: say how much of its output was left out, if any."""
        if self._dropped:
            note = truncation_note(self._dropped, self.limit)
            self._append(self._item, self._dropped_stream, "\n" + note if self._line_open else note)
            self._dropped = 0
            self._line_open = False

    # -- batches (under the lock) -------------------------------------------------------------
    def _take(self, everything: bool, now: float = 0.0) -> list[Record]:
        """The records due: all, or those of finished calls (and of the running call once it
        has printed for ITEM_HOLD, but for its unfinished last line)."""
        records = self._records
        if not records:
            return []
        if everything:
            taken, self._records = records, []
        else:
            running = self.current
            split = len(records)
            while split and records[split - 1][0] >= running:
                split -= 1
            if split < len(records) and now - self._item_since >= ITEM_HOLD:
                split = len(records)
            taken, self._records = records[:split], records[split:]
            if split == len(records) and taken and taken[-1][0] >= running:
                # the running call's last line may be unfinished: it waits for its end
                text = "".join(taken[-1][2])
                whole, newline, rest = text.rpartition("\n")
                if rest:
                    if newline:
                        taken[-1][2] = [whole + newline]
                        self._records = [[taken[-1][0], taken[-1][1], [rest]]]
                    else:
                        self._records = [taken.pop()]
        out = [(offset, stream, "".join(pieces).encode(errors="replace")) for offset, stream, pieces in taken]
        self._waiting = sum(len(p) for r in self._records for p in r[2])
        return out

    def _send(self, job: Any, records: list[Record]) -> None:
        done = self.current
        self._sent_done = done
        job.send_data(encode_batch(done, records))

    def _flusher(self) -> None:
        with self._lock:
            while True:
                self._wake.wait(REPORT_INTERVAL)
                if self._detached:
                    return
                now = time.monotonic()
                job = self.job
                if job is None:
                    if now - self._idle_since >= FLUSHER_IDLE:
                        self._thread = None
                        return
                    continue
                if now - self._started < REPORT_INTERVAL:
                    continue  # a short job sends its output with its end, and no progress
                records = self._take(everything=False, now=now)
                if records or self.current != self._sent_done:
                    try:
                        self._send(job, records)
                    except OSError:  # the worker went away: the task process ends with it
                        self._thread = None
                        return

    def forked(self) -> None:
        """In a child forked by a task: its output goes to the process's own stdout/stderr."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread = None
        self._records = []
        self.job = None
        self._detached = True


def stream_name(stream: int) -> str:
    return "stderr" if stream == STDERR else "stdout"


SendData = Callable[[bytes], None]
