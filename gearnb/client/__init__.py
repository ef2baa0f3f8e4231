"""The Gearman client: Client, AsyncClient, Task, TaskSet."""

from .client import AsyncClient, Client
from .task import JobHandle, JobStatus, Task, TaskSet

__all__ = ["AsyncClient", "Client", "JobHandle", "JobStatus", "Task", "TaskSet"]
