"""``dumps``/``loads``: one self-describing bytes container around ``encode``/``decode``, for files and ``to_bytes``.

Layout (little-endian)::

    magic b"FLRC" | version u16 | reserved u16 | meta length u64 | buffer count u64
    | buffer lengths (count x u64) | meta | each buffer, starting at a multiple of 64 bytes (zero padding)

The container ends exactly after the last buffer; anything else is rejected.
"""

from __future__ import annotations

import struct
from typing import Any

from flarelite.errors import DecodeError

from .codec import decode, encode

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


def loads(data: bytes | bytearray | memoryview, *, device: Any = None) -> Any:
    """Decode what ``dumps`` made; arrays view ``data`` without copying (writable if ``data`` is).

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
    lengths = struct.unpack_from(f"<{count}Q", mv, _HEADER.size)
    meta = mv[offset : offset + meta_len]
    offset += meta_len
    buffers: list[memoryview] = []
    for n in lengths:
        offset += _pad(offset)
        if offset + n > size:
            raise DecodeError(f"container is truncated: buffer {len(buffers)} needs {n} bytes at offset {offset}")
        buffers.append(mv[offset : offset + n])
        offset += n
    if offset != size:
        raise DecodeError(f"container has {size - offset} unexpected trailing bytes")
    return decode(meta, buffers, device=device)
