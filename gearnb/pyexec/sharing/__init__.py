"""Large values through shared memory between processes of one host, beside the job server.

A large out-of-band buffer of a call or a result (a numpy array's data) does not travel in the
Gearman job: it is written once into a *sealed memfd* (an anonymous memory file that nobody can
change once sealed, and that has no name in any file system), and the job carries a small
reference to it, ``[token, size]``, inside the signed payload. The other side maps the memfd
copy-on-write and unpickles the array as a view of that mapping: no copy, and writes to it stay
private to the process that makes them.

The memfds move between processes as file descriptors (SCM_RIGHTS) over one Unix socket per
calling process: its :class:`ValueStore`, bound to a random *abstract* address (Linux: no file,
gone when the process is), named in every call. Order of calls:

* a caller shares an argument (:meth:`ValueStore.share`: write, seal, keep the fd under a fresh
  random token) and sends the call; the worker's task process asks the store for the token
  (:meth:`StoreLinks.fetch`, message ``G``) and gets the fd (``F``) or "gone" (``N``);
* a task process shares a large result by sending its sealed memfd to the caller's store
  (:meth:`StoreLinks.deliver`, ``P``, tagged with the call's nonce) before it answers the job;
  the caller takes it when it decodes the answer (:meth:`ValueStore.take`);
* when a caller no longer needs a value it releases it (:meth:`ValueStore.release`: its fd is
  closed, and every task process that fetched it is told, ``R``, and drops its mapping).

Lifetime rule: a shared value is memory held by the processes that have its fd or a mapping of
it, and nothing else - no file in /dev/shm, nothing for anyone to clean up. When a caller dies
(even kill -9) its fds close, its store's socket goes, and the task processes connected to it
see the end of the stream and drop their mappings (a running task keeps the arrays it holds
until it ends); when a task process dies, its fds and mappings go with it.

Trust: the reference travels in the signed payload, so only a key holder makes one. Both ends
check that the other process runs as the same user (or root) with SO_PEERCRED - any process of
that user can read its key file and its memory anyway - and a fetched or delivered memfd must be
sealed against writing, shrinking and growing and have the size the signed reference names, so
its bytes are the ones its maker wrote before signing. A worker that cannot reach the store (on
another host, in another network namespace, another user) answers "send it inline"
(:class:`~gearnb.pyexec.envelope.NeedInline`) and the caller sends the bytes in the job.

Modules: :mod:`.memfd` (sealed memfds, the socket messages, references), :mod:`.store` (the
calling side: ValueStore, RunShares, ChunkShares), :mod:`.links` (the worker's side: StoreLinks).
"""

from .links import StoreLinks
from .memfd import (
    FOUND, GET, GONE, PUT, RELEASED, SHARE_MIN, SharedUnavailable, available, map_sealed, seal,
)
from .memfd import _send  # noqa: F401  (tests speak the socket protocol directly)
from .store import ChunkShares, RunShares, ValueStore, value_store

__all__ = ["ChunkShares", "FOUND", "GET", "GONE", "PUT", "RELEASED", "RunShares", "SHARE_MIN", "SharedUnavailable",
           "StoreLinks", "ValueStore", "available", "map_sealed", "seal", "value_store"]
