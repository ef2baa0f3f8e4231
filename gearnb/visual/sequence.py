"""Drawing a :class:`~gearnb.visual.trace.Trace` as a sequence diagram: SVG, or text.

Both drawings come from one layout, :func:`layout`: the lanes left to right (admin
connections, clients, the job server, workers) and one row per event, time flowing down.
A packet is an arrow between its connection's lane and the job server's lane, labelled with
its name and key arguments. On a worker's lane, a bar marks a job running (JOB_ASSIGN to
its WORK_COMPLETE / FAIL / EXCEPTION) and a dotted lifeline the worker asleep (PRE_SLEEP to
NOOP). A connection that ends gets a cross. Connections that were open but exchanged no
packet during the trace (the other workers of a cluster, asleep) get no lane: a line under
the diagram names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import svg
from .events import CLOSED, IN, OUT, STATE, TEXT, PacketEvent
from .trace import Lane

if TYPE_CHECKING:
    from .trace import Trace

# At most this many rows are drawn (from ``start``); a taller diagram would not be read.
MAX_ROWS = 400
SERVER = -1  # the job server's lane number in a layout

_ROLE_ORDER = {"admin": 0, "connection": 1, "client": 2, "client+worker": 2, "worker": 4}
_ASSIGN = ("JOB_ASSIGN", "JOB_ASSIGN_UNIQ", "JOB_ASSIGN_ALL")
_ENDS = ("WORK_COMPLETE", "WORK_FAIL", "WORK_EXCEPTION")


def packet_colour(name: str) -> str:
    """The colour of a packet's arrow: what part of a job's life it belongs to."""
    c = svg.COLOURS
    if name.startswith("SUBMIT_") or name == "JOB_CREATED":
        return c["client"]
    if name in _ASSIGN or name.startswith("GRAB_JOB"):
        return c["worker"]
    if name == "NOOP":
        return c["server"]
    if name in ("NO_JOB", "PRE_SLEEP"):
        return c["sleep"]
    if name in ("WORK_STATUS", "WORK_DATA", "WORK_WARNING"):
        return c["status"]
    if name == "WORK_COMPLETE":
        return c["ok"]
    if name in ("WORK_FAIL", "WORK_EXCEPTION", "ERROR"):
        return c["fail"]
    return c["muted"]


@dataclass
class Row:
    event: PacketEvent
    lane: int  # index into Layout.lanes


@dataclass
class Layout:
    """Lanes in drawing order (the server is the entry ``None``) and the rows to draw."""

    lanes: list[Lane | None]
    server_index: int
    rows: list[Row]
    skipped_before: int
    skipped_after: int
    running: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # lane -> (row, row) spans
    sleeping: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    ended: dict[int, int] = field(default_factory=dict)  # lane -> row of its CLOSED event
    origin: float = 0.0  # the time of the trace's first event: times are shown from there
    quiet: list[Lane] = field(default_factory=list)  # open all along, no packets: not drawn


def layout(trace: Trace, *, start: int = 0, limit: int = MAX_ROWS) -> Layout:
    """Order the lanes and pick the rows ``start`` .. ``start + limit`` of the trace."""
    active = {e.conn for e in list(trace.events) if e.kind != STATE}
    quiet = [lane for lane in trace.lanes if lane.conn not in active]
    lanes = sorted((lane for lane in trace.lanes if lane.conn in active),
                   key=lambda lane: (_ROLE_ORDER.get(lane.role, 1), lane.conn))
    split = sum(1 for lane in lanes if _ROLE_ORDER.get(lane.role, 1) < _ROLE_ORDER["worker"])
    ordered: list[Lane | None] = [*lanes[:split], None, *lanes[split:]]
    index = {lane.conn: i for i, lane in enumerate(ordered) if lane is not None}
    events = [e for e in list(trace.events) if e.conn in index]
    shown = events[start:start + limit]
    rows = [Row(e, index[e.conn]) for e in shown]
    out = Layout(ordered, split, rows, skipped_before=min(start, len(events)),
                 skipped_after=max(len(events) - start - limit, 0), origin=events[0].time if events else 0.0,
                 quiet=quiet)
    # Spans on worker lanes: running a job, sleeping. Open spans run to the last row.
    running: dict[tuple[int, str], int] = {}
    asleep: dict[int, int] = {}
    for r, row in enumerate(rows):
        e = row.event
        if e.kind == OUT and e.name in _ASSIGN:
            running[(row.lane, e.arg("handle"))] = r
        elif e.kind == IN and e.name in _ENDS:
            begun = running.pop((row.lane, e.arg("handle")), None)
            out.running.setdefault(row.lane, []).append((0 if begun is None else begun, r))
        elif e.kind == IN and e.name == "PRE_SLEEP":
            asleep[row.lane] = r
        elif e.kind == OUT and e.name == "NOOP" and row.lane in asleep:
            out.sleeping.setdefault(row.lane, []).append((asleep.pop(row.lane), r))
        elif e.kind == IN and e.name.startswith("GRAB_JOB") and row.lane in asleep:
            out.sleeping.setdefault(row.lane, []).append((asleep.pop(row.lane), r))  # woke by itself
        elif e.kind == STATE and e.arg("sleeping") == "1":
            asleep[row.lane] = r
        elif e.kind == CLOSED:
            out.ended[row.lane] = r
            for key in [k for k in running if k[0] == row.lane]:
                out.running.setdefault(row.lane, []).append((running.pop(key), r))
            if row.lane in asleep:
                out.sleeping.setdefault(row.lane, []).append((asleep.pop(row.lane), r))
    last = len(rows) - 1
    for (lane, _), begun in running.items():
        out.running.setdefault(lane, []).append((begun, last))
    for lane, begun in asleep.items():
        out.sleeping.setdefault(lane, []).append((begun, last))
    return out


def _subtitle(lane: Lane | None) -> str:
    if lane is None:
        return "queues · wakes workers"
    parts = [f"fd {lane.fd}"]
    if lane.abilities:
        parts.append("can do " + " ".join(lane.abilities))
    return " · ".join(parts)


def _title(lane: Lane | None) -> str:
    return "job server" if lane is None else lane.title


def _lane_colour(lane: Lane | None) -> str:
    if lane is None:
        return svg.COLOURS["server"]
    return svg.COLOURS.get(lane.role.split("+")[0], svg.COLOURS["muted"])


def _note(event: PacketEvent) -> str:
    """The text of a row that is not an arrow."""
    if event.kind == CLOSED:
        return "connection closed"
    abilities = event.arg("abilities")
    if not abilities:
        return "connected before the trace began"
    sleeping = " · asleep" if event.arg("sleeping") == "1" else ""
    return f"can do {abilities}{sleeping} (before the trace began)"


# -- SVG --------------------------------------------------------------------------------------
LANE_MIN = 170  # px between lane centres, at least; more when the labels need it
LANE_MAX = 300
TIME_WIDTH = 70  # px of the time column on the left
HEADER = 52  # px of lane titles above the first row
ROW = 34  # px per event: the packet name above its arrow, the arguments below
NAME_SIZE = 11
DETAIL_SIZE = 10


def _time_label(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def render_svg(trace: Trace, *, start: int = 0, limit: int = MAX_ROWS) -> str:
    """The trace as a standalone SVG sequence diagram (rows ``start`` .. ``start + limit``)."""
    lay = layout(trace, start=start, limit=limit)
    c = svg.COLOURS
    server = lay.server_index
    # Lane spacing: the widest label over an arrow between neighbours must fit.
    need = LANE_MIN - 20.0
    for row in lay.rows:
        span = max(abs(row.lane - server), 1)
        label = max(svg.text_width(row.event.name, NAME_SIZE), svg.text_width(row.event.detail, DETAIL_SIZE))
        need = max(need, label / span)
    gap = min(max(need + 20, LANE_MIN), LANE_MAX)
    x_of = [TIME_WIDTH + gap / 2 + i * gap for i in range(len(lay.lanes))]
    top = HEADER + 14 + (18 if lay.skipped_before else 0)
    y_of = [top + r * ROW + ROW * 0.6 for r in range(len(lay.rows))]
    bottom = top + len(lay.rows) * ROW + 10
    height = bottom + (26 if lay.skipped_after else 12)
    width = TIME_WIDTH + gap * len(lay.lanes) + 10
    parts: list[str] = []

    def row_y(r: int) -> float:
        return y_of[r] if y_of else top

    # Lane headers and lifelines.
    for i, lane in enumerate(lay.lanes):
        x = x_of[i]
        colour = _lane_colour(lane)
        box_w = gap - 16
        parts.append(svg.rect(x - box_w / 2, 8, box_w, HEADER - 12, rx=4, fill="none", stroke=colour,
                              stroke_width=1.5, title=f"{_title(lane)} — {_subtitle(lane)}"))
        parts.append(svg.text(x, 26, svg.fit(_title(lane), box_w - 8, 12), size=12, anchor="middle",
                              font_weight="bold", fill=colour, class_="lane-title"))
        parts.append(svg.text(x, 41, svg.fit(_subtitle(lane), box_w - 8, 9.5), size=9.5, anchor="middle",
                              fill=c["muted"]))
        end = row_y(lay.ended[i]) if i in lay.ended else bottom
        if lane is None:
            parts.append(svg.line(x, HEADER, x, bottom, stroke=colour, stroke_width=3, stroke_opacity=0.35))
            continue
        parts.append(svg.line(x, HEADER, x, end, stroke=c["grid"], stroke_width=1.2, stroke_dasharray="4 3"))
        for a, b in lay.sleeping.get(i, ()):
            parts.append(svg.line(x, row_y(a), x, row_y(b), stroke=c["sleep"], stroke_width=3,
                                  stroke_dasharray="1 4", stroke_linecap="round"))
            if b - a >= 1:
                parts.append(svg.text(x + 6, (row_y(a) + row_y(b)) / 2 + 3, "asleep", size=9, fill=c["sleep"]))
        for a, b in lay.running.get(i, ()):
            parts.append(svg.rect(x - 4, row_y(a), 8, max(row_y(b) - row_y(a), 4), fill=c["worker"],
                                  fill_opacity=0.25, stroke=c["worker"], title="running a job"))
        if i in lay.ended:
            y = row_y(lay.ended[i])
            parts.append(svg.line(x - 6, y - 6, x + 6, y + 6, stroke=c["fail"], stroke_width=2))
            parts.append(svg.line(x - 6, y + 6, x + 6, y - 6, stroke=c["fail"], stroke_width=2))

    if lay.skipped_before:
        parts.append(svg.text(TIME_WIDTH, HEADER + 14, f"… {lay.skipped_before:,} earlier events not drawn",
                              size=10, fill=c["muted"]))
    # Rows.
    sx = x_of[server]
    for r, row in enumerate(lay.rows):
        e = row.event
        y = y_of[r]
        parts.append(svg.text(TIME_WIDTH - 8, y + 3, _time_label(e.time - lay.origin), size=9.5, anchor="end",
                              fill=c["muted"]))
        lx = x_of[row.lane]
        if e.kind in (STATE, CLOSED):
            note = _note(e)
            parts.append(svg.text(lx + 10, y + 3, svg.fit(note, gap * 1.6, DETAIL_SIZE), size=DETAIL_SIZE,
                                  fill=c["fail"] if e.kind == CLOSED else c["muted"], font_style="italic",
                                  title=note))
            continue
        colour = packet_colour(e.name)
        # From the connection to the server (in), or back (out).
        x1, x2 = (lx, sx) if e.kind == IN else (sx, lx)
        direction = 1 if x2 > x1 else -1
        tip = x2 - direction * 2
        parts.append(svg.line(x1, y, tip - direction * 7, y, stroke=colour, stroke_width=1.6))
        parts.append(svg.polygon([(tip, y), (tip - direction * 9, y - 4.5), (tip - direction * 9, y + 4.5)],
                                 fill=colour))
        mid = (x1 + x2) / 2
        room = abs(x2 - x1) - 12
        who = "to" if e.kind == OUT else "from"
        tooltip = " ".join(filter(None, (e.name, e.detail, f"({who} {_title(lay.lanes[row.lane])}, {e.size:,} bytes)")))
        name = "admin: " + e.detail if e.name == TEXT else e.name
        parts.append(svg.text(mid, y - 5, svg.fit(name, room, NAME_SIZE), size=NAME_SIZE, anchor="middle",
                              font_weight="bold", fill=colour, title=tooltip, class_="packet"))
        if e.detail and e.name != TEXT:
            parts.append(svg.text(mid, y + 12, svg.fit(e.detail, room, DETAIL_SIZE), size=DETAIL_SIZE,
                                  anchor="middle", fill=c["ink"], title=tooltip))
    if lay.skipped_after:
        parts.append(svg.text(TIME_WIDTH, bottom + 14,
                              f"… {lay.skipped_after:,} later events not drawn (t.svg(start=...) shows them)",
                              size=10, fill=c["muted"]))
    if not lay.rows:
        parts.append(svg.text(TIME_WIDTH, top + 12, "no packets recorded", size=11, fill=c["muted"]))
    if lay.quiet:
        note = _quiet_note(lay.quiet)
        parts.append(svg.text(10, height + 8, svg.fit(note, width - 20, 10), size=10, fill=c["muted"],
                              font_style="italic", title=note))
        height += 18
    legend, legend_width = _legend(10, height + 6)
    parts.extend(legend)
    height += LEGEND
    width = max(width, legend_width + 20)
    names = ", ".join(_title(lane) for lane in lay.lanes)
    return svg.document(width, height, parts, label=f"Gearman sequence diagram: {names}")


def _quiet_note(quiet: list[Lane]) -> str:
    """Names the clients and workers left out; other connections (admin ones) are counted."""
    named = [lane.title for lane in quiet if lane.role not in ("connection", "admin")]
    others = len(quiet) - len(named)
    if others:
        named.append(f"{others} other connection{'s' if others > 1 else ''}")
    return f"not drawn, no packets during the trace: {', '.join(named)}"


LEGEND = 26  # px below the diagram
_LEGEND_ITEMS = (("submit", "client"), ("assign / grab", "worker"), ("NOOP: wake up", "server"),
                 ("NO_JOB / PRE_SLEEP", "sleep"), ("status", "status"), ("complete", "ok"), ("fail", "fail"))


def _legend(x: float, y: float) -> tuple[list[str], float]:
    """The key to the colours and marks, in one line from (x, y); and its width."""
    c = svg.COLOURS
    parts = []
    for label, colour in _LEGEND_ITEMS:
        parts.append(svg.rect(x, y + 4, 14, 3, fill=c[colour]))
        parts.append(svg.text(x + 18, y + 9, label, size=9.5, fill=c["muted"]))
        x += 26 + svg.text_width(label, 9.5)
    parts.append(svg.rect(x, y, 6, 12, fill=c["worker"], fill_opacity=0.25, stroke=c["worker"]))
    parts.append(svg.text(x + 10, y + 9, "running a job", size=9.5, fill=c["muted"]))
    x += 18 + svg.text_width("running a job", 9.5)
    parts.append(svg.line(x + 3, y, x + 3, y + 12, stroke=c["sleep"], stroke_width=3, stroke_dasharray="1 4",
                          stroke_linecap="round"))
    parts.append(svg.text(x + 10, y + 9, "asleep", size=9.5, fill=c["muted"]))
    return parts, x + 10 + svg.text_width("asleep", 9.5)


# -- text ---------------------------------------------------------------------------------------
TEXT_LANE = 18  # characters per lane column, at least
TEXT_TIME = 11


def render_text(trace: Trace, *, start: int = 0, limit: int = MAX_ROWS) -> str:
    """The same diagram in plain text, for terminals and logs."""
    lay = layout(trace, start=start, limit=limit)
    titles = [_title(lane) for lane in lay.lanes]
    width = max([TEXT_LANE, *(len(t) + 2 for t in titles)])
    centre = [TEXT_TIME + i * width + width // 2 for i in range(len(lay.lanes))]
    total = TEXT_TIME + width * len(lay.lanes)
    lines = []

    def centred(values: list[str]) -> str:
        out = [" "] * total
        for i, value in enumerate(values):
            value = value[:width - 1]
            begin = centre[i] - len(value) // 2
            out[begin:begin + len(value)] = value
        return "".join(out).rstrip()

    lines.append(centred(titles))
    lines.append(centred([("fd " + str(lane.fd)) if lane is not None else "" for lane in lay.lanes]))
    if lay.skipped_before:
        lines.append(f"{'':>{TEXT_TIME}}… {lay.skipped_before:,} earlier events")
    server = centre[lay.server_index]
    for r, row in enumerate(lay.rows):
        e = row.event
        cells = [" "] * total
        for i in range(len(lay.lanes)):
            if i in lay.ended and lay.ended[i] < r:
                continue
            asleep = any(a < r <= b for a, b in lay.sleeping.get(i, ()))
            cells[centre[i]] = ":" if asleep else "|"
        stamp = f"{(e.time - lay.origin) * 1000:,.1f}ms"
        cells[:TEXT_TIME - 1] = f"{stamp:>{TEXT_TIME - 2}} "
        lane_x = centre[row.lane]
        if e.kind in (STATE, CLOSED):
            cells[lane_x] = "x" if e.kind == CLOSED else cells[lane_x]
            lines.append("".join(cells).rstrip() + "   " + _note(e))
            continue
        a, b = sorted((lane_x, server))
        for x in range(a + 1, b):
            cells[x] = "-"
        head_at_server = e.kind == IN
        if head_at_server:
            cells[server - 1 if lane_x < server else server + 1] = ">" if lane_x < server else "<"
        else:
            cells[lane_x - 1 if server < lane_x else lane_x + 1] = ">" if server < lane_x else "<"
        label = ("admin: " + e.detail) if e.name == TEXT else f"{e.name} {e.detail}".rstrip()
        lines.append("".join(cells).rstrip() + "   " + label)
    if lay.skipped_after:
        lines.append(f"{'':>{TEXT_TIME}}… {lay.skipped_after:,} later events (t.text(start=...) shows them)")
    if not lay.rows:
        lines.append(f"{'':>{TEXT_TIME}}(no packets recorded)")
    if lay.quiet:
        lines.append(_quiet_note(lay.quiet))
    return "\n".join(lines)
