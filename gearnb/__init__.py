"""gearnb: farm Python work out from a notebook over the Gearman protocol.

>>> import gearnb
>>> gearnb.map(lambda x: x * x, range(10))     # doctest: +SKIP
[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
"""

__version__ = "0.1.0"

from .admin import Admin
from .api import (
    as_completed, call, connect, default_executor, imap, imap_unordered, local, map, report, shutdown, submit,
    wait,
)
from .client import AsyncClient, Client, JobHandle, JobStatus, Task, TaskSet
from .errors import GearmanError, JobException, JobFailed, NoJobServers, ProtocolError, ServerError, WorkException
from .executor import Executor, GearnbFuture
from .pyexec import RefusedPayload, RemoteError, VersionMismatch
from .visual import trace
from .worker import Job, Worker

__all__ = [
    "Admin", "AsyncClient", "Client", "Executor", "GearmanError", "GearnbFuture", "Job", "JobException",
    "JobFailed", "JobHandle", "JobStatus", "NoJobServers", "ProtocolError", "RefusedPayload", "RemoteError", "ServerError",
    "Task", "TaskSet", "VersionMismatch", "WorkException", "Worker", "__version__", "as_completed", "call",
    "connect", "default_executor", "imap", "imap_unordered", "local", "map", "report", "shutdown", "submit",
    "trace", "wait",
]
