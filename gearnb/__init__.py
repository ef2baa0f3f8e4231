"""gearnb: farm Python work out from a notebook over the Gearman protocol."""

__version__ = "0.1.0"

from .admin import Admin
from .client import AsyncClient, Client, JobStatus, Task, TaskSet
from .errors import GearmanError, JobException, JobFailed, NoJobServers, ProtocolError, ServerError
from .worker import Job, Worker

__all__ = [
    "Admin", "AsyncClient", "Client", "GearmanError", "Job", "JobException", "JobFailed",
    "JobStatus", "NoJobServers", "ProtocolError", "ServerError", "Task", "TaskSet", "Worker",
    "__version__",
]
