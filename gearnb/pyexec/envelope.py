"""The pyexec envelope: what a call and its result look like on the wire.

A call is a msgpack map: format version, Python and cloudpickle versions, the function
(cloudpickle bytes, or only its digest once the worker has it cached) and the arguments.
Arguments and results travel as msgpack when they are plain data (None, bool, int, float,
str, bytes, lists, dicts) and as cloudpickle otherwise; out-of-band pickle protocol 5
buffers (numpy arrays) are carried next to the pickle, not copied into it.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import traceback
from typing import Any

import cloudpickle
import msgpack

FORMAT_VERSION = 1
PYTHON_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
CLOUDPICKLE_VERSION = cloudpickle.__version__

PLAIN, PICKLED = 0, 1


class VersionMismatch(RuntimeError):
    """Caller and worker run different Python minor versions or cloudpickle versions."""


class NeedCode(Exception):
    """The worker does not have the function cached: send the call again with its code."""


class RemoteTraceback(Exception):
    """The remote traceback, attached as ``__cause__`` (as concurrent.futures does)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class RemoteError(Exception):
    """A remote exception whose type could not be rebuilt here; ``type_name`` names it."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=True)


def _unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def pack_with(msg: dict[str, Any], field: str, value: Any) -> bytes:
    """Pack ``msg`` with ``value`` in ``field``: as plain msgpack when it is plain data, else
    as a cloudpickle (with out-of-band protocol 5 buffers kept beside it, not copied into it).
    The plain case - the common one - packs once."""
    msg[field] = value
    try:
        return _pack(msg)
    except (TypeError, OverflowError, ValueError):
        pass
    buffers: list[pickle.PickleBuffer] = []
    msg[field] = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    msg[field + "f"] = PICKLED
    if buffers:
        msg[field + "b"] = [b.raw() for b in buffers]
    return _pack(msg)


def load_value(msg: dict[str, Any], field: str) -> Any:
    if msg.get(field + "f") == PICKLED:
        return pickle.loads(msg[field], buffers=msg.get(field + "b", ()))
    return msg[field]


class FunctionBlob:
    """A callable pickled once (per map), named by the digest of its pickle."""

    __slots__ = ("fn", "code", "digest")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.code = cloudpickle.dumps(fn, protocol=5)
        self.digest = hashlib.sha256(self.code).digest()[:16]


def encode_call(blob: FunctionBlob, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                with_code: bool, chunk: bool) -> bytes:
    """The body of a call: one ``(args, kwargs)`` or, with ``chunk``, several of them."""
    msg: dict[str, Any] = {
        "v": FORMAT_VERSION, "py": PYTHON_VERSION, "cp": CLOUDPICKLE_VERSION, "fd": blob.digest,
        "ch": chunk,
    }
    if with_code:
        msg["fc"] = blob.code
    return pack_with(msg, "a", [[list(args), kwargs] for args, kwargs in calls])


def decode_call(body: bytes | memoryview) -> dict[str, Any]:
    msg = _unpack(body)
    if not isinstance(msg, dict) or msg.get("v") != FORMAT_VERSION:
        raise VersionMismatch(f"unknown pyexec format {msg.get('v') if isinstance(msg, dict) else '?'}; "
                              f"this worker speaks format {FORMAT_VERSION}: upgrade gearnb on both sides")
    if msg.get("py") != PYTHON_VERSION or msg.get("cp") != CLOUDPICKLE_VERSION:
        raise VersionMismatch(
            f"the caller runs Python {msg.get('py')} with cloudpickle {msg.get('cp')}, this worker runs "
            f"Python {PYTHON_VERSION} with cloudpickle {CLOUDPICKLE_VERSION}; pickled code only moves "
            f"between the same Python minor version and cloudpickle version: install matching ones")
    return msg


def call_arguments(msg: dict[str, Any]) -> list[tuple[list[Any], dict[str, Any]]]:
    return [(args, kwargs) for args, kwargs in load_value(msg, "a")]


# -- results -------------------------------------------------------------------------------
def error_record(exc: BaseException) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    record: dict[str, Any] = {"t": f"{type(exc).__module__}.{type(exc).__qualname__}", "m": str(exc), "tb": tb}
    try:
        record["x"] = cloudpickle.dumps(exc, protocol=5)
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
        pass
    return record


def rebuild_error(record: dict[str, Any]) -> BaseException:
    """The remote exception with its original type where possible, remote traceback as cause."""
    exc: BaseException | None = None
    if record.get("x") is not None:
        try:
            exc = pickle.loads(record["x"])
        except Exception:  # noqa: BLE001 - fall back to RemoteError
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(record.get("t", "?"), record.get("m", ""))
    exc.__cause__ = RemoteTraceback(record.get("tb", ""))
    return exc


def encode_result(values: list[Any], errors: dict[int, dict[str, Any]]) -> bytes:
    msg: dict[str, Any] = {"v": FORMAT_VERSION}
    if errors:
        msg["e"] = errors
    return pack_with(msg, "r", values)


def encode_need_code() -> bytes:
    return _pack({"v": FORMAT_VERSION, "need_code": True})


def encode_failure(exc: BaseException) -> bytes:
    """A failure of the whole call (bad envelope, version mismatch)."""
    return _pack({"v": FORMAT_VERSION, "fail": error_record(exc)})


def decode_result(body: bytes | memoryview) -> dict[str, Any]:
    msg = _unpack(body)
    if not isinstance(msg, dict):
        raise ValueError("not a pyexec result")
    if "r" in msg:
        msg["values"] = load_value(msg, "r")
    return msg
