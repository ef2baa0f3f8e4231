"""gearnb as a joblib backend: ``joblib.Parallel`` and scikit-learn's ``n_jobs`` on gearnb workers.

>>> import gearnb, joblib                                                    # doctest: +SKIP
>>> with joblib.parallel_config(backend="gearnb"):                          # doctest: +SKIP
...     GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)       # the default executor: local or connect()ed
>>> with gearnb.local(workers=4) as ex, joblib.parallel_config(backend="gearnb", executor=ex):  # doctest: +SKIP
...     joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

This module owns the ``"gearnb"`` backend and its registration (``joblib.register_parallel_backend``,
done when this module is imported; ``import gearnb`` imports it as soon as joblib is imported, see
``gearnb/_after_import.py``). It uses joblib's public backend API and gearnb's public API
(Executor and its futures).

Order of calls, all made by ``joblib.Parallel``: ``configure`` (n_jobs=-1 becomes the cluster's
worker count) -> ``start_call`` (a callback thread) -> ``submit`` for each batch of calls joblib
builds (its auto batch size from ``AutoBatchingMixin``): one ``Executor.submit`` of
``_BatchRunner(batch)`` -> on the worker ``_BatchRunner`` runs the batch -> the result comes back
on gearnb's I/O thread, which hands joblib's callback to the callback thread; the callback
records the result and dispatches the next batch -> on an error, a timeout or a generator
dropped early, ``abort_everything`` cancels the jobs still queued -> ``stop_call`` ->
``terminate``.

Nested parallelism: a ``Parallel`` inside a task runs on threads of that worker process at the
first nesting level and sequentially below it (joblib's default for nested calls, as under
loky); it never goes back to the cluster, where a task waiting for jobs of its own cluster can
deadlock it once every worker waits so. ``backend="gearnb"`` asked for inside such a task runs
sequentially in the worker, with a warning.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import re
import threading
import warnings
from typing import Any, Callable

import joblib
# joblib.parallel re-exports these "so that 3rd party backend implementers can import them from here"
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase

from .api import default_executor
from .executor import Executor

log = logging.getLogger("gearnb.joblib")

BACKEND_NAME = "gearnb"
# ParallelBackendBase.submit (and supports_retrieve_callback with generators) are joblib >= 1.5;
# before, backends implemented apply_async.
MIN_JOBLIB = (1, 5)

_version = tuple(int(part) for part in re.findall(r"\d+", joblib.__version__)[:2])
if _version < MIN_JOBLIB:
    raise ImportError(f"gearnb's joblib backend needs joblib >= {'.'.join(map(str, MIN_JOBLIB))} "
                      f"(this is joblib {joblib.__version__}): pip install -U joblib")

# Above zero while this process runs a batch of the gearnb backend (on a worker): a gearnb
# backend asked for there runs sequentially. Process-wide, not per thread: a worker runs one
# job at a time, and threads of a nested threading backend are inside that job too.
_batch_depth = 0


class _BatchRunner:
    """Runs one joblib batch on a worker. Named after the batch's function: the name tags the
    task's printed output in the calling cell (``[_fit_and_score] ...``)."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, batch: Callable[[], list[Any]]) -> list[Any]:
        global _batch_depth
        _batch_depth += 1
        try:
            return batch()
        finally:
            _batch_depth -= 1


def _batch_name(batch: Any) -> str:
    """The name of the first function of a joblib batch (``BatchedCalls.items``)."""
    items = getattr(batch, "items", None)
    if items:
        fn = items[0][0]
        return getattr(fn, "__name__", None) or type(fn).__name__
    return "joblib_batch"


