"""The pyexec envelope: what a call and its result look like on the wire.

A call is a msgpack map: format version, Python and cloudpickle versions, the function
(cloudpickle bytes, or only its digest once the worker has it cached) and the arguments.
Arguments and results travel as msgpack when they are plain data (None, bool, int, float,
str, bytes, lists, dicts) and as cloudpickle otherwise; out-of-band pickle protocol 5
buffers (numpy arrays) are carried next to the pickle, not copied into it.

Each out-of-band buffer is described in ``"zb"`` and travels one of three ways:

* small ones inside the msgpack map;
* when they add up to ``FRAME_MIN`` bytes or more, *framed*: the body is the byte 0xC1 (which
  msgpack never uses), the length of the msgpack map, the map, then the buffers, raw, each
  aligned in the signed payload; copied once into the payload, unpickled in place from it;
* from ``SHARE_MIN`` bytes, between processes of one host, *shared* (:mod:`.sharing`): a
  reference ``[token, size]`` in the map, the bytes in a sealed memfd mapped by the other side.
  A worker that cannot reach them answers :class:`NeedInline` and the caller sends them framed.

A function's own out-of-band buffers (arrays it captures) come first (``"fn"`` of them).

The calls of a map chunk travel as columns (``"c"``: one list per argument position), so a
chunk of plain items is one msgpack list of them.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import sys
import traceback
from typing import Any, Callable, Protocol, Union

import cloudpickle
import msgpack

from ..worker_text import neutralise
from .sharing import SHARE_MIN, SharedUnavailable
from .signing import MAX_SIGN_AGAIN, PREFIX_SIZE, CallId, RefusedPayload

# 2: map chunks as argument columns ("c"), large out-of-band buffers framed (0xC1). 3: every
# out-of-band buffer described in "zb" (in the map, framed, or shared through memory), a
# function's own buffers first. A worker of an older format answers a newer call with a
# VersionMismatch that says to upgrade both sides.
FORMAT_VERSION = 3
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


class NeedInline(Exception):
    """The worker cannot reach the caller's shared memory (another host, another user): send
    the call again with every buffer in the job."""


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


class Sharer(Protocol):
    """Who takes a large buffer out of a message (:mod:`.sharing`): its reference, or None to
    send it in the job."""

    def share(self, raw: memoryview, pin: bool = False) -> list[Any] | None: ...


def _pack_buffers(msg: dict[str, Any], buffers: list[memoryview], sharer: Sharer | None,
                  pinned: int = 0) -> list[Part]:
    """Pack ``msg`` with its out-of-band ``buffers`` described in ``"zb"``, one entry each:
    bytes (small, in the map), an int (its size: framed after the map) or ``[token, size]``
    (shared, :mod:`.sharing`). The first ``pinned`` buffers (a function's) are shared for the
    whole run. Returns the body as parts to be joined (by :meth:`Signer.sign_parts`)."""
    descs: list[Any] = [None] * len(buffers)
    rest = []
    for i, raw in enumerate(buffers):
        ref = sharer.share(raw, i < pinned) if sharer is not None and raw.nbytes >= SHARE_MIN else None
        if ref is None:
            rest.append(i)
        else:
            descs[i] = ref
    framed = sum(buffers[i].nbytes for i in rest) >= FRAME_MIN
    for i in rest:
        descs[i] = buffers[i].nbytes if framed else buffers[i]
    msg["zb"] = descs
    head = _pack(msg)
    if not framed:
        return [head]
    parts: list[Part] = [_FRAME.pack(FRAME_MARKER, len(head)), head]
    pos = _FRAME.size + len(head)
    for i in rest:
        pad = -(pos + _PAYLOAD_OFFSET) % FRAME_ALIGN
        if pad:
            parts.append(bytes(pad))
            pos += pad
        parts.append(buffers[i])
        pos += buffers[i].nbytes
    return parts


def pack_parts(msg: dict[str, Any], field: str, value: Any, sharer: Sharer | None = None,
               first: list[memoryview] | None = None) -> list[Part]:
    """Pack ``msg`` with ``value`` in ``field``: as plain msgpack when it is plain data, else
    as a cloudpickle (with out-of-band protocol 5 buffers kept beside it, not copied into it).
    The plain case - the common one - packs once. ``first``: out-of-band buffers that come
    before the value's (a function's, shared for the whole run). Returns the body as parts."""
    msg[field] = value
    buffers: list[memoryview] = list(first or ())
    try:
        plain: bytes | None = _pack(msg)
    except (TypeError, OverflowError, ValueError):
        plain = None
    if plain is not None and not buffers:
        return [plain]
    if plain is None:
        picklebuffers: list[pickle.PickleBuffer] = []
        msg[field] = cloudpickle.dumps(value, protocol=5, buffer_callback=picklebuffers.append)
        msg[field + "f"] = PICKLED
        buffers += [b.raw() for b in picklebuffers]
        if not buffers:
            return [_pack(msg)]
    return _pack_buffers(msg, buffers, sharer, len(first or ()))


def pack_with(msg: dict[str, Any], field: str, value: Any) -> bytes:
    """:func:`pack_parts`, joined."""
    parts = pack_parts(msg, field, value)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[return-value]


def _unpack_body(body: bytes | memoryview) -> Any:
    """A body as packed by :func:`pack_parts`; framed buffers become views of ``body``.
    Shared buffers stay references (``[token, size]``) until :func:`resolve_shared`."""
    if not body or body[0] != FRAME_MARKER:
        msg = _unpack(body)
        if isinstance(msg, dict) and "zb" in msg and not isinstance(msg["zb"], list):
            raise ValueError("a pyexec body with malformed buffers")
        return msg
    view = memoryview(body)
    _, head_size = _FRAME.unpack_from(view)
    pos = _FRAME.size + head_size
    msg = _unpack(view[_FRAME.size:pos])
    if not isinstance(msg, dict) or not isinstance(msg.get("zb"), list):
        raise ValueError("not a framed pyexec body")
    descs = msg["zb"]
    for i, size in enumerate(descs):
        if not isinstance(size, int):
            continue
        pos += -(pos + _PAYLOAD_OFFSET) % FRAME_ALIGN
        if size < 0 or pos + size > len(view):
            raise ValueError("a framed pyexec body cut short")
        descs[i] = view[pos:pos + size]
        pos += size
    return msg


def resolve_shared(msg: dict[str, Any], fetch: Callable[[Any], memoryview] | None) -> dict[int, bytes]:
    """Replace the shared buffers of ``msg`` by their mappings (``fetch(ref)``; it raises
    :class:`~gearnb.pyexec.sharing.SharedUnavailable`, as does a shared buffer without
    ``fetch``); returns their tokens by position."""
    descs = msg.get("zb")
    tokens = {}
    if descs:
        for i, desc in enumerate(descs):
            if isinstance(desc, list):
                if fetch is None:
                    raise SharedUnavailable("a shared value where none can be fetched")
                descs[i] = fetch(desc)
                tokens[i] = desc[0]
    return tokens


def load_value(msg: dict[str, Any], field: str) -> Any:
    """The value in ``field``; its out-of-band buffers follow the function's (``"fn"`` of them)."""
    if msg.get(field + "f") == PICKLED:
        return pickle.loads(msg[field], buffers=msg.get("zb", ())[msg.get("fn", 0):])
    return msg[field]


