"""Exceptions raised by gearnb's client, worker and admin."""

from __future__ import annotations

from .protocol import ProtocolError


class GearmanError(Exception):
    """Base class of gearnb's Gearman errors."""


class JobFailed(GearmanError):
    """The job ended in WORK_FAIL (after any retries). Raise it in a worker function to fail a job."""


class JobException(JobFailed):
    """The worker reported an exception (WORK_EXCEPTION); ``text`` is what it sent."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class WorkException(GearmanError):
    """Raise in a worker function to answer WORK_EXCEPTION with exactly ``data`` (no traceback)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data[:200])
        self.data = data


class ServerError(GearmanError):
    """The job server answered ERROR (``code`` is gearmand's code string, e.g. QUEUE_ERROR)."""

    def __init__(self, code: str, text: str, server: str = "") -> None:
        super().__init__(f"{server + ': ' if server else ''}{code}: {text}")
        self.code = code
        self.text = text
        self.server = server


class NoJobServers(GearmanError, ConnectionError):
    """No job server could be reached."""


__all__ = ["GearmanError", "JobException", "JobFailed", "NoJobServers", "ProtocolError", "ServerError", "WorkException"]
