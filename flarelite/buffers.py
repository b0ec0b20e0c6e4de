"""Receive buffers whose memory follows the bytes that arrive (the gRPC wire, the Client API's local channel), and
the one copy a transport makes of a buffer it hands to a receiver in the same process."""

from __future__ import annotations

import mmap

import numpy as np

HUGE_MIN = 2 << 20  # mappings this large ask for transparent huge pages: a first write faults 2 MiB, not 4 KiB


def _mapping(size: int) -> mmap.mmap:
    """A private anonymous mapping of ``size`` bytes, advised to use huge pages where the platform can."""
    if not hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, size)  # Windows: pagefile-backed, committed on write too
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and size >= HUGE_MIN:
        try:
            mapping.madvise(advice)  # copying in then costs half the time (fewer page faults)
        except OSError:
            pass  # the kernel has them off: 4 KiB pages still work
    return mapping


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
        return _mapping(size)
    except (OSError, OverflowError, ValueError) as exc:
        raise MemoryError(f"cannot reserve {size} bytes for an incoming buffer: {exc}") from exc


def copied_buffer(data: object, mapped_min: int = HUGE_MIN) -> bytearray | mmap.mmap:
    """A writable copy of the bytes of ``data`` (any contiguous buffer), made with one memcpy.

    Large ones go into a huge-page mapping, which a copy fills about twice as fast as a bytearray's heap memory;
    numpy does the copy, without holding the GIL (other threads, the other cores, run meanwhile).
    """
    view = memoryview(data)
    if view.nbytes < mapped_min or not view.contiguous:
        return bytearray(view)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    out = lazy_buffer(view.nbytes, mapped_min)
    np.copyto(np.frombuffer(out, np.uint8), np.frombuffer(view, np.uint8))
    return out
