"""Rich display in Jupyter: HTML for executors (servers, workers, queues) and futures.

Each ``_repr_html_`` asks the job servers afresh, so re-evaluating the object refreshes it.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from .admin import Admin

if TYPE_CHECKING:
    from .executor import Executor, GearnbFuture

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px"
_CELL = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th style="{_CELL}">{html.escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{html.escape(str(c))}</td>' for c in row) + "</tr>"
                   for row in rows)
    return f'<table style="{_STYLE}"><tr>{head}</tr>{body}</table>'


def executor_html(executor: Executor) -> str:
    parts = [f"<div><b>gearnb {html.escape(type(executor).__name__)}</b></div>"]
    for server in executor.servers:
        try:
            with Admin(server, timeout=2) as admin:
                version = admin.version()
                status = admin.status()
                workers = [w for w in admin.workers() if w.functions]
        except OSError as exc:
            parts.append(f"<div>{html.escape(server)}: <span style='color:#c00'>unreachable ({html.escape(str(exc))})"
                         "</span></div>")
            continue
        parts.append(f"<div style='margin-top:6px'>job server <b>{html.escape(server)}</b> "
                     f"({html.escape(version)})</div>")
        parts.append(_table(["function", "queued", "running", "workers"],
                            [[s.function, s.total - s.running, s.running, s.workers] for s in status]))
        parts.append(_table(["worker", "address", "functions"],
                            [[w.client_id, w.ip, " ".join(w.functions)] for w in workers]))
    pids = getattr(executor, "worker_pids", None)
    if callable(pids):
        parts.append(f"<div>local worker processes: {html.escape(' '.join(map(str, pids())))}</div>")
    return "".join(parts)


def future_html(future: GearnbFuture) -> str:
    state = future._state.lower()
    colour = {"finished": "#2a2", "cancelled": "#888", "pending": "#c80", "running": "#c80"}.get(state, "#000")
    if state == "finished" and future.exception() is not None:
        state, colour = f"error: {type(future.exception()).__name__}", "#c00"
    end = future.finished_at or time.time()
    rows = [["function", future.label], ["state", state],
            ["job handle", (future.handle or b"-").decode(errors="replace")],
            ["server", future.server or "-"], ["elapsed", f"{(end - future.submitted_at) * 1000:.1f} ms"]]
    body = "".join(f'<tr><td style="{_CELL}"><b>{k}</b></td>'
                   f'<td style="{_CELL};color:{colour if k == "state" else "inherit"}">{html.escape(str(v))}</td></tr>'
                   for k, v in rows)
    return f'<table style="{_STYLE}">{body}</table>'
