"""TLS contexts for the job server, clients and workers (the ``ssl`` module, nothing more).

The Gearman protocol has no authentication of its own; TLS with client certificates is
how gearmand (built with ``--ssl``) and gearnb keep a job server to the hosts that should
use it.
"""

from __future__ import annotations

import ssl


def server_context(certfile: str, keyfile: str | None = None, cafile: str | None = None) -> ssl.SSLContext:
    """For ``gearnb server``: its certificate; with ``cafile``, clients must show one it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if cafile:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """For Client, Worker, Executor and Admin: trust ``cafile``; present ``certfile`` if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.check_hostname = check_hostname
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    return context
