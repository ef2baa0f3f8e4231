"""Recording the Gearman packets of a piece of code: ``with gearnb.trace(server) as t:``.

The job server sees every packet between itself and each client and worker, so what it
records (:mod:`.recorder`) gives every arrow of a sequence diagram. The order of calls:
:meth:`Trace.start` (``__enter__``) connects the trace to the server through a
:class:`~.recorder.PacketTap`, which first tells it about the connections already open
(their client id, abilities, sleep) as ``state`` events; the server then hands it every
event, on the server's thread; :meth:`Trace.stop` (``__exit__``) waits briefly for the
workers to go back to sleep (``settle``) and disconnects. Drawing lives in :mod:`.sequence`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..protocol import PacketType
from .events import CLIENT_PACKETS, CLOSED, IN, OUT, STATE, TEXT, WORKER_PACKETS, PacketEvent
from .recorder import PacketTap

P = PacketType

# A trace keeps at most this many events (~0.5 KB each): a map of 100k jobs makes ~700k
# packets, and a picture of more than a few hundred arrows is unreadable anyway. Later
# events are counted in ``Trace.dropped``.
MAX_EVENTS = 100_000
# ``settle``: how long __exit__ waits at most for the workers to go back to sleep, so that a
# trace ends with their NO_JOB / PRE_SLEEP rather than in the middle of them.
DEFAULT_SETTLE = 1.0


@dataclass(frozen=True)
class Lane:
    """One connection in a trace: ``role`` is ``"client"``, ``"worker"``, ``"client+worker"``,
    ``"admin"`` or ``"connection"`` (nothing telling yet)."""

    conn: int
    role: str
    client_id: str
    fd: int
    peer: str
    abilities: tuple[str, ...]
    number: int  # 1, 2, ... among the lanes of its role, in order of appearance

    @property
    def title(self) -> str:
        """``worker calc-1``, ``client 2``: the role, and the client id where one is set."""
        name = self.client_id if self.client_id not in ("", "-") else str(self.number)
        return f"{self.role} {name}"


class Trace:
    """The packets a job server exchanged while the ``with`` block ran.

    ``server``: a :class:`gearnb.server.Server` or ``JobServer`` running in this process, or
    the ``"host:port"`` of a gearnb job server in another process (which streams the trace
    over its admin port). ``admin=True`` keeps admin text commands (a live picture polls
    them) as lanes of their own. ``settle``: seconds ``__exit__`` waits at most for busy
    workers to go back to sleep (0: stop at once).

    In Jupyter the trace draws itself as a sequence diagram (SVG); elsewhere ``print(t)``
    gives the same diagram as text. ``t.events`` has the raw events, ``t.lanes`` the lanes,
    ``t.sequence(lane)`` one lane's packet names in order.
    """

    def __init__(self, server: Any, *, admin: bool = False, settle: float = DEFAULT_SETTLE) -> None:
        self.source = server
        self.admin = admin
        self.settle = settle
        self.events: list[PacketEvent] = []
        self.dropped = 0  # events beyond MAX_EVENTS (or lost by a slow stream)
        self._changed = threading.Condition()
        self._awake: dict[int, bool] = {}  # worker lane -> asked for work since its last PRE_SLEEP
        self._tap = PacketTap(server, self)

    # -- recording -----------------------------------------------------------------------
    def __call__(self, event: PacketEvent) -> None:  # the hub's sink (on the server's thread)
        if not self.admin and event.name == TEXT:
            return
        with self._changed:
            if len(self.events) < MAX_EVENTS:
                self.events.append(event)
            else:
                self.dropped += 1
            if event.kind == IN and event.name == "PRE_SLEEP":
                self._awake[event.conn] = False
            elif event.kind == IN and event.name in ("GRAB_JOB", "GRAB_JOB_UNIQ", "GRAB_JOB_ALL"):
                self._awake[event.conn] = True
            elif event.kind == CLOSED:
                self._awake.pop(event.conn, None)
            self._changed.notify_all()

    def lost(self, count: int) -> None:
        """``count`` events a slow stream could not deliver (see STREAM_BACKLOG)."""
        with self._changed:
            self.dropped += count

    def start(self) -> Trace:
        self._tap.start()
        return self

    def stop(self) -> None:
        if self.settle > 0:
            self.wait_for(self._workers_asleep, timeout=self.settle)
        self._tap.stop()

    def __enter__(self) -> Trace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[list[PacketEvent]], object], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(events)`` is true (re-checked as events arrive); False on
        timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def _workers_asleep(self, events: list[PacketEvent]) -> bool:
        """Every worker that asked for work during the trace has gone back to sleep (or left)."""
        return not any(self._awake.values())

    # -- reading -------------------------------------------------------------------------
    @property
    def lanes(self) -> list[Lane]:
        """The connections seen, in order of first appearance."""
        info: dict[int, dict[str, Any]] = {}
        for event in list(self.events):
            lane = info.setdefault(event.conn, {"worker": False, "client": False, "admin": False,
                                                "abilities": [], "event": event})
            lane["event"] = event if event.client_id not in ("", "-") else lane["event"]
            if event.kind == STATE and event.arg("abilities"):
                lane["worker"] = True
                lane["abilities"].extend(event.arg("abilities").split())
            elif event.kind == IN:
                ptype = getattr(P, event.name, None)
                if ptype in WORKER_PACKETS:
                    lane["worker"] = True
                if ptype in CLIENT_PACKETS:
                    lane["client"] = True
                if event.name == TEXT:
                    lane["admin"] = True
                if event.name in ("CAN_DO", "CAN_DO_TIMEOUT") and event.arg("function") not in lane["abilities"]:
                    lane["abilities"].append(event.arg("function"))
        lanes = []
        per_role: dict[str, int] = {}
        for number, lane in info.items():
            role = ("client+worker" if lane["worker"] and lane["client"] else "worker" if lane["worker"]
                    else "client" if lane["client"] else "admin" if lane["admin"] else "connection")
            per_role[role] = per_role.get(role, 0) + 1
            event = lane["event"]
            lanes.append(Lane(number, role, event.client_id, event.fd, event.peer, tuple(lane["abilities"]),
                              per_role[role]))
        return lanes

    def sequence(self, lane: Lane | int, *, kinds: tuple[str, ...] = (IN, OUT)) -> list[str]:
        """The packet names on one lane in order; ``"<NAME"`` for what the server sent it,
        ``"state"`` and ``"closed"`` for those events (when ``kinds`` has them)."""
        number = lane.conn if isinstance(lane, Lane) else lane
        return [("<" if e.kind == OUT else "") + (e.name or e.kind) for e in list(self.events)
                if e.conn == number and e.kind in kinds]

    def lane(self, title: str) -> Lane:
        """The lane with that title (``"worker calc-1"``) or client id (``"calc-1"``)."""
        for lane in self.lanes:
            if title in (lane.title, lane.client_id):
                return lane
        raise KeyError(f"no lane {title!r}; lanes: {', '.join(lane.title for lane in self.lanes)}")

    # -- drawing (see .sequence) ---------------------------------------------------------
    def svg(self, **options: Any) -> str:
        from .sequence import render_svg

        return render_svg(self, **options)

    def text(self, **options: Any) -> str:
        from .sequence import render_text

        return render_text(self, **options)

    def save(self, path: str) -> None:
        """Write the diagram: SVG for ``*.svg``, text otherwise."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.svg() if path.endswith(".svg") else self.text())

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_html_(self) -> str:
        from .svg import scrollable

        return scrollable(self.svg())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def __repr__(self) -> str:
        return self.text()

    def __len__(self) -> int:
        return len(self.events)


def trace(server: Any, *, admin: bool = False, settle: float = DEFAULT_SETTLE) -> Trace:
    """Record the Gearman packets of a piece of code, as seen by ``server``::

        with gearnb.trace(server) as t:
            client.do("addition", msgpack.packb([2, 3]))
        t          # a sequence diagram in Jupyter; print(t) on a terminal

    See :class:`Trace` for the arguments.
    """
    return Trace(server, admin=admin, settle=settle)
