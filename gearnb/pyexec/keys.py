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
    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError(NO_KEY_HELP)
        self.key = key

    def mac(self, function: bytes, body: bytes) -> bytes:
        return hmac.new(self.key, function + b"\0" + body, hashlib.sha256).digest()

    def sign(self, function: bytes, body: bytes) -> bytes:
        return MAGIC + self.mac(function, body) + body

    def verify(self, function: bytes, payload: bytes) -> memoryview:
        """The body of a correctly signed payload; raises :class:`RefusedPayload` otherwise."""
        if len(payload) < len(MAGIC) + MAC_SIZE or not payload.startswith(MAGIC):
            raise RefusedPayload("the payload is not a signed gearnb pyexec payload")
        view = memoryview(payload)
        mac = bytes(view[len(MAGIC):len(MAGIC) + MAC_SIZE])
        body = view[len(MAGIC) + MAC_SIZE:]
        if not hmac.compare_digest(mac, self.mac(function, body)):
            raise RefusedPayload(
                "the payload's signature does not match this cluster's key (a different GEARNB_KEY, "
                "a payload sent to another function, or a corrupted payload)")
        return body