class _CallbackThread:
    """Runs joblib's completion callbacks off gearnb's I/O thread.

    A callback dispatches the next batch: it may run the caller's generator of calls and
    pickles the batch's arguments (a dataset, often). On the I/O thread that would hold up
    every other result, and a blocking gearnb call in the caller's generator would deadlock.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], concurrent.futures.Future] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="gearnb-joblib-callbacks", daemon=True)
        self._thread.start()

    def put(self, callback: Callable[[Any], Any], future: concurrent.futures.Future) -> None:
        self._queue.put((callback, future))

    def stop(self) -> None:
        """Callbacks queued before this still run; later ones are dropped (joblib no longer
        waits for them: its call has ended or been aborted)."""
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            callback, future = item
            try:
                callback(future)
            except BaseException:  # noqa: BLE001 - joblib's own callback; keep serving the others
                log.exception("joblib's batch completion callback failed")


class GearnbBackend(AutoBatchingMixin, ParallelBackendBase):
    """The ``"gearnb"`` joblib backend: each batch of calls is one job on the gearnb workers.

    ``executor``: the :class:`gearnb.Executor` to run on (``gearnb.local()``, ``gearnb.connect()``,
    ``gearnb.Executor(...)``); by default the one ``gearnb.map`` uses
    (``gearnb.default_executor()``), taken when a ``Parallel`` call starts. Pass it through
    joblib: ``joblib.parallel_config(backend="gearnb", executor=ex)``.

    ``n_jobs=-1`` (and ``n_jobs=None`` inside ``parallel_config(backend="gearnb")``, as with
    dask's backend) means every worker of the cluster, ``-2`` all but one, and so on; a positive
    ``n_jobs`` is used as it is. Batches are sized by joblib's auto batching. When a call fails,
    ``Parallel`` raises its exception (the original type, the remote traceback as ``__cause__``)
    and the batches still queued on the job server are cancelled; batches already running on a
    worker finish there and their results are dropped (loky kills its workers instead).
    joblib's memmapping options (``max_nbytes``, ``mmap_mode``, ``temp_folder``) do not apply:
    the workers may be on other machines, so arrays travel in the job (pickle protocol 5 buffers).
    """

    # Results come back through submit's callback: this also gives Parallel(timeout=) and
    # return_as="generator" / "generator_unordered".
    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(self, executor: Executor | None = None, nesting_level: int | None = None) -> None:
        super().__init__(nesting_level=nesting_level)
        self._executor = executor
        self._call_executor: Executor | None = None  # the executor of the current Parallel call
        self._callbacks: _CallbackThread | None = None
        # Futures of the current call not yet finished, in submission order (the order the job
        # server hands them to workers, so abort_everything cancels the next ones first).
        self._in_flight: dict[concurrent.futures.Future, None] = {}
        self._lock = threading.Lock()

    # -- sizing ---------------------------------------------------------------------------
    def _resolve_executor(self) -> Executor:
        return self._executor if self._executor is not None else default_executor()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: the cluster's worker count for ``n_jobs=-1``."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs == 1:
            return 1
        if _batch_depth:
            warnings.warn(
                "joblib backend 'gearnb' asked for inside a task it runs: this Parallel runs sequentially "
                "in the worker, since a task that waits for jobs of its own cluster can deadlock it. Leave "
                "the backend unset there to get joblib's default for nested calls (threads of the worker).",
                stacklevel=3)
            return 1
        if n_jobs < 0:
            return max(self._resolve_executor().worker_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
                  **_memmapping_options: Any) -> int:
        """Take the executor for this Parallel call; returns its effective n_jobs."""
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if n != 1:
            self._call_executor = self._resolve_executor()
        return n

    # -- one Parallel call ------------------------------------------------------------------
    def start_call(self) -> None:
        self._callbacks = _CallbackThread()
        with self._lock:
            self._in_flight.clear()

    def submit(self, func: Callable[[], list[Any]], callback: Callable[[Any], Any] | None = None
               ) -> concurrent.futures.Future:
        """Run one joblib batch on a worker; ``callback(future)`` runs on the callback thread."""
        callbacks = self._callbacks
        if callback is not None and callbacks is None:
            raise RuntimeError("GearnbBackend.submit before start_call: use the backend through joblib.Parallel")
        executor = self._call_executor if self._call_executor is not None else self._resolve_executor()
        try:
            future: concurrent.futures.Future = executor.submit(_BatchRunner(_batch_name(func)), func)
        except Exception as exc:  # noqa: BLE001 - e.g. an argument that does not pickle
            # The batch fails as a task would, so Parallel raises this error instead of
            # waiting forever for a batch that never left.
            future = concurrent.futures.Future()
            future.set_exception(exc)
        with self._lock:
            self._in_flight[future] = None
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(lambda done: callbacks.put(callback, done))  # type: ignore[union-attr]
        return future

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._in_flight.pop(future, None)

    def retrieve_result_callback(self, out: concurrent.futures.Future) -> list[Any]:
        """The batch's results, or its call's exception raised here."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel this call's batches still queued on the job server (running ones finish on
        their workers; joblib drops their results). The executor stays usable either way."""
        with self._lock:
            pending = [f for f in self._in_flight if not f.done()]
        executor = self._call_executor or self._executor
        cancelled = executor.cancel(pending) if executor is not None and pending else 0
        log.debug("joblib call aborted: %d of %d unfinished batches cancelled", cancelled, len(pending))

    def stop_call(self) -> None:
        if self._callbacks is not None:
            self._callbacks.stop()
            self._callbacks = None

    def terminate(self) -> None:
        """End of a Parallel call: the executor stays (it is the caller's, or the default one)."""
        self._call_executor = None
        self.reset_batch_stats()

    def __repr__(self) -> str:
        return f"<GearnbBackend executor={self._executor or 'default'}>"


def register() -> None:
    """Register the ``"gearnb"`` joblib backend (importing this module does it; idempotent)."""
    joblib.register_parallel_backend(BACKEND_NAME, GearnbBackend)


register()
