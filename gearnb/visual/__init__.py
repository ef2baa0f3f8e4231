"""Seeing Gearman work in a notebook: packet traces drawn as sequence diagrams, a live
picture of a job server's queues and workers, and a task stream of the jobs it handed out.

* :func:`trace` (also ``gearnb.trace``): ``with gearnb.trace(server) as t: ...`` records the
  packets; ``t`` draws itself as a sequence diagram (:mod:`.trace`, :mod:`.sequence`).
* :func:`cluster_view`: a live ipywidgets picture of a job server (:mod:`.cluster_view`);
  :func:`cluster_snapshot`: one still picture of it (:mod:`.cluster`).

The rest of gearnb uses nothing from here but the job server's trace hooks
(``JobServer.tracer``); ipywidgets and matplotlib are imported only when a live view or a
figure is asked for.
"""

from .cluster import ClusterSnapshot, snapshot as cluster_snapshot
from .cluster_view import ClusterView, cluster_view
from .trace import PacketEvent, PacketTap, Trace, trace

__all__ = [
    "ClusterSnapshot", "ClusterView", "PacketEvent", "PacketTap", "Trace", "cluster_snapshot", "cluster_view",
    "trace",
]
