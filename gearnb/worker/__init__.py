"""The Gearman worker: register functions, then ``work()`` grabs jobs and runs them.

A plain blocking loop over ordinary sockets (one per job server), using the sans-IO codec:
workers run user code that blocks anyway, and a blocking loop with the next GRAB_JOB_UNIQ
written together with each result costs one send and one receive per job.

The order of calls: ``register()`` the functions; ``work()`` connects and announces them
(RESET_ABILITIES, SET_CLIENT_ID, CAN_DO / CAN_DO_TIMEOUT), then per server sends a grab and
reads its answer: a job (run it, send its outcome with the next grab), NO_JOB (next server,
or PRE_SLEEP everywhere and wait for a NOOP) or ERROR. A server that answers GRAB_JOB_UNIQ
with ERROR (the Perl Gearman::Server has no packet type 30) is sent GRAB_JOB from then on,
across reconnects; ERRORs that answer earlier packets (a result for a job taken back) are
logged and skipped. ``stop()`` (also SIGTERM, Ctrl-C) shuts the
read side of every socket, so a worker blocked in recv wakes at once, while a job that is
running can still send its result.

Modules: :mod:`.job` (Job), :mod:`.connection` (one job server: socket, packets, grab,
reconnects), :mod:`.worker` (Worker: functions and the loop).
"""

from .connection import GRAB_PLAIN, GRAB_UNIQ
from .job import Job
from .worker import Worker

__all__ = ["GRAB_PLAIN", "GRAB_UNIQ", "Job", "Worker"]
