"""The cluster key and HMAC-SHA256 signatures on pyexec payloads (both directions).

pyexec runs code, so a worker runs only payloads signed with the cluster's key, and a caller
unpickles only results signed with it. The Gearman function name is part of what is
signed, so a payload captured on its way to one function cannot be replayed to another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, Union

from ..protocol.codec import BufferList, join_bytes, nbytes

# Marks a signed pyexec payload: MAGIC + 32-byte MAC + msgpack body. The digit is the signing
# scheme: 2 MACs large bodies by their chunks' digests (TREE_MIN below); gearnb builds that
# signed with 1 (one HMAC over any body) are told apart and told to upgrade, not that their
# key is wrong.
MAGIC = b"GNB2"
OLDER_MAGICS = (b"GNB1",)
MAC_SIZE = 32
KEY_ENV = "GEARNB_KEY"
KEY_FILE_ENV = "GEARNB_KEY_FILE"


# Bodies of at least TREE_MIN bytes are MACed as the list of SHA-256 digests of their TREE_CHUNK
# pieces, hashed in threads (hashlib lets go of the GIL): SHA-256 runs ~1.1 GB/s on one core
# here, so the four MACs of a 64 MiB round trip cost ~200 ms on one core, half that on two.
# Both numbers are part of the signature: changing them changes every large payload's MAC.
TREE_MIN = 4 * 1024 * 1024
TREE_CHUNK = 1024 * 1024
_TREE_MARK = b"\0tree"  # after "function NUL": a body never starts with a NUL (msgpack map or 0xC1)

Buffer = Union[bytes, memoryview]


class RefusedPayload(Exception):
    """A payload that is unsigned, wrongly signed or truncated: never unpacked."""


def new_key() -> bytes:
    return secrets.token_bytes(32)


def key_from_text(text: str) -> bytes:
    text = text.strip()
    try:
        if len(text) >= 32 and len(text) % 2 == 0:
            return bytes.fromhex(text)
    except ValueError:
        pass
    return text.encode()


def load_key(key: bytes | str | None = None, key_file: str | None = None) -> bytes | None:
    """The key from the argument, ``key_file``, ``GEARNB_KEY`` or ``GEARNB_KEY_FILE``, in that order."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key_from_text(key)
    key_file = key_file or os.environ.get(KEY_FILE_ENV)
    if key_file:
        with open(key_file, encoding="utf-8") as f:
            return key_from_text(f.read())
    text = os.environ.get(KEY_ENV)
    return key_from_text(text) if text else None


NO_KEY_HELP = (
    "pyexec needs the cluster key: pass key=..., set GEARNB_KEY (hex) or GEARNB_KEY_FILE, or "
    "use gearnb.local(), which makes one. Workers need the same key (gearnb worker --key-file F).")


class Signer:
    """HMAC-SHA256 (RFC 2104) over ``function + NUL + body``, with the key's inner and outer
    hash states computed once: a signature then costs two hash-state copies instead of a new
    ``hmac`` object, and a large body is hashed where it lies (no concatenation)."""

    __slots__ = ("key", "_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError(NO_KEY_HELP)
        self.key = key
        block = hashlib.sha256().block_size
        padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def mac(self, function: bytes, body: bytes | memoryview) -> bytes:
        return self.mac_parts(function, (body,))

    def mac_parts(self, function: bytes, parts: Sequence[Buffer]) -> bytes:
        """The MAC of ``function + NUL + b"".join(parts)``, without joining them (for a body of
        TREE_MIN bytes or more: of ``function + NUL + NUL "tree" + its chunks' digests``)."""
        return self._finish(self._start(function, parts))

    def _start(self, function: bytes, parts: Sequence[Buffer]):
        """The inner hash state of the MAC, or for a large body a function that waits for it."""
        inner = self._inner.copy()
        if len(parts) == 1 and len(parts[0]) < 4096:
            inner.update(function + b"\0" + parts[0])  # one update: small bodies (most)
            return inner
        total = sum(map(nbytes, parts))
        if total >= TREE_MIN:
            inner.update(function + b"\0" + _TREE_MARK + total.to_bytes(8, "big"))
            return _chunk_digests(parts, total, inner)
        inner.update(function + b"\0")
        for part in parts:
            inner.update(part)
        return inner

    def _finish(self, inner) -> bytes:
        if callable(inner):  # a large body: wait for its chunks' digests
            inner = inner()
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def sign(self, function: bytes, body: bytes) -> bytes:
        return MAGIC + self.mac_parts(function, (body,)) + body

    def sign_parts(self, function: bytes, parts: Sequence[Buffer]) -> bytes:
        """``sign(function, b"".join(parts))`` with one copy of the parts (into the payload),
        made while other threads hash them: the payload is a snapshot of the parts as they
        were when this returns (a caller may change its array afterwards)."""
        if len(parts) == 1:
            return self.sign(function, parts[0])
        pending = self._start(function, parts)
        return join_bytes([bytes(len(MAGIC) + MAC_SIZE), *parts], first=lambda: MAGIC + self._finish(pending))

    def signed_parts(self, function: bytes, parts: Sequence[Buffer]) -> BufferList:
        """The signed payload as buffers to send one after the other, the parts not copied:
        for a sender that sends them before anything can change them (a worker's result)."""
        return BufferList([MAGIC + self.mac_parts(function, parts), *parts])

    def verify(self, function: bytes, payload: bytes) -> memoryview:
        """The body of a correctly signed payload; raises :class:`RefusedPayload` otherwise."""
        if len(payload) < len(MAGIC) + MAC_SIZE or not payload.startswith(MAGIC):
            if payload[:len(MAGIC)] in OLDER_MAGICS:
                raise RefusedPayload(
                    f"the payload was signed by an older gearnb (scheme {payload[:len(MAGIC)].decode()}, "
                    f"this one uses {MAGIC.decode()}): run the same gearnb version on the clients and "
                    f"the workers (pip install -U gearnb on both sides)")
            raise RefusedPayload("the payload is not a signed gearnb pyexec payload")
        view = memoryview(payload)
        mac = bytes(view[len(MAGIC):len(MAGIC) + MAC_SIZE])
        body = view[len(MAGIC) + MAC_SIZE:]
        if not hmac.compare_digest(mac, self.mac_parts(function, (body,))):
            raise RefusedPayload(
                "the payload's signature does not match this cluster's key (a different GEARNB_KEY, "
                "a payload sent to another function, or a corrupted payload)")
        return body


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


def _chunk_digests(parts: Sequence[Buffer], total: int, inner) -> Callable[[], Any]:
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
