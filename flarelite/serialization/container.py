"""``dumps``/``loads``: one self-describing bytes container around ``encode``/``decode``, for files and ``to_bytes``.

Layout (little-endian)::

    magic b"FLRC" | version u16 | reserved u16 | meta length u64 | buffer count u64
    | buffer lengths (count x u64) | meta | each buffer, starting at a multiple of 64 bytes (zero padding)

The container ends exactly after the last buffer; anything else is rejected.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from flarelite.errors import DecodeError

from .codec import decode, encode
from .limits import check_buffer_count, check_meta_size

MAGIC = b"FLRC"
VERSION = 1
ALIGN = 64
_HEADER = struct.Struct("<4sHHQQ")
_ZEROS = bytes(ALIGN)


def _pad(offset: int) -> int:
    return -offset % ALIGN


def dumps(value: Any) -> bytes:
    """Encode ``value`` into one bytes object (arrays aligned to 64 bytes within it).

    Raises:
        UnsupportedTypeError, CodecError: as ``encode``.
    """
    meta, buffers = encode(value)
    lengths = [b.nbytes for b in buffers]
    parts: list[Any] = [_HEADER.pack(MAGIC, VERSION, 0, len(meta), len(buffers))]
    parts.append(struct.pack(f"<{len(lengths)}Q", *lengths))
    parts.append(meta)
    offset = _HEADER.size + 8 * len(lengths) + len(meta)
    for buf, n in zip(buffers, lengths):
        pad = _pad(offset)
        parts.append(_ZEROS[:pad])
        parts.append(buf)
        offset += pad + n
    return b"".join(parts)


class _Buffers(Sequence[memoryview]):
    """The container's buffers, sliced from it when asked for (one memoryview at a time, not one per buffer)."""

    __slots__ = ("_mv", "_starts", "_lengths", "nbytes")

    def __init__(self, mv: memoryview, count: int, first: int) -> None:
        self._mv = mv
        size = mv.nbytes
        self._lengths = lengths = np.frombuffer(mv, dtype="<u8", count=count, offset=_HEADER.size).astype(np.int64)
        if count == 0:
            self._starts = lengths
            self.nbytes, end = 0, first
        else:
            too_long = lengths.view(np.uint64) > size  # also catches lengths of 2**63 and over
            if too_long.any():
                i = int(too_long.argmax())
                raise DecodeError(f"container is truncated: buffer {i} needs {lengths.view(np.uint64)[i]} bytes")
            padded = (lengths + (ALIGN - 1)) & ~(ALIGN - 1)
            self._starts = starts = np.cumsum(padded) - padded + (first + _pad(first))
            ends = starts + lengths
            over = ends > size
            if over.any():
                i = int(over.argmax())
                raise DecodeError(f"container is truncated: buffer {i} needs {lengths[i]} bytes at offset {starts[i]}")
            self.nbytes, end = int(lengths.sum()), int(ends[-1])
        if end != size:
            raise DecodeError(f"container has {size - end} unexpected trailing bytes")

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, index: Any) -> Any:
        if type(index) is not int:
            raise TypeError("container buffers are looked up one at a time, by int index")
        start = int(self._starts[index])
        return self._mv[start : start + int(self._lengths[index])]


def loads(data: bytes | bytearray | memoryview, *, device: Any = None, max_meta: int | None = None) -> Any:
    """Decode what ``dumps`` made; arrays view ``data`` without copying (writable if ``data`` is).

    Costs time and memory in proportion to ``len(data)``: the header's counts are checked against the
    data's size and the meta's before anything is built (see ``limits``); ``max_meta`` is as for ``decode``.

    Raises:
        DecodeError: ``data`` is not a flarelite container, is truncated or garbled, or its content
            fails ``decode``'s checks.
    """
    try:
        mv = memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"loads expects contiguous bytes-like data, got {type(data).__name__}: {exc}") from exc
    size = mv.nbytes
    if size < _HEADER.size:
        raise DecodeError(f"data is too short for a flarelite container ({size} bytes)")
    magic, version, _, meta_len, count = _HEADER.unpack_from(mv)
    if magic != MAGIC:
        raise DecodeError(f"data is not a flarelite container (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise DecodeError(f"container version {version} is not supported (this flarelite reads {VERSION})")
    offset = _HEADER.size + 8 * count
    if offset + meta_len > size:
        raise DecodeError(f"container is truncated: header announces {count} buffers and {meta_len} meta bytes")
    check_meta_size(meta_len, max_meta)
    check_buffer_count(count, meta_len, "container announces")
    buffers = _Buffers(mv, count, offset + meta_len)
    return decode(mv[offset : offset + meta_len], buffers, device=device, max_meta=max_meta)
