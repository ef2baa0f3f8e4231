"""The pyexec envelope: what a call and its result look like on the wire.

A call is a msgpack map: format version, Python and cloudpickle versions, the function
(cloudpickle bytes, or only its digest once the worker has it cached) and the arguments.
Arguments and results travel as msgpack when they are plain data (None, bool, int, float,
str, bytes, lists, dicts) and as cloudpickle otherwise; out-of-band pickle protocol 5
buffers (numpy arrays) are carried next to the pickle, not copied into it.

Large out-of-band buffers (``FRAME_MIN`` bytes and more) make a *framed* body: the byte 0xC1
(which msgpack never uses), the length of the msgpack map, the map, then the buffers, raw,
each aligned in the signed payload. They are copied once into the payload on the sending side
and unpickled in place, from the received payload, on the other.

The calls of a map chunk travel as columns (``"c"``: one list per argument position), so a
chunk of plain items is one msgpack list of them.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import sys
import traceback
from typing import Any, Union

import cloudpickle
import msgpack

from ..worker_text import neutralise
from .signing import MAX_SIGN_AGAIN, PREFIX_SIZE, CallId, RefusedPayload

# 2: map chunks as argument columns ("c"), large out-of-band buffers framed (0xC1). A worker
# of format 1 answers a format-2 call with a VersionMismatch that says to upgrade both sides.
FORMAT_VERSION = 2
PYTHON_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
CLOUDPICKLE_VERSION = cloudpickle.__version__

PLAIN, PICKLED = 0, 1

# Out-of-band buffers of at least this many bytes in all travel framed (after the msgpack map):
# in the map, msgpack would copy them twice when packing and once more when unpacking.
FRAME_MIN = 256 * 1024
FRAME_MARKER = 0xC1  # never used by msgpack: a framed body cannot be taken for a plain one
_FRAME = struct.Struct("<B3xI")  # marker, padding, length of the msgpack map that follows
FRAME_ALIGN = 64  # framed buffers start at multiples of this in the signed payload
_PAYLOAD_OFFSET = PREFIX_SIZE  # where the body starts in a signed payload

Part = Union[bytes, memoryview]


class VersionMismatch(RuntimeError):
    """Caller and worker run different Python minor versions or cloudpickle versions."""


class NeedCode(Exception):
    """The worker does not have the function cached: send the call again with its code."""


class SignAgain(NeedCode):
    """The worker did not run the call and said so, signed for this call: it ran the same call
    before (the client sent it again to another job server after losing the first), or can no
    longer tell, or the call expired. Send it again as a new call (a new nonce)."""


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


def pack_parts(msg: dict[str, Any], field: str, value: Any) -> list[Part]:
    """Pack ``msg`` with ``value`` in ``field``: as plain msgpack when it is plain data, else
    as a cloudpickle (with out-of-band protocol 5 buffers kept beside it, not copied into it).
    The plain case - the common one - packs once. Returns the body as parts to be joined
    (by :meth:`Signer.sign_parts`): one part, or the frame of large buffers and the buffers."""
    msg[field] = value
    try:
        return [_pack(msg)]
    except (TypeError, OverflowError, ValueError):
        pass
    buffers: list[pickle.PickleBuffer] = []
    msg[field] = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    msg[field + "f"] = PICKLED
    if not buffers:
        return [_pack(msg)]
    raws = [b.raw() for b in buffers]
    if sum(raw.nbytes for raw in raws) < FRAME_MIN:
        msg[field + "b"] = raws
        return [_pack(msg)]
    msg["zf"] = field
    msg["zb"] = [raw.nbytes for raw in raws]
    head = _pack(msg)
    parts: list[Part] = [_FRAME.pack(FRAME_MARKER, len(head)), head]
    pos = _FRAME.size + len(head)
    for raw in raws:
        pad = -(pos + _PAYLOAD_OFFSET) % FRAME_ALIGN
        if pad:
            parts.append(bytes(pad))
            pos += pad
        parts.append(raw)
        pos += raw.nbytes
    return parts


def pack_with(msg: dict[str, Any], field: str, value: Any) -> bytes:
    """:func:`pack_parts`, joined."""
    parts = pack_parts(msg, field, value)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[return-value]


def _unpack_body(body: bytes | memoryview) -> Any:
    """A body as packed by :func:`pack_parts`; framed buffers become views of ``body``."""
    if not body or body[0] != FRAME_MARKER:
        return _unpack(body)
    view = memoryview(body)
    _, head_size = _FRAME.unpack_from(view)
    pos = _FRAME.size + head_size
    msg = _unpack(view[_FRAME.size:pos])
    if not isinstance(msg, dict) or not isinstance(msg.get("zf"), str) or not isinstance(msg.get("zb"), list):
        raise ValueError("not a framed pyexec body")
    views = []
    for size in msg.pop("zb"):
        pos += -(pos + _PAYLOAD_OFFSET) % FRAME_ALIGN
        if not isinstance(size, int) or size < 0 or pos + size > len(view):
            raise ValueError("a framed pyexec body cut short")
        views.append(view[pos:pos + size])
        pos += size
    msg[msg.pop("zf") + "b"] = views
    return msg


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


def _call_msg(blob: FunctionBlob, with_code: bool, chunk: bool, options: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": FORMAT_VERSION, "py": PYTHON_VERSION, "cp": CLOUDPICKLE_VERSION, "fd": blob.digest,
        "ch": chunk,
    }
    if with_code:
        msg["fc"] = blob.code
    if options:  # how to run the calls (plain data): {"ol": output limit}
        msg["o"] = options
    return msg


def encode_call_parts(blob: FunctionBlob, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                      with_code: bool, chunk: bool, options: dict[str, Any] | None = None) -> list[Part]:
    """The body of a call, in parts: one ``(args, kwargs)`` or, with ``chunk``, several."""
    return pack_parts(_call_msg(blob, with_code, chunk, options), "a",
                      [[list(args), kwargs] for args, kwargs in calls])


def encode_call(blob: FunctionBlob, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                with_code: bool, chunk: bool) -> bytes:
    """The body of a call: one ``(args, kwargs)`` or, with ``chunk``, several of them."""
    parts = encode_call_parts(blob, calls, with_code, chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[return-value]


def encode_map_chunk(blob: FunctionBlob, columns: list[list[Any]], with_code: bool,
                     options: dict[str, Any] | None = None) -> list[Part]:
    """The body of a map chunk, in parts: call ``i`` is ``fn(columns[0][i], columns[1][i], ...)``
    (no keyword arguments). One msgpack list per argument position, built without a
    per-item list or dict."""
    return pack_parts(_call_msg(blob, with_code, True, options), "c", columns)


def decode_call(body: bytes | memoryview) -> dict[str, Any]:
    msg = _unpack_body(body)
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
    if "c" in msg:
        return [(list(args), {}) for args in zip(*load_value(msg, "c"))]
    return [(args, kwargs) for args, kwargs in load_value(msg, "a")]


def call_columns(msg: dict[str, Any]) -> list[list[Any]] | None:
    """The argument columns of a map chunk (see :func:`encode_map_chunk`), else None."""
    if "c" not in msg:
        return None
    columns = load_value(msg, "c")
    if not isinstance(columns, list) or not columns or len({len(c) for c in columns}) != 1:
        raise ValueError("a map chunk with malformed argument columns")
    return columns


# -- results -------------------------------------------------------------------------------
def _exception_text(exc: BaseException) -> str:
    """``str(exc)``, or what went wrong making it: an exception's ``__str__`` is user code."""
    try:
        return str(exc)
    except Exception as failure:  # noqa: BLE001 - any failure of user code becomes text
        try:
            why = f"{type(failure).__name__}: {failure}"
        except Exception:  # noqa: BLE001
            why = type(failure).__name__
        return f"<str() of this {type(exc).__name__} raised {why}>"


