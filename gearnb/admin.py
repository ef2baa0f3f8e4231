"""Admin: the text protocol of a job server (gearmand or gearnb's), parsed into records."""

from __future__ import annotations

import socket
from typing import Any, NamedTuple

from .errors import ServerError
from .addresses import parse_servers, split_address


class FunctionStatus(NamedTuple):
    function: str
    total: int      # queued plus running
    running: int
    workers: int    # connected workers that can do it


class PriorityStatus(NamedTuple):
    function: str
    high: int
    normal: int
    low: int
    workers: int


class WorkerInfo(NamedTuple):
    fd: int
    ip: str
    client_id: str
    functions: list[str]


class JobInfo(NamedTuple):
    """One line of ``show jobs``: HANDLE, RETRIES, IGNORE_JOB, JOB_QUEUED.

    ``background`` is the JOB_QUEUED column: gearmand's job_queued flag, set when a job was
    handed to its persistent queue, which every background job is, running or not, and no
    foreground job is. It does not say whether a job is waiting or running: ``status`` counts
    the running jobs per function, and GET_STATUS (``Client.status``) tells it per job.
    """

    handle: str
    retries: int
    ignored: bool      # gearmand: its clients left; it will not run (gearnb drops such jobs)
    background: bool


class Admin:
    """Talks the admin text protocol to one job server.

    >>> Admin("127.0.0.1:4730").status()     # doctest: +SKIP
    [FunctionStatus(function='reverse', total=0, running=0, workers=1)]
    """

    def __init__(self, server: str | None = None, timeout: float = 10.0, *, ssl: Any = None) -> None:
        self.server = parse_servers(server)[0]
        self.timeout = timeout
        self.ssl = ssl
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            host, port = split_address(self.server)
            sock = socket.create_connection((host, port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl is not None:
                sock = self.ssl.wrap_socket(sock, server_hostname=host)
            self._sock = sock
            self._buf = b""
        return self._sock

    def _line(self) -> bytes:
        sock = self._connect()
        while b"\n" not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionError(f"job server {self.server} closed the admin connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def command(self, text: str) -> str:
        """Send a one-line command; return its one-line answer (raises ServerError on ERR)."""
        self._connect().sendall(text.encode() + b"\r\n")
        line = self._line().decode(errors="replace")
        if line.startswith("ERR "):
            raise self._error(line, text)
        return line

    def _error(self, line: str, request: str) -> ServerError:
        """The ServerError of an ``ERR CODE url+encoded+text`` answer to ``request``."""
        _, code, *rest = line.split(" ", 2)
        return ServerError(code, rest[0].replace("+", " ") if rest else "", self.server, request=request)

    def list_command(self, text: str) -> list[str]:
        """Send a command whose answer is lines ending with ``.``."""
        self._connect().sendall(text.encode() + b"\r\n")
        lines = []
        while True:
            line = self._line().decode(errors="replace")
            if line == ".":
                return lines
            if not lines and line.startswith("ERR "):
                _, code, *rest = line.split(" ", 2)
                raise ServerError(code, rest[0].replace("+", " ") if rest else "", self.server, request=text)
            lines.append(line)

    def status(self) -> list[FunctionStatus]:
        out = []
        for line in self.list_command("status"):
            # From the right: function names may hold tabs (Perl/Ruby "prefix\tname").
            name, total, running, workers = line.rsplit("\t", 3)
            out.append(FunctionStatus(name, int(total), int(running), int(workers)))
        return out

    def priority_status(self) -> list[PriorityStatus]:
        out = []
        for line in self.list_command("prioritystatus"):
            name, high, normal, low, workers = line.rsplit("\t", 4)
            out.append(PriorityStatus(name, int(high), int(normal), int(low), int(workers)))
        return out

    def workers(self) -> list[WorkerInfo]:
        out = []
        for line in self.list_command("workers"):
            left, _, right = line.partition(" :")
            fd, ip, client_id = left.split(" ", 2)
            out.append(WorkerInfo(int(fd), ip, client_id, right.split(" ")[1:] if right else []))
        return out

    def show_jobs(self) -> list[JobInfo]:
        out = []
        for line in self.list_command("show jobs"):
            handle, retries, ignored, background = line.split("\t")
            out.append(JobInfo(handle, int(retries), ignored == "1", background == "1"))
        return out

    def show_unique_jobs(self) -> list[str]:
        return self.list_command("show unique jobs")

    def version(self) -> str:
        answer = self.command("version")
        return answer[3:] if answer.startswith("OK ") else answer

    def getpid(self) -> int:
        return int(self.command("getpid").split()[-1])

    def cancel(self, handle: str | bytes) -> bool:
        """Cancel a queued job; False if the server does not have it queued (ERR UNKNOWN_JOB:
        running, ended, or never known). Raises ServerError where the server has no ``cancel job``."""
        return self.cancel_many([handle.encode() if isinstance(handle, str) else handle])[0]

    def cancel_many(self, handles: list[bytes]) -> list[bool]:
        """:meth:`cancel` for many handles, the commands sent together (one round trip)."""
        if not handles:
            return []
        self._connect().sendall(b"".join(b"cancel job " + bytes(h) + b"\r\n" for h in handles))
        answers = [self._line().decode(errors="replace") for _ in handles]
        for answer in answers:
            if answer.startswith("ERR ") and not answer.startswith("ERR UNKNOWN_JOB"):
                raise self._error(answer, "cancel job")
        return [answer == "OK" for answer in answers]

    def maxqueue(self, function: str, *sizes: int) -> None:
        """``maxqueue F N`` (all priorities) or ``maxqueue F HIGH NORMAL LOW``."""
        self.command(" ".join(["maxqueue", function, *map(str, sizes)]))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
