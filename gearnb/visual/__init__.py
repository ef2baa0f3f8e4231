"""Seeing Gearman work in a notebook: packet traces drawn as sequence diagrams.

* :func:`trace` (also ``gearnb.trace``): ``with gearnb.trace(server) as t: ...`` records the
  packets; ``t`` draws itself as a sequence diagram (:mod:`.trace`, :mod:`.sequence`).

The rest of gearnb uses nothing from here but the job server's trace hooks
(``JobServer.tracer``).
"""

from .trace import PacketEvent, PacketTap, Trace, trace

__all__ = ["PacketEvent", "PacketTap", "Trace", "trace"]
