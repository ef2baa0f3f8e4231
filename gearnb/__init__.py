"""gearnb: farm Python work out from a notebook over the Gearman protocol.

>>> import gearnb
>>> gearnb.map(lambda x: x * x, range(10))     # doctest: +SKIP
[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
"""

__version__ = "0.1.0"

from .admin import Admin
from .api import (
    as_completed, call, connect, default_executor, imap, imap_unordered, last_task_stream, local, map, report,
    shutdown, submit, wait,
)
from .client import AsyncClient, Client, JobHandle, JobStatus, Task, TaskSet
from .errors import (
    GearmanError, JobException, JobFailed, NoJobServers, ProtocolError, ServerError, TaskStopped, WorkException,
    WorkerDied,
)
from .executor import Executor, GearnbFuture
from .pyexec import RefusedPayload, RemoteError, VersionMismatch
from .visual import trace
from .worker import Job, Worker

__all__ = [
    "Admin", "AsyncClient", "Client", "Executor", "GearmanError", "GearnbFuture", "Job", "JobException",
    "JobFailed", "JobHandle", "JobStatus", "NoJobServers", "ProtocolError", "RefusedPayload", "RemoteError", "ServerError",
    "Task", "TaskSet", "TaskStopped", "VersionMismatch", "WorkException", "Worker", "WorkerDied", "__version__", "as_completed", "call",
    "connect", "default_executor", "imap", "imap_unordered", "last_task_stream", "local", "map", "report",
    "shutdown", "submit",
    "trace", "wait",
]

# The "gearnb" joblib backend (gearnb/joblib.py), registered once joblib is imported: importing
# joblib here would double gearnb's import time, in every worker process too.
from ._after_import import call_after_import as _call_after_import  # noqa: E402


def _register_joblib_backend() -> None:
    from . import joblib  # noqa: F401 - registers the backend on import


_call_after_import("joblib", _register_joblib_backend)
