"""The client side of a connection: the jobs it waits for, and how it wants failures told.

A connection becomes a client when it first submits a foreground job or sets a client
option; links to jobs are made and broken by :class:`~gearnb.server.jobs.Job`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connections import Connection
    from .jobs import Job


class ClientRecord:
    """gearmand's ``gearman_server_client_st`` list of one connection, as one record."""

    __slots__ = ("conn", "jobs", "exceptions")

    def __init__(self, conn: Connection, exceptions: bool) -> None:
        self.conn = conn
        self.jobs: dict[Job, None] = {}  # foreground jobs it waits for (an ordered set)
        # OPTION_REQ "exceptions": WORK_EXCEPTION is passed on; otherwise it becomes WORK_FAIL.
        self.exceptions = exceptions

    def __repr__(self) -> str:
        return f"<ClientRecord fd={self.conn.fd} jobs={len(self.jobs)}>"
