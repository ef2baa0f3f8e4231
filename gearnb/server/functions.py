"""Functions: per-name priority queues, their job counts, and the workers that can run them.

Which of those workers sleep, and how many were woken, is kept here but changed only by the
wake-up machine in :mod:`.workers`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from ..protocol import HIGH, LOW, NORMAL

if TYPE_CHECKING:
    from .jobs import Job
    from .workers import WorkerRecord

PRIORITIES = (HIGH, NORMAL, LOW)


class Function:
    """Everything the server knows about one function name.

    Queues are OrderedDicts (handle -> job) so that a queued job can leave from the middle in
    O(1) - a client that disconnects, ``cancel job`` - while the head is taken FIFO.
    """

    __slots__ = (
        "name", "queues", "queued", "running", "scheduled", "workers", "sleepers", "waking",
        "by_unique", "max_queue",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: tuple[OrderedDict[bytes, Job], ...] = (OrderedDict(), OrderedDict(), OrderedDict())
        self.queued = 0      # jobs waiting in the queues
        self.running = 0     # jobs assigned to a worker
        self.scheduled = 0   # epoch jobs not yet due
        self.workers: dict[WorkerRecord, None] = {}   # workers that can do it (ordered set)
        self.sleepers: dict[WorkerRecord, None] = {}  # of those, asleep and not yet woken
        self.waking = 0      # NOOPs sent for this function whose worker has not grabbed yet
        self.by_unique: dict[bytes | tuple[bytes, bytes], Job] = {}  # Job.key -> job
        # Per priority of the job submitted; 0 means unlimited (gearmand's default).
        self.max_queue = [0, 0, 0]

    @property
    def total(self) -> int:
        """What gearmand's ``status`` calls TOTAL: queued, running and scheduled (epoch) jobs."""
        return self.queued + self.running + self.scheduled

    def queue_full(self, priority: int) -> bool:
        # gearmand compares the limit of the new job's priority with *all* the function's jobs
        # (its job_total: every priority, running ones too), not with that priority's queue.
        limit = self.max_queue[priority]
        return limit > 0 and self.total >= limit

    def push(self, job: Job, front: bool = False) -> None:
        queue = self.queues[job.priority]
        queue[job.handle] = job
        if front:
            queue.move_to_end(job.handle, last=False)
        self.queued += 1

    def pop(self) -> Job | None:
        """Take the oldest job of the highest priority waiting, if any."""
        if not self.queued:
            return None
        for queue in self.queues:
            if queue:
                self.queued -= 1
                return queue.popitem(last=False)[1]
        return None  # pragma: no cover - queued > 0 means one queue is non-empty

    def head_priority(self) -> int | None:
        if self.queued:
            for priority, queue in enumerate(self.queues):
                if queue:
                    return priority
        return None

    def remove(self, job: Job) -> bool:
        """Take a queued job out of its queue; False if it was not queued here."""
        queue = self.queues[job.priority]
        if queue.pop(job.handle, None) is None:
            return False
        self.queued -= 1
        return True

    def __repr__(self) -> str:
        return f"<Function {self.name!r} queued={self.queued} running={self.running}>"
