"""Stopping tasks that run: a caller's signed request, and each worker's control function.

Gearman has no way to stop a job a worker has taken, so gearnb workers listen for one: each
worker process runs a :class:`ControlWorker` thread, a Gearman worker of its own (its own
connection to each job server) for one function, ``gearnb.control.<id>``. A caller that
gives up on jobs (a cancel with ``force``, a map's timeout, Ctrl-C) calls :func:`stop_jobs`:
it asks each job server which control functions its workers have (admin ``workers``) and
submits to each a background job, signed like a pyexec call, naming the handles to stop; the
worker whose running job is one of them stops it (:meth:`Guard.stop`). The request
travels through the same job servers as the jobs, so it needs no other port, and a handle
names a job only on the server that made it, which is the server the request comes through.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any

import msgpack

from ..errors import WorkException
from .replay import NotRun, ReplayGuard
from .signing import RefusedPayload, Signer

if TYPE_CHECKING:
    from ..admin import Admin
    from .isolation import Guard

log = logging.getLogger("gearnb.pyexec")

CONTROL_PREFIX = "gearnb.control."
# A stop request is acted on at once or never: it stays valid this long (its worker may be
# busy answering another one).
STOP_TTL = 60


class ControlWorker:
    """The thread of a worker process that serves its control function (module docstring)."""

    def __init__(self, servers: Any, key: bytes, guard: Guard, *, client_id: str | None = None,
                 ssl: Any = None) -> None:
        from ..worker import Worker

        self.name = CONTROL_PREFIX + secrets.token_hex(8)
        self.signer = Signer(key)
        self.guard = guard
        self.replay_guard = ReplayGuard()
        self.worker = Worker(servers, client_id=f"{client_id}-control" if client_id else None, ssl=ssl)
        self.worker.register(self.name, self._request)
        self.thread = threading.Thread(target=self.worker.work, name="gearnb-control", daemon=True)

    def start(self) -> ControlWorker:
        self.thread.start()
        return self

    def _request(self, job: Any) -> bytes:
        try:
            body, call = self.signer.verify_call(self.name.encode(), job.data)
            self.replay_guard.admit(call, job.handle)
        except (RefusedPayload, NotRun) as exc:
            log.warning("refused a control request: %s", exc)
            raise WorkException(b"refused") from None
        request = msgpack.unpackb(body, raw=False)
        stopped = self.guard.stop(job.server, {bytes(h) for h in request.get("stop", ())})
        return b"stopped" if stopped else b"not running here"

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(5)


def control_functions(admin: Admin) -> list[str]:
    """The control functions of the workers connected to ``admin``'s job server."""
    return sorted({f for worker in admin.workers() for f in worker.functions if f.startswith(CONTROL_PREFIX)})


def stop_jobs(signer: Signer, handles_by_server: dict[str, list[bytes]], ssl: Any = None) -> int:
    """Ask every gearnb worker of each server to stop the jobs with these handles (those it
    runs); returns how many requests were sent. Errors are logged, not raised: a caller
    giving up must not fail for it."""
    from ..admin import Admin
    from ..client import Client
    from ..errors import GearmanError

    sent = 0
    for server, handles in handles_by_server.items():
        if not handles:
            continue
        body = msgpack.packb({"stop": list(handles)}, use_bin_type=True)
        try:
            with Admin(server, timeout=10, ssl=ssl) as admin:
                names = control_functions(admin)
            # Through this server only: the handles are its own.
            with Client(server, ssl=ssl, submit_timeout=10) as client:
                for name in names:
                    payload, _ = signer.sign_call(name.encode(), [body], ttl=STOP_TTL)
                    client.do_background(name, payload, timeout=10)
                    sent += 1
        except (OSError, TimeoutError, GearmanError) as exc:
            log.warning("could not ask the workers of %s to stop %d running jobs: %s", server, len(handles), exc)
    return sent
