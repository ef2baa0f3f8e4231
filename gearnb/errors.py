"""Exceptions raised by gearnb's client, worker and admin."""

from __future__ import annotations

import re

from .protocol import ProtocolError

# What the Perl Gearman::Server (Debian gearman-server 1.130) lacks, by the request it refuses.
# It answers a packet type it has no handler for with ERROR server_error "Can't locate object
# method "CMD_<name>" via package "Gearman::Server::Client"" (<name> empty for a type number
# it does not know at all), and an admin command it lacks with "ERR unknown_command".
PERL_SERVER_LACKS = {
    "SUBMIT_JOB_LOW": "low priority",
    "SUBMIT_JOB_HIGH_BG": "high priority background jobs",
    "SUBMIT_JOB_LOW_BG": "low priority background jobs",
    "SUBMIT_JOB_EPOCH": "jobs run at a set time, when=",
    "SUBMIT_JOB_SCHED": "scheduled jobs",
    "GRAB_JOB_UNIQ": "GRAB_JOB_UNIQ (gearnb workers fall back to GRAB_JOB)",
    "GET_STATUS_UNIQUE": "job status by unique id",
    "WORK_DATA": "partial results (WORK_DATA)",
    "WORK_WARNING": "warnings from workers (WORK_WARNING)",
}
PERL_ADMIN_COMMANDS = "workers, status, jobs, clients, maxqueue, shutdown and version"
_PERL_NO_METHOD = re.compile(r'Can\'t locate object method "CMD_(\w*)" via package "Gearman::Server')


def perl_server_lacks(text: str) -> str | None:
    """For the text of the Perl server's ERROR about a packet type it has no handler for, that
    packet's name in its own spelling (``"submit_job_low"``), or ``""`` for a type number it
    does not know at all (such as GRAB_JOB_UNIQ's 30). None for any other text."""
    match = _PERL_NO_METHOD.search(text)
    return None if match is None else match.group(1)


# Admin commands whose name is two words ("cancel job H:x:1" is the command "cancel job").
_TWO_WORD_COMMANDS = ("cancel", "show", "create", "drop")


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
    """The job server answered ERROR (``code`` is gearmand's code string, e.g. QUEUE_ERROR).

    ``request``: what it answers, when the caller knows (a packet type name such as
    ``SUBMIT_JOB_LOW``, or an admin command line). Where the server lacks a feature, the
    message says so and names the feature; ``code`` and ``text`` stay as the server sent them.
    """

    def __init__(self, code: str, text: str, server: str = "", request: str | None = None) -> None:
        super().__init__(f"{server + ': ' if server else ''}{_describe(code, text, request)}")
        self.code = code
        self.text = text
        self.server = server
        self.request = request


def _describe(code: str, text: str, request: str | None) -> str:
    """The message of a ServerError: the server's words, or the feature it lacks."""
    lacks = perl_server_lacks(text)
    if lacks is not None:
        # The packet's own name when the server knew its number, else the caller's word.
        name = lacks.upper() or request
        if not name:
            return ("the job server does not know this request's packet type (the Perl "
                    "Gearman::Server has no packet types 30, 31 or 35 and up, among them "
                    "GRAB_JOB_UNIQ, SUBMIT_JOB_EPOCH and GET_STATUS_UNIQUE); use gearmand or "
                    "the gearnb server for it")
        return (f"the job server does not support {name} (the Perl Gearman::Server lacks "
                f"{PERL_SERVER_LACKS.get(name, name)}); "
                f"do without it there, or use gearmand or the gearnb server")
    if code.upper() == "UNKNOWN_COMMAND" and request:
        words = request.split()
        command = " ".join(words[:2] if words[0].lower() in _TWO_WORD_COMMANDS else words[:1])
        if code == "unknown_command":  # the Perl server's spelling (gearmand's is upper case)
            return (f"the job server does not know the admin command '{command}' (the Perl "
                    f"Gearman::Server's admin protocol has only {PERL_ADMIN_COMMANDS}); "
                    f"use gearmand or the gearnb server for it")
        return f"the job server does not know the admin command '{command}': {code} {text}".rstrip()
    return f"{code}: {text}"


class PacketTooLarge(ServerError):
    """A packet over a ``max_packet_size``: the job server's (its ERROR ARGUMENT_TOO_LARGE), a
    worker's, or this process's own (checked before sending; a result too large to take). The
    message names the limit and the setting that raises it (see gearnb.limits). Sending the
    same again cannot help."""

    def __init__(self, text: str, server: str = "", request: str | None = None) -> None:
        super().__init__("ARGUMENT_TOO_LARGE", text, server, request)


class NoJobServers(GearmanError, ConnectionError):
    """No job server could be reached."""


class WorkerDied(GearmanError):
    """The process running a task died while running it: it exited (``os._exit``), was killed
    by a signal (a segfault, the OOM killer's SIGKILL). ``how`` says which (``"was killed by
    SIGSEGV"``); ``attempts`` how many times the task was tried, each time in a fresh process."""

    def __init__(self, how: str, attempts: int = 1) -> None:
        tried = f"; tried {attempts} times, each in a fresh process" if attempts > 1 else ""
        super().__init__(f"the worker process running the task {how}{tried}")
        self.how = how
        self.attempts = attempts

    def __reduce__(self) -> tuple:  # travels pickled from the worker
        return WorkerDied, (self.how, self.attempts)


class TaskStopped(GearmanError):
    """A running task was stopped because its caller gave up on it (a cancel, a map's timeout,
    Ctrl-C); its result, if it has one, is not wanted."""


__all__ = ["GearmanError", "JobException", "JobFailed", "NoJobServers", "PacketTooLarge", "ProtocolError", "ServerError",
           "TaskStopped", "WorkException", "WorkerDied"]