def load_function(msg: dict[str, Any]) -> Any:
    """The function a call carries (``"fc"``), with its out-of-band buffers."""
    return pickle.loads(msg["fc"], buffers=msg.get("zb", ())[:msg.get("fn", 0)])


class FunctionBlob:
    """A callable pickled once (per map), named by a digest of its pickle. Arrays it captures
    are out-of-band buffers (``buffers``), shared once for the run where they can be; a large
    one makes the digest this blob's own (a worker caches the function per run, and drops it
    when the run releases its buffers), small ones are hashed into it."""

    __slots__ = ("fn", "code", "buffers", "digest", "size")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        picklebuffers: list[pickle.PickleBuffer] = []
        self.code = cloudpickle.dumps(fn, protocol=5, buffer_callback=picklebuffers.append)
        self.buffers = [b.raw() for b in picklebuffers]
        digest = hashlib.sha256(self.code)
        for raw in self.buffers:
            digest.update(raw if raw.nbytes < SHARE_MIN else os.urandom(16))
        self.digest = digest.digest()[:16]
        self.size = len(self.code) + sum(raw.nbytes for raw in self.buffers)


def _call_msg(blob: FunctionBlob, with_code: bool, chunk: bool, store: bytes | None,
              options: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": FORMAT_VERSION, "py": PYTHON_VERSION, "cp": CLOUDPICKLE_VERSION, "fd": blob.digest,
        "ch": chunk,
    }
    if store is not None:
        msg["sa"] = store  # the caller's value store (pyexec/sharing/): where large results may go
    if options:  # how to run the calls (plain data): {"ol": output limit}
        msg["o"] = options
    if with_code:
        msg["fc"] = blob.code
        if blob.buffers:
            msg["fn"] = len(blob.buffers)
    return msg


