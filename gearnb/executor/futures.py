"""GearnbFuture: a concurrent.futures.Future for one pyexec call, awaitable and cancellable."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import TYPE_CHECKING, Any, Generator

from ..pyexec.runner import task_cluster
from .runs import HELP_AFTER

if TYPE_CHECKING:
    from .runs import CallRun


class GearnbFuture(concurrent.futures.Future):
    """The result of ``submit(f, ...)``.

    ``cancel()`` drops the job from the job server's queue if no worker has taken it yet
    (``cancel job`` in the admin protocol) and returns False once it runs, as
    concurrent.futures does; ``cancel(force=True)`` also stops it where it runs (as dask's
    ``cancel(force=True)``) and always cancels the future. ``await future`` works in asyncio code.
    """

    def __init__(self) -> None:
        super().__init__()
        self.run: CallRun | None = None  # set by Executor.submit
        self.submitted_at = time.time()
        self.finished_at: float | None = None
        self.add_done_callback(_stamp)

    @property
    def label(self) -> str:
        return self.run.label if self.run is not None else "?"

    @property
    def handle(self) -> bytes | None:
        job = self.run.job if self.run is not None else None
        return job.handle if job is not None else None

    @property
    def server(self) -> str | None:
        job = self.run.job if self.run is not None else None
        return job.server if job is not None else None

    def result(self, timeout: float | None = None) -> Any:
        """As concurrent.futures; inside a task (nested), it runs the call itself if no worker
        takes it (see :data:`~gearnb.executor.runs.HELP_AFTER`): a task waiting for its
        cluster never deadlocks it."""
        if self.run is not None and not self.done() and task_cluster() is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self.done():
                wait = HELP_AFTER if deadline is None else min(HELP_AFTER, deadline - time.monotonic())
                if wait <= 0:
                    break
                concurrent.futures.wait([self], wait)
                if not self.done():
                    self.run.help()
            if deadline is not None:
                timeout = max(deadline - time.monotonic(), 0.0)
        return super().result(timeout)

    def cancel(self, force: bool = False) -> bool:
        if self.done():
            return self.cancelled()
        if self.run is not None and not self.run.cancel(force):
            return False
        return super().cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return f"<GearnbFuture {self.label} {self._state.lower()}>"

    def _repr_html_(self) -> str:
        from ..display import future_html

        return future_html(self)


def _stamp(future: concurrent.futures.Future) -> None:
    if isinstance(future, GearnbFuture):
        future.finished_at = time.time()
