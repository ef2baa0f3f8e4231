"""The Gearman client: Client, AsyncClient, Task, TaskSet."""

from .client import AsyncClient, Client
from .task import JobStatus, Task, TaskSet

__all__ = ["AsyncClient", "Client", "JobStatus", "Task", "TaskSet"]
