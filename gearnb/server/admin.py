"""The administrative text protocol, with gearmand 1.1.20's exact output formats.

Lines starting with anything but NUL on the job server port are admin commands
(../shared/reference/gearman-protocol.md, section 1.4). ``gearadmin`` sends them with CRLF.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable
from urllib.parse import quote_plus

if TYPE_CHECKING:
    from .connections import Connection
    from .core import JobServer

log = logging.getLogger("gearnb.server")


def err(code: str, message: str, command: str = "") -> bytes:
    """gearmand's error line: ``ERR CODE url+encoded+message<command>\\r\\n``.

    gearmand appends the offending command word, unencoded, right after the message.
    """
    return f"ERR {code} {quote_plus(message)}{command}\r\n".encode(errors="replace")


def unknown(command: str) -> bytes:
    return err("UNKNOWN_COMMAND", "Unknown server command", command)


def incomplete(command: str) -> bytes:
    # Unlike UNKNOWN_COMMAND, gearmand puts a "+" between this message and the command.
    return err("INVALID_ARGUMENTS", "An incomplete set of arguments was sent to this command ", command)


UNKNOWN_ERROR = b"ERR UNKNOWN_ERROR\r\n"


class AdminCommands:
    def __init__(self, server: JobServer) -> None:
        from .. import __version__

        self.server = server
        self.version = __version__
        self.commands: dict[str, Callable[[Connection, list[str]], bytes]] = {
            "status": self.status,
            "workers": self.workers,
            "prioritystatus": self.prioritystatus,
            "version": self.version_cmd,
            "getpid": self.getpid,
            "verbose": self.verbose,
            "maxqueue": self.maxqueue,
            "show": self.show,
            "cancel": self.cancel,
            "create": self.create,
            "drop": self.drop,
            "trace": self.trace,
        }

    def handle_line(self, conn: Connection, line: str) -> None:
        words = line.split()
        if not words or line[0].isspace():
            # gearmand answers an empty line, or one starting with a blank, with an empty command.
            conn.send(unknown(""))
            return
        command = self.commands.get(words[0].lower())
        if command is None:
            conn.send(unknown(words[0]))
            return
        conn.send(command(conn, words))

    # Each command returns its whole reply. -------------------------------------------
    def status(self, conn: Connection, words: list[str]) -> bytes:
        lines = [
            b"%s\t%d\t%d\t%d\n" % (f.name, f.total, f.running, len(f.workers))
            for f in self.server.functions.values()
        ]
        return b"".join(lines) + b".\n"

    def prioritystatus(self, conn: Connection, words: list[str]) -> bytes:
        # gearmand keeps epoch jobs that are not due in the normal queue, so they count there
        # (and HIGH + NORMAL + LOW + running stays equal to status's TOTAL).
        lines = [
            b"%s\t%d\t%d\t%d\t%d\n"
            % (f.name, len(f.queues[0]), len(f.queues[1]) + f.scheduled, len(f.queues[2]), len(f.workers))
            for f in self.server.functions.values()
        ]
        return b"".join(lines) + b".\n"

    def workers(self, conn: Connection, words: list[str]) -> bytes:
        lines = []
        # gearmand keeps connections and a worker's functions in lists it prepends to: it shows
        # the newest first. So do we.
        for c in reversed(self.server.connections):
            functions = c.worker.functions if c.worker is not None else ()
            names = b"".join(b" " + f.name for f in reversed(functions))
            lines.append(b"%d %s %s :%s\n" % (c.fd, c.peer.encode(), c.client_id, names))
        return b"".join(lines) + b".\n"

    def version_cmd(self, conn: Connection, words: list[str]) -> bytes:
        return f"OK gearnb-{self.version}\n".encode()

    def getpid(self, conn: Connection, words: list[str]) -> bytes:
        return f"OK {os.getpid()}\n".encode()

    def verbose(self, conn: Connection, words: list[str]) -> bytes:
        level = logging.getLevelName(logging.getLogger("gearnb.server").getEffectiveLevel())
        return f"OK {level}\n".encode()

    def maxqueue(self, conn: Connection, words: list[str]) -> bytes:
        if len(words) < 2:
            return incomplete("maxqueue")
        function = self.server.functions.get(words[1].encode())

        def number(text: str) -> int:
            try:
                return max(int(text), 0)  # 0 or negative: unlimited, as in gearmand
            except ValueError:
                return 0

        # gearmand: one value sets all three priorities; with two or three, a missing one is
        # unlimited. A function the server does not know yet is silently left alone (OK all the same).
        if len(words) <= 3:
            limits = [number(words[2]) if len(words) == 3 else 0] * 3
        else:
            given = [number(w) for w in words[2:5]]
            limits = given + [0] * (3 - len(given))
        if function is not None:
            function.max_queue = limits
        return b"OK\r\n"

    def show(self, conn: Connection, words: list[str]) -> bytes:
        if len(words) < 2:
            return unknown("show")
        what = [w.lower() for w in words[1:]]
        if what == ["jobs"]:
            # gearmand's JOB_QUEUED column is its job_queued flag: "handed to the (persistent)
            # queue", which every background job is, running or not; foreground jobs never are.
            # IGNORE_JOB is always 0: we drop a job its clients left instead of keeping it.
            lines = [
                b"%s\t%d\t0\t%d\n" % (job.handle, job.retries, 1 if job.background else 0)
                for job in self.server.jobs.values()
            ]
            return b"".join(lines) + b".\n"
        if what == ["unique", "jobs"]:
            return b"".join(job.unique + b"\n" for job in self.server.jobs.values()) + b".\n"
        return b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"

    def cancel(self, conn: Connection, words: list[str]) -> bytes:
        # gearmand's quirks: fewer than three words is an unknown command, anything but
        # exactly "cancel job HANDLE" an internal error.
        if len(words) < 3:
            return unknown("cancel")
        if len(words) != 3 or words[1].lower() != "job":
            return UNKNOWN_ERROR
        if self.server.cancel(words[2].encode()):
            return b"OK\r\n"
        return b"ERR UNKNOWN_JOB\r\n"

    def create(self, conn: Connection, words: list[str]) -> bytes:
        """``create function F``: make F known (it shows in ``status``) before any worker has it."""
        if len(words) != 3 or words[1].lower() != "function":
            return incomplete("create")
        self.server.function(words[2].encode())
        return b"OK\r\n"

    def trace(self, conn: Connection, words: list[str]) -> bytes:
        """``trace`` (gearnb only): stream every packet the server sees to this connection."""
        from ..visual.recorder import stream_command

        return stream_command(self.server, conn, words)

    def drop(self, conn: Connection, words: list[str]) -> bytes:
        """``drop function F`` (F matched case-insensitively, as gearmand does)."""
        if len(words) != 3 or words[1].lower() != "function":
            return incomplete("drop")
        name = words[2].encode().lower()
        for function in self.server.functions.values():
            if function.name.lower() == name:
                if function.workers or function.running:
                    return b"ERR there are still connected workers or executing clients\r\n"
                self.server.drop_function(function)
                return b"OK\r\n"
        return b"ERR function not found\r\n"
