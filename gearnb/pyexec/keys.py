"""The cluster key: making one and reading it (signatures are in :mod:`gearnb.pyexec.signing`)."""

from __future__ import annotations

import os
import secrets

KEY_ENV = "GEARNB_KEY"
KEY_FILE_ENV = "GEARNB_KEY_FILE"


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
