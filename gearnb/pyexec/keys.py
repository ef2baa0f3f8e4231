"""The cluster key: making one, reading it, and key files.

A key is random bytes shared by the callers and the workers of one cluster (HMAC-SHA256
keys for :mod:`gearnb.pyexec.signing`). As text - ``GEARNB_KEY``, a key file, ``key="..."`` -
it is hex. A key file is created with :func:`create_key_file`: mode 0600 from the moment
it exists (``O_CREAT | O_EXCL``, whatever the umask), never over an existing file; the key
itself is never printed, only the file's path. :func:`load_key` looks, in order, at the
argument, the key file, ``GEARNB_KEY_FILE``, ``GEARNB_KEY``; it refuses short or malformed
keys with a message saying how to make one and warns about a key file others can read.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat

log = logging.getLogger("gearnb.pyexec")

KEY_ENV = "GEARNB_KEY"
KEY_FILE_ENV = "GEARNB_KEY_FILE"
# new_key()'s size: 256 bits, HMAC-SHA256's block-size-independent strength (RFC 2104 §3
# recommends at least the hash's output length).
KEY_BYTES = 32
# Shorter keys are refused: 128 bits is the least strength NIST SP 800-107 allows for an HMAC
# key, and it rules out passwords typed by hand ("a", "secret").
MIN_KEY_BYTES = 16
KEY_FILE_MODE = 0o600

HOW_TO_MAKE_A_KEY = (
    "make one with `gearnb key new cluster.key` (a 0600 file holding 32 random bytes in hex) and pass "
    "key_file='cluster.key' / --key-file cluster.key, or GEARNB_KEY=$(python -c 'import secrets; "
    "print(secrets.token_hex(32))')")

NO_KEY_HELP = (
    "pyexec needs the cluster key: pass key=... or key_file=..., set GEARNB_KEY (hex) or GEARNB_KEY_FILE, "
    "or use gearnb.local(), which makes one. Workers need the same key (gearnb worker --key-file F). "
    "No key yet? " + HOW_TO_MAKE_A_KEY)


class BadKey(ValueError):
    """A key that is too short or not hex; the message says how to make a good one."""


def new_key() -> bytes:
    """A fresh random cluster key (``KEY_BYTES`` bytes)."""
    return secrets.token_bytes(KEY_BYTES)


def checked_key(key: bytes, where: str = "the key") -> bytes:
    """``key`` if it is long enough to be a cluster key; raises :class:`BadKey` otherwise."""
    if len(key) < MIN_KEY_BYTES:
        raise BadKey(f"{where} is {len(key)} bytes; a cluster key has at least {MIN_KEY_BYTES} random bytes: "
                     + HOW_TO_MAKE_A_KEY)
    return key


def key_from_text(text: str, where: str = "the key") -> bytes:
    """The key written as hex in ``text`` (surrounding blanks ignored); ``where`` names its
    source in the error: a key is never guessed from text that is not hex."""
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise BadKey(f"{where} is not a hex key ({len(text)} characters, not all hex digits); "
                     + HOW_TO_MAKE_A_KEY) from None
    return checked_key(key, where)


def read_key_file(path: str) -> bytes:
    """The key in the file at ``path``; warns when group or others may read the file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        mode = os.fstat(f.fileno()).st_mode
        text = f.read()
    if mode & 0o077:
        log.warning("key file %s can be read or changed by other users (mode %04o): anyone who can read it "
                    "can run code on the workers; run `chmod 600 %s`", path, stat.S_IMODE(mode), path)
    return key_from_text(text, f"the key in {path}")


def load_key(key: bytes | str | None = None, key_file: str | None = None) -> bytes | None:
    """The key from the argument (bytes, or hex text), ``key_file``, ``GEARNB_KEY_FILE`` or
    ``GEARNB_KEY``, in that order; None when there is none. Raises :class:`BadKey` for
    a key too short or not hex."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        return checked_key(bytes(key), "key=")
    if isinstance(key, str):
        return key_from_text(key, "key=")
    key_file = key_file or os.environ.get(KEY_FILE_ENV)
    if key_file:
        return read_key_file(key_file)
    text = os.environ.get(KEY_ENV)
    return key_from_text(text, KEY_ENV) if text else None


def create_key_file(path: str, key: bytes | None = None) -> bytes:
    """Write ``key`` (default: :func:`new_key`) as hex to a new file at ``path`` and return it.

    The file is created by ``open(O_CREAT | O_EXCL, 0600)`` and ``fchmod``-ed to 0600 before
    anything is written, so no other user can ever open it, whatever the umask; an existing
    file is never replaced (raises FileExistsError); a file left half written (disk full) is
    removed.
    """
    key = checked_key(key if key is not None else new_key())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # the umask may have taken bits away, never added any
        data = (key.hex() + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return key
