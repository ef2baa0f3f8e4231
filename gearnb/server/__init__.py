"""The bundled Gearman job server (asyncio, one process), compatible with gearmand 1.1.x.

>>> from gearnb.server import Server
>>> with Server("127.0.0.1", 0) as server:   # a free port, on a thread of its own
...     print(server.address)                # doctest: +SKIP
"""

from .core import JobServer
from ..addresses import DEFAULT_PORT
from .listener import Server, serve

__all__ = ["DEFAULT_PORT", "JobServer", "Server", "serve"]
