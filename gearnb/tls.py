"""TLS contexts for the job server, clients and workers (the ``ssl`` module, nothing more).

The Gearman protocol has no authentication of its own; TLS with client certificates is
how gearmand (built with ``--ssl``) and gearnb keep a job server to the hosts that should
use it. One set of files on both sides, the same option names on every command:
``--ssl-cert`` / ``--ssl-key`` (this side's certificate and key) and ``--ssl-ca`` (the CA
that signed the other side's): ``gearnb server`` requires client certificates signed by its
``--ssl-ca``; ``gearnb worker`` and ``gearnb status`` trust servers signed by theirs and show
their own certificate. In Python, :func:`client_context` goes to ``ssl=`` of ``Client``,
``Worker``, ``Admin``, ``Executor`` and ``gearnb.connect``: every connection they make (jobs,
the worker count, cancelling) then speaks TLS.
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


def client_context_from(cafile: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """A client context from command-line options, or None when none was given (plain TCP)."""
    if not (cafile or certfile or keyfile):
        return None
    if keyfile and not certfile:
        raise ValueError("--ssl-key needs --ssl-cert (the certificate it belongs to)")
    return client_context(cafile, certfile, keyfile)
