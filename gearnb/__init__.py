"""gearnb: farm Python work out from a notebook over the Gearman protocol.

>>> import gearnb
>>> gearnb.map(lambda x: x * x, range(10))     # doctest: +SKIP
[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]

The public names below are imported on first use (PEP 562): a worker's task process, the job
server and the ``gearnb`` command start without the notebook API, its widgets and pictures.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Admin": ".admin",
    **dict.fromkeys(["as_completed", "call", "connect", "default_executor", "imap", "imap_unordered", "last_task_stream",
                     "local", "map", "report", "shutdown", "submit", "wait"], ".api"),
    **dict.fromkeys(["AsyncClient", "Client", "JobHandle", "JobStatus", "Task", "TaskSet"], ".client"),
    **dict.fromkeys(["GearmanError", "JobException", "JobFailed", "NoJobServers", "PacketTooLarge", "ProtocolError",
                     "ServerError", "TaskStopped", "WorkException", "WorkerDied"], ".errors"),
    **dict.fromkeys(["Executor", "GearnbFuture"], ".executor"),
    **dict.fromkeys(["RefusedPayload", "RemoteError", "VersionMismatch"], ".pyexec"),
    "trace": ".visual",
    **dict.fromkeys(["Job", "Worker"], ".worker"),
}
__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from .admin import Admin
    from .api import (
        as_completed, call, connect, default_executor, imap, imap_unordered, last_task_stream, local, map, report,
        shutdown, submit, wait,
    )
    from .client import AsyncClient, Client, JobHandle, JobStatus, Task, TaskSet
    from .errors import (
        GearmanError, JobException, JobFailed, NoJobServers, PacketTooLarge, ProtocolError, ServerError, TaskStopped,
        WorkException, WorkerDied,
    )
    from .executor import Executor, GearnbFuture
    from .pyexec import RefusedPayload, RemoteError, VersionMismatch
    from .visual import trace
    from .worker import Job, Worker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gearnb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# The "gearnb" joblib backend (gearnb/joblib.py), registered once joblib is imported: importing
# joblib here would double gearnb's import time, in every worker process too.
from ._after_import import call_after_import as _call_after_import  # noqa: E402


def _register_joblib_backend() -> None:
    from . import joblib  # noqa: F401 - registers the backend on import


_call_after_import("joblib", _register_joblib_backend)
