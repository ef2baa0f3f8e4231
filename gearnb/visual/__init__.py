"""Seeing Gearman work in a notebook: packet traces drawn as sequence diagrams, a live
picture of a job server's queues and workers, and a task stream of the jobs it handed out.

* :func:`trace` (also ``gearnb.trace``): ``with gearnb.trace(server) as t: ...`` records the
  packets; ``t`` draws itself as a sequence diagram (:mod:`.trace`, :mod:`.sequence`).
* :func:`cluster_view`: a live ipywidgets picture of a job server (:mod:`.cluster_view`);
  :func:`cluster_snapshot`: one still picture of it (:mod:`.cluster`).
* :class:`TaskStream` / :func:`task_stream`: task runs per worker over time, as a picture,
  a matplotlib figure and a live panel (:mod:`.stream`).

The rest of gearnb uses nothing from here but the job server's trace hooks
(``JobServer.tracer``); ipywidgets and matplotlib are imported only when a live view or a
figure is asked for.
"""

from typing import Any

from .cluster import ClusterSnapshot, snapshot as cluster_snapshot
from .cluster_view import ClusterView, cluster_view
from .stream import TaskRecord, TaskStream
from .events import PacketEvent
from .recorder import PacketTap
from .trace import Trace, trace


def task_stream(server: Any) -> TaskStream:
    """A :class:`TaskStream` recording the jobs ``server`` hands out, from now until
    ``stream.stop()`` (or the end of a ``with`` block). ``server``: a gearnb Server in this
    process, or the "host:port" of a gearnb server."""
    return TaskStream().record(server)


__all__ = [
    "ClusterSnapshot", "ClusterView", "PacketEvent", "PacketTap", "TaskRecord", "TaskStream", "Trace",
    "cluster_snapshot", "cluster_view", "task_stream", "trace",
]
