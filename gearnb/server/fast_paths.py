"""The per-job hot path: SUBMIT_JOB, GRAB_JOB_UNIQ and WORK_COMPLETE in their common form.

Each handler here checks that nothing unusual is involved (a unique, a queue limit, the
persistent queue, a sleeping or timed worker, several abilities) and otherwise hands the
packet to the general handler in :mod:`.core`, which stays the reference behaviour. What
they save, measured in-process with bench/jobs_per_second.py's profile: the PacketType
enum lookups (~0.2 us each), re-encoding one WORK_COMPLETE per client, generic argument
checks - about 40% of the server's Python time per job.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..protocol import NORMAL, RES, PacketType
from ..protocol.codec import BIG_PACKET
from .jobs import RUNNING, Job

if TYPE_CHECKING:
    from .core import JobServer

_header = struct.Struct(">4sII").pack
_JOB_CREATED = int(PacketType.JOB_CREATED)
_JOB_ASSIGN_UNIQ = int(PacketType.JOB_ASSIGN_UNIQ)
_WORK_COMPLETE = int(PacketType.WORK_COMPLETE)
_NO_JOB_PACKET = _header(RES, int(PacketType.NO_JOB), 0)


def install(server: JobServer) -> None:
    """Put the fast handlers in front of the general ones in ``server.handlers``."""
    handlers = server.handlers
    general_submit = handlers[PacketType.SUBMIT_JOB]
    general_grab = handlers[PacketType.GRAB_JOB_UNIQ]
    general_complete = handlers[PacketType.WORK_COMPLETE]
    jobs = server.jobs
    functions = server.functions
    new_handle = server.new_handle

    def submit_job(conn, args):  # type: ignore[no-untyped-def]
        name, unique, data = args
        function = functions.get(name)
        if unique or function is None or function.max_queue[NORMAL] or server.queue is not None:
            general_submit(conn, args)
            return
        handle = new_handle()
        job = Job(handle, function, unique, data, NORMAL, False)
        jobs[handle] = job
        conn.send(_header(RES, _JOB_CREATED, len(handle)) + handle)
        job.clients.append(conn)  # a new job: no need to look for the client first
        conn.client_jobs[job] = None
        function.queues[NORMAL][handle] = job
        function.queued += 1
        if function.sleepers:
            server._wake(function)

    def grab_job_uniq(conn, args):  # type: ignore[no-untyped-def]
        abilities = conn.abilities
        if conn.sleeping or conn.woken_for is not None or len(abilities) != 1 or conn.timeouts or args:
            general_grab(conn, args)
            return
        for function in abilities:
            break
        if not function.queued:
            conn.send(_NO_JOB_PACKET)
            return
        for queue in function.queues:  # high, normal, low
            if queue:
                job = queue.popitem(last=False)[1]
                break
        function.queued -= 1
        job.state = RUNNING
        job.worker = conn
        function.running += 1
        conn.worker_jobs[job] = None
        if len(job.data) >= BIG_PACKET:  # large: sent in parts, the data not copied
            conn.send_packet(_JOB_ASSIGN_UNIQ, job.handle, function.name, job.unique, job.data)
            return
        body = b"\0".join((job.handle, function.name, job.unique, job.data))
        conn.send(_header(RES, _JOB_ASSIGN_UNIQ, len(body)) + body)

    def work_complete(conn, args):  # type: ignore[no-untyped-def]
        job = jobs.get(args[0])
        if job is None or job.worker is not conn:
            general_complete(conn, args)
            return
        if len(args[-1]) >= BIG_PACKET:  # large: sent in parts, the data not copied
            for client in job.clients:
                client.send_packet(_WORK_COMPLETE, *args)
            server._end_job(job)
            return
        body = b"\0".join(args)
        packet = _header(RES, _WORK_COMPLETE, len(body)) + body  # encoded once for every client
        for client in job.clients:
            client.send(packet)
        server._end_job(job)

    handlers[PacketType.SUBMIT_JOB] = submit_job
    handlers[PacketType.GRAB_JOB_UNIQ] = grab_job_uniq
    handlers[PacketType.WORK_COMPLETE] = work_complete
