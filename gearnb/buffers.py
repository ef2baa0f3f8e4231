"""Large byte buffers without extra copies: made in place, joined once, sent in pieces.

Shared by the codec (a large packet's last argument is read straight into its final bytes
object), the pyexec signing (a large payload is joined once while other threads hash its
pieces) and the worker's task processes (a large job or result moves in one copy).
"""

from __future__ import annotations

from typing import Any, Callable


def nbytes(part: bytes | memoryview) -> int:
    """The size of a buffer in bytes (``len`` of a memoryview counts items, not bytes)."""
    return part.nbytes if isinstance(part, memoryview) else len(part)


class BufferList(list):
    """A packet's last argument given as several buffers that are sent one after the other,
    never joined (a large signed payload and the array data it carries)."""

    __slots__ = ()

    @property
    def nbytes(self) -> int:
        return sum(map(nbytes, self))


_bytes_maker: Any = None  # None: not tried yet; False: not available
# Large bytes made here ask the kernel for transparent huge pages (Linux, MADV_HUGEPAGE):
# filling a new 64 MiB object then takes ~500 page faults instead of ~16,000 (measured
# here: 45-55 ms instead of 100-130 ms, and freeing it 0.5 ms instead of 5-10 ms).
HUGE_PAGES_MIN = 4 * 1024 * 1024
_MADV_HUGEPAGE = 14  # <linux/mman.h>
_PAGE = 4096


def new_bytes(size: int) -> tuple[bytes, memoryview] | None:
    """A new bytes object of ``size`` bytes and a writable view of its memory, to fill before
    anyone else sees it (as C code fills the result of PyBytes_FromStringAndSize(NULL, n)).
    None where that cannot be done (not CPython, no ctypes)."""
    global _bytes_maker
    if _bytes_maker is None:
        _bytes_maker = False
        try:
            import ctypes
            import sys

            if sys.implementation.name == "cpython":
                new = ctypes.pythonapi.PyBytes_FromStringAndSize
                new.restype = ctypes.py_object
                new.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
                offset = bytes.__basicsize__ - 1  # where the data starts (ob_sval)
                madvise = None
                if sys.platform.startswith("linux"):
                    try:
                        madvise = ctypes.CDLL(None, use_errno=True).madvise
                        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                        madvise.restype = ctypes.c_int
                    except (OSError, AttributeError):
                        madvise = None

                def make(n: int) -> tuple[bytes, memoryview]:
                    obj = new(None, n)
                    address = id(obj) + offset
                    if madvise is not None and n >= HUGE_PAGES_MIN:
                        start = (address + _PAGE - 1) & ~(_PAGE - 1)
                        madvise(start, (address + n - start) & ~(_PAGE - 1), _MADV_HUGEPAGE)  # a hint
                    return obj, memoryview((ctypes.c_char * n).from_address(address)).cast("B")

                probe, view = make(16)  # check the layout before trusting it
                view[:] = b"gearnb-bytes-ok!"
                view.release()
                if probe == b"gearnb-bytes-ok!" and hash(probe) == hash(b"gearnb-bytes-ok!"):
                    _bytes_maker = make
        except Exception:  # noqa: BLE001 - fall back to joining the pieces
            _bytes_maker = False
    if not _bytes_maker or size <= 0:
        return None
    return _bytes_maker(size)


def join_bytes(parts: list[bytes | memoryview], first: Callable[[], bytes] | None = None) -> bytes:
    """``b"".join(parts)``; a large result is made by :func:`new_bytes` (huge pages).
    With ``first``, ``parts[0]`` only reserves room: it is replaced by ``first()`` (as long),
    called once the other parts are copied - work done meanwhile in other threads overlaps."""
    total = 0
    for part in parts:
        if type(part) is not bytes and not (
                type(part) is memoryview and part.format == "B" and part.ndim == 1 and part.c_contiguous):
            total = -1
            break
        total += len(part)
    made = new_bytes(total) if total >= HUGE_PAGES_MIN else None
    if made is None:
        return b"".join([_first(first, parts), *parts[1:]] if first is not None else parts)
    out, view = made
    pos = 0
    for part in parts:
        view[pos:pos + len(part)] = part
        pos += len(part)
    if first is not None:
        head = _first(first, parts)
        view[:len(head)] = head
    view.release()
    return out


def _first(first: Callable[[], bytes], parts: list[bytes | memoryview]) -> bytes:
    head = first()
    if len(head) != len(parts[0]):
        raise ValueError("join_bytes: first() must return as many bytes as parts[0] holds")
    return head
