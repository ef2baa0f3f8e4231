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

from ..protocol.codec import join_bytes

MAGIC = b"GNB1"  # marks a signed pyexec payload: MAGIC + 32-byte MAC + msgpack body
MAC_SIZE = 32
KEY_ENV = "GEARNB_KEY"
KEY_FILE_ENV = "GEARNB_KEY_FILE"


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

    def mac_parts(self, function: bytes, parts: list[bytes | memoryview] | tuple[bytes | memoryview, ...]) -> bytes:
        """The MAC of ``function + NUL + b"".join(parts)``, without joining them."""
        inner = self._inner.copy()
        if len(parts) == 1 and len(parts[0]) < 4096:
            inner.update(function + b"\0" + parts[0])  # one update: small bodies (most)
        else:
            inner.update(function + b"\0")
            for part in parts:
                inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def sign(self, function: bytes, body: bytes) -> bytes:
        return MAGIC + self.mac_parts(function, (body,)) + body

    def sign_parts(self, function: bytes, parts: list[bytes | memoryview]) -> bytes:
        """``sign(function, b"".join(parts))`` with one copy of the parts (into the payload)."""
        if len(parts) == 1:
            return self.sign(function, parts[0])
        return join_bytes([MAGIC, self.mac_parts(function, parts), *parts])

    def verify(self, function: bytes, payload: bytes) -> memoryview:
        """The body of a correctly signed payload; raises :class:`RefusedPayload` otherwise."""
        if len(payload) < len(MAGIC) + MAC_SIZE or not payload.startswith(MAGIC):
            raise RefusedPayload("the payload is not a signed gearnb pyexec payload")
        view = memoryview(payload)
        mac = bytes(view[len(MAGIC):len(MAGIC) + MAC_SIZE])
        body = view[len(MAGIC) + MAC_SIZE:]
        if not hmac.compare_digest(mac, self.mac_parts(function, (body,))):
            raise RefusedPayload(
                "the payload's signature does not match this cluster's key (a different GEARNB_KEY, "
                "a payload sent to another function, or a corrupted payload)")
        return body
