"""Receive buffers whose memory follows the bytes that arrive (the gRPC wire and the Client API's local channel)."""

from __future__ import annotations

import mmap


def lazy_buffer(size: int, mapped_min: int) -> bytearray | mmap.mmap:
    """A writable, contiguous buffer of ``size`` bytes whose memory is committed only as it is written.

    From ``mapped_min`` bytes on it is a private anonymous mapping: the kernel supplies its pages on first write,
    so an announced size costs address space, not memory, until the bytes come. Smaller ones are bytearrays.

    Raises:
        MemoryError: the address space for it cannot be reserved.
    """
    if size < mapped_min:
        return bytearray(size)
    try:
        if hasattr(mmap, "MAP_PRIVATE"):
            return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        return mmap.mmap(-1, size)  # Windows: pagefile-backed, committed on write too
    except (OSError, OverflowError, ValueError) as exc:
        raise MemoryError(f"cannot reserve {size} bytes for an incoming buffer: {exc}") from exc