def error_record(exc: BaseException, skip_frames: int = 0) -> dict[str, Any]:
    """What travels back for ``exc``; ``skip_frames`` leaves out the traceback's outermost
    frames (the runner's own, which a user reading the remote traceback does not need).
    Never raises: an exception whose ``__str__`` fails still gives a record saying so."""
    tb_start = exc.__traceback__
    for _ in range(skip_frames):
        if tb_start is None or tb_start.tb_next is None:
            break
        tb_start = tb_start.tb_next
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    message = _exception_text(exc)
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, tb_start))
    except Exception:  # noqa: BLE001 - a traceback that does not format (user objects in it)
        tb = f"{kind}: {message}\n"
    record: dict[str, Any] = {"t": kind, "m": message, "tb": tb}
    try:
        record["x"] = cloudpickle.dumps(exc, protocol=5)
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
        pass
    return record


def _presentable(exc: BaseException) -> BaseException | None:
    """``exc`` if its text can be shown as it is, or once its string arguments are
    neutralised; None if its ``__str__`` fails or keeps control characters."""
    try:
        text = str(exc)
        if neutralise(text) == text:
            return exc
        exc.args = tuple(neutralise(a) if isinstance(a, str) else a for a in exc.args)
        text = str(exc)
    except Exception:  # noqa: BLE001 - __str__ and args are user code
        return None
    return exc if neutralise(text) == text else None