def encode_call_parts(blob: FunctionBlob, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                      with_code: bool, chunk: bool, sharer: Sharer | None = None,
                      store: bytes | None = None, options: dict[str, Any] | None = None) -> list[Part]:
    """The body of a call, in parts: one ``(args, kwargs)`` or, with ``chunk``, several.
    ``sharer``: takes large buffers out of the job (:mod:`.sharing`); ``store``: the caller's
    value store address, where a worker may deliver a large result; ``options``: how the
    worker runs the calls."""
    return pack_parts(_call_msg(blob, with_code, chunk, store, options), "a",
                      [[list(args), kwargs] for args, kwargs in calls], sharer,
                      blob.buffers if with_code else None)


def encode_call(blob: FunctionBlob, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                with_code: bool, chunk: bool) -> bytes:
    """The body of a call: one ``(args, kwargs)`` or, with ``chunk``, several of them."""
    parts = encode_call_parts(blob, calls, with_code, chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[return-value]


def encode_map_chunk(blob: FunctionBlob, columns: list[list[Any]], with_code: bool,
                     sharer: Sharer | None = None, store: bytes | None = None,
                     options: dict[str, Any] | None = None) -> list[Part]:
    """The body of a map chunk, in parts: call ``i`` is ``fn(columns[0][i], columns[1][i], ...)``
    (no keyword arguments). One msgpack list per argument position, built without a
    per-item list or dict."""
    return pack_parts(_call_msg(blob, with_code, True, store, options), "c", columns, sharer,
                      blob.buffers if with_code else None)


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
                        sharer: Sharer | None = None, extra: dict[str, Any] | None = None) -> list[Part]:
    """``extra``: plain-data fields the result carries besides its values (the runner's timing)."""
    msg: dict[str, Any] = {"v": FORMAT_VERSION}
    if extra:
        msg.update(extra)
    if errors:
        msg["e"] = errors
    return pack_parts(msg, "r", values, sharer)


def encode_result(values: list[Any], errors: dict[int, dict[str, Any]]) -> bytes:
    parts = encode_result_parts(values, errors)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[return-value]


def encode_need_code() -> bytes:
    return _pack({"v": FORMAT_VERSION, "need_code": True})


def encode_need_inline(reason: str) -> bytes:
    """The signed answer of a worker that cannot fetch a call's shared buffers."""
    return _pack({"v": FORMAT_VERSION, "need_inline": reason})


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


def decode_result(body: bytes | memoryview, take: Callable[[Any], memoryview] | None = None) -> dict[str, Any]:
    """A result; ``take(ref)`` maps a shared buffer the worker delivered (:mod:`.sharing`)."""
    msg = _unpack_body(body)
    if not isinstance(msg, dict):
        raise ValueError("not a pyexec result")
    resolve_shared(msg, take)
    if "r" in msg:
        msg["values"] = load_value(msg, "r")
    return msg
