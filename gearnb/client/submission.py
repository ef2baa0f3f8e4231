"""One job submitted through a client: what is sent, where it went, how it ended.

The life of a submission is one field, ``state`` (as ``concurrent.futures.Future`` keeps
its ``_state``), changed only on the client's I/O thread:

    PENDING --JOB_CREATED--> CREATED --WORK_COMPLETE--> COMPLETE
       |                        +--WORK_FAIL / WORK_EXCEPTION--> FAILED
       +--refused by every server, no server, client closed--> REFUSED
    (a background job is COMPLETE at its JOB_CREATED)

Whoever submits it gives it one ``listener``, called on the I/O thread for each event -
CREATED, STATUS, DATA, WARNING - and once for END, the completion hook. What runs where is
the listener's business: a :class:`~gearnb.client.task.Task` queues its callbacks for the
thread that waits on it; the executor's map chunks hand themselves to the map's thread.
A submission that ended may be sent again (:meth:`reset`, then submit): a retry.
"""

from __future__ import annotations

from typing import Any, Callable

from ..protocol import PRIORITY_NAMES, PT, SUBMIT_TYPE_FOR

# States
PENDING = 0   # not answered yet (being sent, or waiting for JOB_CREATED)
CREATED = 1   # JOB_CREATED came: queued or running on the server
COMPLETE = 2  # WORK_COMPLETE (a background job: JOB_CREATED)
FAILED = 3    # WORK_FAIL or WORK_EXCEPTION (``exception_data`` holds the latter's data)
REFUSED = 4   # never ran: every server refused it, none could be reached, or the client closed
ENDED = COMPLETE  # states >= this are final

# Events given to the listener: (submission, event, argument)
EV_CREATED = 0   # argument: the handle
EV_STATUS = 1    # argument: (numerator, denominator)
EV_DATA = 2      # argument: WORK_DATA bytes
EV_WARNING = 3   # argument: WORK_WARNING bytes
EV_END = 4       # argument: None; ``state`` says how it ended

Listener = Callable[["Submission", int, Any], None]


def _ignore(submission: Submission, event: int, argument: Any) -> None:
    pass


class Submission:
    """A job to submit and its outcome (see the module docstring). ``priority`` is
    ``"high"``, ``"normal"`` or ``"low"``; ``when`` (epoch seconds) makes it an epoch job."""

    __slots__ = (
        "function", "data", "priority", "background", "unique", "when", "submit_type", "state",
        "handle", "server", "result", "exception_data", "error", "status", "tried", "listener",
    )

    def __init__(self, function: bytes, data: bytes, *, priority: str = "normal", background: bool = False,
                 unique: bytes = b"", when: float | None = None, listener: Listener | None = None) -> None:
        if priority not in PRIORITY_NAMES:
            raise ValueError(f"priority must be 'high', 'normal' or 'low', not {priority!r}")
        self.function = function
        self.data = data
        self.priority = priority
        self.background = background
        self.unique = unique
        self.when = when
        # The SUBMIT packet type that sends it (epoch jobs are background jobs of their own type).
        self.submit_type = (PT.SUBMIT_JOB_EPOCH if when is not None
                            else SUBMIT_TYPE_FOR[(PRIORITY_NAMES[priority], background)])
        self.listener: Listener = listener or _ignore
        self.state = PENDING
        self.handle: bytes | None = None
        self.server: str | None = None  # the job server that has (or had) it
        self.result: bytes | None = None
        self.exception_data: bytes | None = None  # WORK_EXCEPTION's data, as sent
        self.error: BaseException | None = None  # why it was REFUSED
        self.status: tuple[int, int] = (0, 0)
        self.tried: set[str] = set()  # servers that refused this submission

    @property
    def finished(self) -> bool:
        return self.state >= ENDED

    @property
    def successful(self) -> bool:
        return self.state == COMPLETE

    # -- on the I/O thread ----------------------------------------------------------------
    def created(self, handle: bytes, server: str) -> None:
        """JOB_CREATED from ``server``."""
        self.handle = handle
        self.server = server
        if self.background:
            self.state = COMPLETE
            self.listener(self, EV_CREATED, handle)
            self.listener(self, EV_END, None)
            return
        self.state = CREATED
        self.listener(self, EV_CREATED, handle)

    def end(self, state: int, result: bytes | None = None, error: BaseException | None = None) -> None:
        """The one way a submission ends: set how, then call the listener's END (once)."""
        if self.state >= ENDED:
            return
        self.state = state
        if result is not None:
            self.result = result
        if error is not None:
            self.error = error
        self.listener(self, EV_END, None)

    def reset(self) -> None:
        """Make an ended submission sendable again (a retry): a new job, a new handle."""
        self.state = PENDING
        self.handle = None
        self.result = self.exception_data = self.error = None
        self.status = (0, 0)
        self.tried = set()

    def __repr__(self) -> str:
        state = ("pending", "created", "complete", "failed", "refused")[self.state]
        return f"<{type(self).__name__} {self.function!r} handle={self.handle!r} {state}>"
