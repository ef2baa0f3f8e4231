"""Signatures on pyexec payloads: who made a payload, and which call a result answers.

pyexec runs code, so a worker runs only calls signed with the cluster key and a caller
unpickles only results signed with it. Every payload is::

    MAGIC (4) | MAC (32) | header (28: nonce 16, created µs 8, valid-for s 4) | body

A *call*'s header is fresh: a nonce no other call has, its creation time and how long it stays
valid (the worker's :mod:`~gearnb.pyexec.replay` guard refuses calls seen before or past
that). A *result* echoes the header of the call it answers and its MAC covers that call's
MAC, so a caller accepts only the result of its own call, never one kept from another.

The MAC is HMAC-SHA256 (RFC 2104) over::

    label NUL function NUL context mode
      label    b"gearnb-pyexec-call" | b"gearnb-pyexec-result"
      context  call: its header; result: the call's MAC, then the header it echoes
      mode     b"F" body                                          (body < TREE_MIN bytes)
               b"T" len(body) as 8 bytes big-endian, then the SHA-256 digests
               of the body's TREE_CHUNK pieces, hashed in threads  (body >= TREE_MIN bytes)

Labels, function names (no NUL in Gearman) and contexts (fixed sizes) are delimited, and the
verifier picks the mode from the body's length, so no call MAC is a result MAC, no small body
verifies under a large body's MAC, and a payload signed for one function fails for another.

Order of calls: the caller :meth:`Signer.sign_call` -> the worker :meth:`Signer.verify_call`,
then its replay guard, then :meth:`Signer.sign_result` -> the caller
:meth:`Signer.verify_result` with the call's :class:`CallId`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Sequence, Union

from ..buffers import BufferList, join_bytes, nbytes
from ..worker_text import shown
from .keys import NO_KEY_HELP, checked_key

# The signing scheme, first in every payload. 3: calls carry a nonce and a validity, results
# are bound to their call, labels and modes are domain-separated. Payloads of older gearnb
# builds are told apart and answered with "run the same version", not "wrong key".
MAGIC = b"GNB3"
OLDER_MAGICS = (b"GNB1", b"GNB2")
MAC_SIZE = 32
HEADER = struct.Struct(">16sQI")  # nonce, created (µs since the epoch), valid for (seconds)
NONCE_SIZE = 16  # see _Nonces: no two calls of a cluster share one
PREFIX_SIZE = len(MAGIC) + MAC_SIZE + HEADER.size  # 64: where the body starts in a payload
CALL_LABEL = b"gearnb-pyexec-call"
RESULT_LABEL = b"gearnb-pyexec-result"
# How long a call stays valid by default: a day covers a long queue of submitted calls (10,000
# futures of 10 s each on 8 workers wait 3.5 h) and keeps a captured call replayable for a day at
# most (once per worker process: see replay.py). Background and epoch calls that wait longer
# are signed with a longer ttl.
DEFAULT_CALL_TTL = 24 * 3600
MAX_CALL_TTL = 2**32 - 1  # the header's field
# A call a worker did not run and said so (signed: it ran the same call before, or the call
# expired) is signed again and sent as a new call this many times at most: once is the usual
# case (the client sent the call to a second job server after losing the first); the bound
# keeps a job server that keeps doing that from having the caller send it for ever.
MAX_SIGN_AGAIN = 3

# Bodies of at least TREE_MIN bytes are MACed as the list of SHA-256 digests of their TREE_CHUNK
# pieces, hashed in threads (hashlib lets go of the GIL): SHA-256 runs ~1.1 GB/s on one core
# here, so the four MACs of a 64 MiB round trip cost ~200 ms on one core, half that on two.
# Both numbers are part of the signature: changing them changes every large payload's MAC.
TREE_MIN = 4 * 1024 * 1024
TREE_CHUNK = 1024 * 1024
_FLAT, _TREE = b"F", b"T"
_SMALL = 4096  # bodies below this are hashed with their MAC prefix in one update

Buffer = Union[bytes, memoryview]


class RefusedPayload(Exception):
    """A payload that is unsigned, wrongly signed, truncated, replayed or stale: never unpacked."""


class CallId(NamedTuple):
    """A call's identity: its MAC and header. The caller keeps it to check the answer
    (:meth:`Signer.verify_result`); the worker signs its answer over it. ``attempt``: how many
    calls before it carried the same work (the caller's count, not signed)."""

    mac: bytes
    header: bytes
    attempt: int = 0

    @property
    def nonce(self) -> bytes:
        return self.header[:NONCE_SIZE]

    @property
    def created(self) -> float:
        """When the call was signed, in seconds since the epoch (the caller's clock)."""
        return HEADER.unpack(self.header)[1] / 1e6

    @property
    def ttl(self) -> int:
        """How many seconds after ``created`` the call stays valid."""
        return HEADER.unpack(self.header)[2]


class _Nonces:
    """Call nonces, unique without a system call each: 8 random bytes per process (drawn again
    in a forked child, which must not repeat its parent's) and a counter. Uniqueness is all a
    nonce needs: it is public, and a call's MAC covers it. Two processes share a prefix with
    probability 2**-64 per pair. ``next`` on the counter is one C call: safe across threads."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = os.urandom(NONCE_SIZE // 2)
        self.counter = itertools.count()

    def __call__(self) -> bytes:
        return self.prefix + next(self.counter).to_bytes(NONCE_SIZE // 2, "big")


_new_nonce = _Nonces()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_nonce.reset)


def call_body(payload: bytes | memoryview) -> memoryview:
    """The body of a signed call, as a view (to sign it again as a new call: a retry)."""
    return memoryview(payload)[PREFIX_SIZE:]


class Signer:
    """HMAC-SHA256 with the cluster key, the key's inner and outer hash states computed once:
    a signature costs two hash-state copies instead of a new ``hmac`` object, and a large
    body is hashed where it lies (no concatenation)."""

    __slots__ = ("_inner", "_outer", "_labelled")

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError(NO_KEY_HELP)
        checked_key(key)
        block = hashlib.sha256().block_size
        padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
        self._labelled: dict[tuple[bytes, bytes], bytes] = {}  # (label, function) -> "label NUL function NUL"

    def _label(self, label: bytes, function: bytes) -> bytes:
        labelled = self._labelled.get((label, function))
        if labelled is None:
            if len(self._labelled) > 64:  # a handful of function names in practice; never grows unbounded
                self._labelled.clear()
            labelled = self._labelled[label, function] = label + b"\0" + function + b"\0"
        return labelled

    # -- calls ------------------------------------------------------------------------------
    def sign_call(self, function: bytes, parts: Sequence[Buffer], ttl: int = DEFAULT_CALL_TTL,
                  created: float | None = None, after: CallId | None = None) -> tuple[bytes, CallId]:
        """The signed payload of a call whose body is ``b"".join(parts)``, and its identity.

        A fresh nonce every time: a retry is signed again (with :func:`call_body` of the
        first payload), never resent as it was; ``after``: the call it replaces (counted in
        ``attempt``). ``ttl``: seconds the call stays valid after ``created`` (default now).
        The parts are copied once into the payload while other threads hash them: the payload
        is a snapshot of them as they were when this returns.
        """
        if not 0 < ttl <= MAX_CALL_TTL:
            raise ValueError(f"ttl must be between 1 and {MAX_CALL_TTL} seconds, not {ttl}")
        stamp = time.time() if created is None else created
        header = HEADER.pack(_new_nonce(), int(stamp * 1e6), int(ttl))
        prefix = self._label(CALL_LABEL, function) + header
        attempt = 0 if after is None else after.attempt + 1
        if len(parts) == 1:
            mac = self._mac(prefix, parts)
            return b"".join((MAGIC, mac, header, parts[0])), CallId(mac, header, attempt)
        pending = self._start(prefix, parts)
        macs: list[bytes] = []

        def head() -> bytes:
            macs.append(self._finish(pending))
            return MAGIC + macs[0] + header

        payload = join_bytes([bytes(PREFIX_SIZE), *parts], first=head)
        return payload, CallId(macs[0], header, attempt)

    def verify_call(self, function: bytes, payload: bytes | memoryview) -> tuple[memoryview, CallId]:
        """The body and identity of a correctly signed call; raises :class:`RefusedPayload`
        otherwise. Whether the call is fresh and new is for the worker's replay guard."""
        body, mac, header = _split(payload)
        expected = self._mac(self._label(CALL_LABEL, function) + header, (body,))
        if not hmac.compare_digest(mac, expected):
            raise RefusedPayload(
                "the payload's signature does not match this cluster's key (a different GEARNB_KEY, "
                "a payload sent to another function, a result sent as a call, or a corrupted payload)")
        return body, CallId(mac, header)

    # -- results ----------------------------------------------------------------------------
    def sign_result(self, function: bytes, call: CallId, parts: Sequence[Buffer]) -> bytes:
        """The signed payload of the answer to ``call`` (body ``b"".join(parts)``), joined."""
        head = MAGIC + self._mac(self._result_prefix(function, call), parts) + call.header
        if len(parts) == 1:
            return b"".join((head, parts[0]))
        return join_bytes([head, *parts])

    def signed_result_parts(self, function: bytes, call: CallId, parts: Sequence[Buffer]) -> BufferList:
        """:meth:`sign_result` as buffers to send one after the other, the parts not copied:
        for a sender that sends them before anything can change them (a worker's result)."""
        return BufferList([MAGIC + self._mac(self._result_prefix(function, call), parts) + call.header, *parts])

    def verify_result(self, function: bytes, payload: bytes | memoryview, call: CallId) -> memoryview:
        """The body of the answer to ``call``; raises :class:`RefusedPayload` for anything
        else: unsigned, signed with another key, or the answer to another call."""
        body, mac, header = _split(payload)
        expected = self._mac(self._result_prefix(function, call, header), (body,))
        if hmac.compare_digest(mac, expected):
            return body
        if header[:NONCE_SIZE] != call.nonce:
            raise RefusedPayload(
                f"the answer is not the result of this call (it names call {header[:4].hex()}..., this call is "
                f"{call.nonce[:4].hex()}...): a result kept from another call, sent back by a rogue worker or "
                f"job server; refused, nothing in it was unpacked")
        raise RefusedPayload("the worker's answer is not signed with this cluster's key; "
                             "is the worker started with the same GEARNB_KEY?")

    def _result_prefix(self, function: bytes, call: CallId, header: bytes | None = None) -> bytes:
        return b"".join((self._label(RESULT_LABEL, function), call.mac, call.header if header is None else header))

    # -- the MAC ----------------------------------------------------------------------------
    def _mac(self, prefix: bytes, parts: Sequence[Buffer]) -> bytes:
        return self._finish(self._start(prefix, parts))

    def _start(self, prefix: bytes, parts: Sequence[Buffer]):  # type: ignore[no-untyped-def]
        """The inner hash state of a MAC, or for a large body a function that waits for it."""
        inner = self._inner.copy()
        if len(parts) == 1 and len(parts[0]) < _SMALL:
            inner.update(prefix + _FLAT + parts[0])  # one update: small bodies (most)
            return inner
        total = sum(map(nbytes, parts))
        if total >= TREE_MIN:
            inner.update(prefix + _TREE + total.to_bytes(8, "big"))
            return _chunk_digests(parts, total, inner)
        inner.update(prefix + _FLAT)
        for part in parts:
            inner.update(part)
        return inner

    def _finish(self, inner: Any) -> bytes:
        if callable(inner):  # a large body: wait for its chunks' digests
            inner = inner()
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _split(payload: bytes | memoryview) -> tuple[memoryview, bytes, bytes]:
    """A payload's body (a view), MAC and header; refuses what is not a payload of this scheme."""
    magic = bytes(payload[:len(MAGIC)])
    if magic != MAGIC or len(payload) < PREFIX_SIZE:
        if magic in OLDER_MAGICS:
            raise RefusedPayload(
                f"the payload was signed by an older gearnb (scheme {magic.decode()}, this one uses "
                f"{MAGIC.decode()}): run the same gearnb version on the clients and the workers "
                f"(pip install -U gearnb on both sides)")
        raise RefusedPayload("the payload is not a signed gearnb pyexec payload")
    return (memoryview(payload)[PREFIX_SIZE:], bytes(payload[len(MAGIC):len(MAGIC) + MAC_SIZE]),
            bytes(payload[len(MAGIC) + MAC_SIZE:PREFIX_SIZE]))


# Threads that hash the chunks: at least two, so the caller's copy of a payload overlaps with
# its hashing even on one core's worth of CPU.
_POOL_SIZE = max(2, os.cpu_count() or 2)
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child gets its own threads
            _pool = ThreadPoolExecutor(max_workers=_POOL_SIZE, thread_name_prefix="gearnb-mac")
            _pool_pid = os.getpid()
        return _pool


def _chunk_digests(parts: Sequence[Buffer], total: int, inner: Any) -> Callable[[], Any]:
    """A function returning ``inner`` updated with the SHA-256 digests of the TREE_CHUNK pieces of the
    concatenated ``parts``, hashed by the pool's threads, one contiguous run of chunks each."""
    views = [memoryview(part).cast("B") for part in parts]
    pool = _hash_pool()
    chunks = -(-total // TREE_CHUNK)
    runs = min(_POOL_SIZE, chunks)
    bounds = [chunks * i // runs * TREE_CHUNK for i in range(runs + 1)]
    futures = [pool.submit(_hash_run, views, start, min(stop, total)) for start, stop in zip(bounds, bounds[1:])]

    def joined() -> Any:
        for future in futures:
            inner.update(future.result())
        return inner

    return joined


def _hash_run(views: list[memoryview], start: int, stop: int) -> bytes:
    """The digests of the chunks of bytes [start, stop) of the concatenated views."""
    digests = []
    pos = start
    index, offset = 0, 0  # the view holding byte ``pos`` and where that view starts
    while offset + views[index].nbytes <= pos:
        offset += views[index].nbytes
        index += 1
    while pos < stop:
        end = min(pos + TREE_CHUNK, stop)
        chunk = hashlib.sha256()
        while pos < end:
            view = views[index]
            take = min(end, offset + view.nbytes) - pos
            chunk.update(view[pos - offset:pos - offset + take])
            pos += take
            if pos == offset + view.nbytes and index + 1 < len(views):
                offset += view.nbytes
                index += 1
        digests.append(chunk.digest())
    return b"".join(digests)


def worker_refusal(payload: bytes, refused: RefusedPayload) -> RefusedPayload:
    """What a caller raises for a failed job (WORK_EXCEPTION / WORK_FAIL data) that did not
    verify: a worker's refusal is plain unsigned text, shown neutralised (it may come from
    anyone); data that looks signed keeps ``refused``'s reason."""
    if payload[:len(MAGIC)] in (MAGIC, *OLDER_MAGICS):
        return refused
    text = shown(payload)
    if "is not a signed gearnb pyexec payload" in text:
        text += (f" (a worker of an older gearnb says this of a {MAGIC.decode()} payload: run the same gearnb "
                 f"version on the clients and the workers)")
    return RefusedPayload(text)