def rebuild_error(record: dict[str, Any]) -> BaseException:
    """The remote exception with its original type where possible, remote traceback as cause.

    Its text is worker text (:mod:`gearnb.worker_text`): an exception whose text would carry
    control characters, or whose ``__str__`` fails here, becomes a :class:`RemoteError` with
    the text neutralised."""
    exc: BaseException | None = None
    if record.get("x") is not None:
        try:
            exc = pickle.loads(record["x"])
        except Exception:  # noqa: BLE001 - fall back to RemoteError
            exc = None
    if isinstance(exc, BaseException):
        exc = _presentable(exc)
    if not isinstance(exc, BaseException):
        exc = RemoteError(neutralise(str(record.get("t", "?"))), neutralise(str(record.get("m", ""))))
    exc.__cause__ = RemoteTraceback(neutralise(str(record.get("tb", ""))))
    return exc


def encode_result_parts(values: list[Any], errors: dict[int, dict[str, Any]],
                        extra: dict[str, Any] | None = None) -> list[Part]:
    """``extra``: plain-data fields the result carries besides its values (the runner's timing)."""
    msg: dict[str, Any] = {"v": FORMAT_VERSION}
    if extra:
        msg.update(extra)
    if errors:
        msg["e"] = errors
    return pack_parts(msg, "r", values)


def encode_result(values: list[Any], errors: dict[int, dict[str, Any]]) -> bytes:
    parts = encode_result_parts(values, errors)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[return-value]


def encode_need_code() -> bytes:
    return _pack({"v": FORMAT_VERSION, "need_code": True})


def encode_not_run(reason: str) -> bytes:
    """The signed answer of a worker that refused a genuine call (see :class:`SignAgain`)."""
    return _pack({"v": FORMAT_VERSION, "not_run": reason})


def raise_if_not_run(msg: dict[str, Any], call: CallId) -> None:
    """For a caller: a "not run" answer raises :class:`SignAgain`, or once the call was
    signed again ``MAX_SIGN_AGAIN`` times, :class:`RefusedPayload` with the worker's reason."""
    if "not_run" not in msg:
        return
    reason = neutralise(str(msg["not_run"]))
    if call.attempt < MAX_SIGN_AGAIN:
        raise SignAgain(reason)
    sends = call.attempt + 1
    raise RefusedPayload(f"{reason} (sent {sends} time{'s' if sends > 1 else ''}, as a new call each time)")


def encode_failure(exc: BaseException) -> bytes:
    """A failure of the whole call (bad envelope, version mismatch)."""
    return _pack({"v": FORMAT_VERSION, "fail": error_record(exc)})


def decode_result(body: bytes | memoryview) -> dict[str, Any]:
    msg = _unpack_body(body)
    if not isinstance(msg, dict):
        raise ValueError("not a pyexec result")
    if "r" in msg:
        msg["values"] = load_value(msg, "r")
    return msg
