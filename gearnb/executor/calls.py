"""Python calls as pyexec jobs: the one collaborator ``submit()`` and ``map()`` share.

It owns the steps between a Python call and the Gearman layer, each done once here:
encode and sign a chunk of calls (:meth:`PyexecCalls.job`), hand jobs to the client
(:meth:`submit`, through ``Client.submit_many``), verify and decode an answer
(:meth:`outcome`), print a task's output in the calling cell (:meth:`print_output`) and
cancel queued jobs on their servers (:meth:`cancel`). Runs (:mod:`.runs`) decide what to
do with outcomes; this module never retries anything.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from ..admin import Admin
from ..client.submission import Submission
from ..client.task import JobHandle
from ..errors import JobFailed, ServerError
from ..pyexec import envelope
from ..pyexec.control import stop_jobs
from ..pyexec.sharing import ValueStore, value_store
from ..pyexec.keys import NO_KEY_HELP
from ..pyexec.runner import TIMING
from ..pyexec.signing import CallId, RefusedPayload, Signer, worker_refusal
from ..pyexec.taskio import DEFAULT_OUTPUT_LIMIT
from ..worker_text import shown

if TYPE_CHECKING:
    import contextvars

    from ..client import Client
    from ..pyexec.envelope import FunctionBlob, Sharer
    from .runs import Chunk

log = logging.getLogger("gearnb.executor")

# Cancelling a job needs its handle: wait this long for the JOB_CREATED of jobs submitted a
# moment ago (a loaded job server answers within milliseconds; a dead one never does).
CANCEL_CREATED_WAIT = 5.0
CANCEL_POLL = 0.002
ADMIN_TIMEOUT = 10.0  # seconds for a job server to answer the admin ``cancel job`` lines


class PyexecCalls:
    """Encodes, submits, decodes and cancels the pyexec jobs of one executor."""

    def __init__(self, client: Client, signer: Signer | None, function: bytes, *, show_output: bool = True,
                 ssl: Any = None, output_limit: int = DEFAULT_OUTPUT_LIMIT) -> None:
        self.client = client
        self._signer = signer
        self.function = function
        self.show_output = show_output
        self.output_limit = output_limit  # characters of output shown per task (taskio)
        self.ssl = ssl  # for the admin connections of cancel()
        self._store: ValueStore | None | bool = False  # False: not looked up yet

    @property
    def store(self) -> ValueStore | None:
        """This process's value store (large values through shared memory), None where there
        is none; started with the first job."""
        if self._store is False:
            self._store = value_store()
        return self._store  # type: ignore[return-value]

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            raise ValueError(NO_KEY_HELP)
        return self._signer

    # -- out ------------------------------------------------------------------------------
    def job(self, blob: FunctionBlob, chunk: Chunk, with_code: bool, priority: str,
            listener: Callable[[Submission, int, Any], None], sharer: Sharer | None = None,
            options: dict[str, Any] | None = None) -> Submission:
        """The signed pyexec job of ``chunk``'s calls: a map chunk's argument columns, or one
        call with keyword arguments. ``sharer``: takes large buffers out of the job;
        ``options``: how the worker runs the calls (taskio's output limit)."""
        store = self.store
        address = None if store is None else store.address
        if chunk.kwargs is None:
            parts = envelope.encode_map_chunk(blob, chunk.columns, with_code, sharer, address, options)
        else:
            args = tuple(column[0] for column in chunk.columns)
            parts = envelope.encode_call_parts(blob, [(args, chunk.kwargs)], with_code, False, sharer, address,
                                               options)
        # A new call (nonce) each time it is sent: a retry, a resend with the code or after a
        # worker said it did not run it (envelope.SignAgain) counts ``after`` the last one.
        payload, chunk.call = self.signer.sign_call(self.function, parts, after=chunk.call)
        if store is not None:
            store.expect(chunk.call.nonce)  # its worker may deliver a large result to the store
        return Submission(self.function, payload, priority=priority, listener=listener)

    def submit(self, jobs: list[Submission]) -> None:
        self.client.submit_many(jobs)

    # -- back -----------------------------------------------------------------------------
    def outcome(self, sub: Submission, call: CallId) -> tuple[list[Any], dict[int, BaseException], Any]:
        """Values and per-call exceptions of an ended job, the answer to ``call``, and when and
        where the worker ran it (the runner's TIMING, or None); raises for the job as a whole
        (:class:`envelope.NeedCode`, a refused payload, WORK_FAIL, the server's ERROR)."""
        if sub.error is not None:
            raise sub.error
        if sub.successful:
            payload = sub.result or b""
        elif sub.exception_data is not None:
            payload = sub.exception_data
        else:
            raise JobFailed("the job failed on the job server (WORK_FAIL): its worker died more times than "
                            "the server's --job-retries allows, or it was cancelled")
        store = self.store
        try:
            try:
                body = self.signer.verify_result(self.function, payload, call)  # only the answer to this call
            except RefusedPayload as refused:
                raise (refused if sub.successful else worker_refusal(payload, refused)) from None
            msg = envelope.decode_result(body, None if store is None else lambda ref: store.take(ref, call.nonce))
        finally:
            if store is not None:
                store.forget(call.nonce)  # what the worker delivered and this answer does not name
        if msg.get("need_code"):
            raise envelope.NeedCode()
        if "need_inline" in msg:
            raise envelope.NeedInline(shown(str(msg["need_inline"]).encode()))
        envelope.raise_if_not_run(msg, call)  # SignAgain: Run.settle sends it again, as for NeedCode
        if "fail" in msg:
            raise envelope.rebuild_error(msg["fail"])
        errors = {int(i): envelope.rebuild_error(r) for i, r in msg.get("e", {}).items()}
        return msg["values"], errors, msg.get(TIMING)

    def print_output(self, context: contextvars.Context, out: str, err: str) -> None:
        """Text of tasks' output, tagged and neutralised (:meth:`Run.show_output`): one write
        per stream, no flush - the stream sends it on its own schedule (ipykernel: every
        0.2 s, a cell's output together), so output of any volume makes few messages.

        Written on the I/O thread but in the calling thread's context: ipykernel uses a
        context variable to decide which cell output belongs to.
        """
        if self.show_output:
            context.run(_write, out, err)

    def flush_output(self, context: contextvars.Context) -> None:
        """Send what was written now (a run ended: its output before its result)."""
        context.run(_flush)

    # -- cancelling -----------------------------------------------------------------------
    def cancel(self, jobs: list[Submission], stop_running: bool = False) -> list[bool]:
        """``cancel job`` each job that waits in its server's queue; True where the server
        dropped it. Jobs a worker runs are left alone (gearmand would forget a running job it
        is asked to cancel, and its worker would run on) unless ``stop_running``: then their
        workers are asked to stop them (:mod:`gearnb.pyexec.control`). Waits briefly for the
        handles of jobs just submitted."""
        deadline = time.monotonic() + CANCEL_CREATED_WAIT
        while any(sub.handle is None and not sub.finished for sub in jobs) and time.monotonic() < deadline:
            time.sleep(CANCEL_POLL)
        live = [i for i, sub in enumerate(jobs) if sub.handle is not None and sub.server is not None
                and not sub.finished]
        dropped = [False] * len(jobs)
        if not live:
            return dropped
        try:
            statuses = self.client.statuses([JobHandle(jobs[i].handle, jobs[i].server) for i in live])
        except (OSError, TimeoutError) as exc:
            log.warning("could not ask which of %d jobs are running: %s", len(live), exc)
            return dropped
        queued: dict[str, list[int]] = {}
        running: dict[str, list[bytes]] = {}
        for i, status in zip(live, statuses):
            server, handle = jobs[i].server, jobs[i].handle
            assert server is not None and handle is not None
            if not status.running:
                queued.setdefault(server, []).append(i)
            elif stop_running:
                running.setdefault(server, []).append(handle)
        for server, indices in queued.items():
            try:
                with Admin(server, timeout=ADMIN_TIMEOUT, ssl=self.ssl) as admin:
                    answers = admin.cancel_many([jobs[i].handle or b"" for i in indices])
            except (OSError, ServerError) as exc:
                log.warning("could not cancel %d queued jobs on %s, which stay queued there: %s",
                            len(indices), server, exc)
                continue
            for i, answer in zip(indices, answers):
                dropped[i] = answer
        if running and self._signer is not None:
            stop_jobs(self._signer, running, ssl=self.ssl)
        return dropped


def _write(out: str, err: str) -> None:
    if out:
        sys.stdout.write(out)
    if err:
        sys.stderr.write(err)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed stream: nothing to send it to
            pass
