"""Receive buffers whose memory follows the bytes that arrive (the gRPC wire, the data channel, the Client API's
local channel), the one copy a transport makes of a buffer it hands to a receiver in the same process, and the
pool that lets the next message of the same size reuse a large buffer once nothing references it.

Why a pool: the kernel zeroes every page it gives a new mapping, and on a virtual machine a page never touched
before also costs the host a fault. Receiving 100 MB models from 10 sites spent a third of all CPU time in
``clear_page`` (perf, 2 cores), more than copying the bytes. Federated learning moves the same sizes round after
round, so a buffer whose last user is gone is kept, idle and bounded, for the next one.

A pooled buffer is handed out as a writable ``numpy.uint8`` array over the mapping (the "owner"). Every view of
its memory (numpy views, ``memoryview`` slices, tensors made with ``torch.frombuffer``/``from_numpy``, decoded
arrays) keeps the owner alive, so the mapping returns to the pool only when no object can see it any more (a
``weakref.finalize`` on the owner). The pool keeps at most ``max_idle_bytes`` of idle mappings, each for at most
``idle_seconds``; beyond that they are unmapped. Memory still follows the bytes received: a reused buffer is
memory the process already had, not new memory an announcement makes it commit.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading
import time
import weakref
from typing import Any

import numpy as np

HUGE_MIN = 2 << 20  # mappings this large ask for transparent huge pages: a first write faults 2 MiB, not 4 KiB
POOL_MIN = HUGE_MIN  # mappings this large are pooled
POOL_IDLE_SECONDS = 30.0


def _default_pool_bytes() -> int:
    """Idle buffers kept for reuse: ``FLARELITE_BUFFER_POOL_BYTES`` if set, else 1/8 of memory, at most 4 GiB."""
    configured = os.environ.get("FLARELITE_BUFFER_POOL_BYTES")
    if configured is not None:
        try:
            return max(0, int(configured))
        except ValueError:
            raise ValueError(
                f"FLARELITE_BUFFER_POOL_BYTES={configured!r} is not a number of bytes; unset it or give e.g. 1073741824"
            ) from None
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 8 << 30
    return min(physical // 8, 4 << 30)


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


class BufferPool:
    """Large mappings handed out as ``numpy.uint8`` owners, kept for reuse (same size) once unreferenced.

    Thread-safe. Finalizers only append to a deque (they may run on any thread, inside any lock, during garbage
    collection); the returned mappings are sorted in under the lock by the next ``take`` or by the trimmer thread.
    The trimmer runs while buffers are out or idle: it sorts returns in and unmaps what stayed idle longer than
    ``idle_seconds``.
    """

    def __init__(self, max_idle_bytes: int | None = None, idle_seconds: float = POOL_IDLE_SECONDS) -> None:
        self.max_idle_bytes = _default_pool_bytes() if max_idle_bytes is None else max_idle_bytes
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[int, list[tuple[float, mmap.mmap]]] = {}  # size -> [(idle since, mapping)], newest last
        self._idle_bytes = 0
        self._out = 0  # handed out and not yet returned
        self._returned: collections.deque = collections.deque()  # (key, size, mapping), appended by finalizers
        self._finalizers: dict[int, weakref.finalize] = {}  # id(owner) -> its finalizer, while it is out
        self._trimmer: threading.Thread | None = None
        self.reused = 0  # buffers handed out again (for tests and benchmarks)
        self.made = 0  # mappings made

    @property
    def idle_bytes(self) -> int:
        """Bytes of idle mappings held now."""
        with self._lock:
            self._sort_in(time.monotonic())
            return self._idle_bytes

    def take(self, size: int) -> np.ndarray:
        """A writable ``uint8`` array of ``size`` bytes: an idle mapping of that size, or a new one.

        Raises:
            OSError, OverflowError, ValueError: no mapping of that size can be made.
        """
        mapping = None
        with self._lock:
            self._sort_in(time.monotonic())
            idle = self._idle.get(size)
            if idle:
                _, mapping = idle.pop()
                if not idle:
                    del self._idle[size]
                self._idle_bytes -= size
                self.reused += 1
        if mapping is None:
            mapping = _mapping(size)  # outside the lock: raising here changes nothing
            with self._lock:
                self.made += 1
        owner = np.frombuffer(mapping, dtype=np.uint8)
        finalizer = weakref.finalize(owner, self._return, id(owner), size, mapping)
        finalizer.atexit = False
        with self._lock:
            self._finalizers[id(owner)] = finalizer
            self._out += 1
            if self._trimmer is None:
                self._trimmer = threading.Thread(target=self._trim, name="flarelite-buffer-pool", daemon=True)
                self._trimmer.start()
        return owner

    def _return(self, key: int, size: int, mapping: mmap.mmap) -> None:
        self._returned.append((key, size, mapping))  # a finalizer: no lock here (see the class docstring)

    def forget(self, owner: Any) -> None:
        """Unmap ``owner``'s mapping when it goes instead of keeping it (a frame dropped before it was complete:
        what a peer sent and cancelled is freed at once, not kept idle). Anything else is ignored."""
        with self._lock:
            finalizer = self._finalizers.get(id(owner))
            alive = finalizer.peek() if finalizer is not None else None
            if alive is None or alive[0] is not owner:  # not one of ours (or an id another object had)
                return
            del self._finalizers[id(owner)]
            finalizer.detach()
            self._out -= 1

    def clear(self) -> None:
        """Unmap every idle mapping now."""
        with self._lock:
            self._sort_in(time.monotonic())
            self._idle.clear()
            self._idle_bytes = 0

    def _sort_in(self, now: float) -> None:
        """Move returned mappings to the idle lists (within the byte cap); drop those idle too long. Lock held."""
        returned = self._returned
        while returned:
            key, size, mapping = returned.popleft()
            self._finalizers.pop(key, None)
            self._out -= 1
            if self._idle_bytes + size > self.max_idle_bytes:
                continue  # over the cap: unmapped as this reference goes
            self._idle.setdefault(size, []).append((now, mapping))
            self._idle_bytes += size
        horizon = now - self.idle_seconds
        for size in [s for s, idle in self._idle.items() if idle[0][0] < horizon]:
            idle = self._idle[size]
            keep = [entry for entry in idle if entry[0] >= horizon]
            self._idle_bytes -= size * (len(idle) - len(keep))
            if keep:
                self._idle[size] = keep
            else:
                del self._idle[size]

    def _trim(self) -> None:
        while True:
            time.sleep(min(1.0, max(0.01, self.idle_seconds / 4)))
            with self._lock:
                self._sort_in(time.monotonic())
                if not self._idle and not self._returned and self._out <= 0:
                    self._trimmer = None
                    return


POOL = BufferPool()


def forget(buf: Any) -> None:
    """``buf`` (from ``lazy_buffer``) was never completed: free it when it goes rather than pool it."""
    if type(buf) is np.ndarray:
        POOL.forget(buf)


def lazy_buffer(size: int, mapped_min: int) -> Any:
    """A writable, contiguous buffer of ``size`` bytes whose memory is committed only as it is written.

    From ``mapped_min`` bytes on it is a private anonymous mapping: the kernel supplies its pages on first write,
    so an announced size costs address space, not memory, until the bytes come. Smaller ones are bytearrays.
    From ``POOL_MIN`` bytes on the mapping comes from ``POOL`` (a ``numpy.uint8`` array over it: an idle one of
    that size when there is one, already committed).

    Raises:
        MemoryError: the address space for it cannot be reserved.
    """
    if size < mapped_min:
        return bytearray(size)
    try:
        return POOL.take(size) if size >= POOL_MIN else _mapping(size)
    except (OSError, OverflowError, ValueError) as exc:
        raise MemoryError(f"cannot reserve {size} bytes for an incoming buffer: {exc}") from exc


def copied_buffer(data: object, mapped_min: int = HUGE_MIN) -> Any:
    """A writable copy of the bytes of ``data`` (any contiguous buffer), made with one memcpy.

    Large ones go into a (pooled) huge-page mapping, which a copy fills about twice as fast as a bytearray's heap
    memory; numpy does the copy, without holding the GIL (other threads, the other cores, run meanwhile).
    """
    view = memoryview(data)
    if view.nbytes < mapped_min or not view.contiguous:
        return bytearray(view)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    out = lazy_buffer(view.nbytes, mapped_min)
    np.copyto(np.frombuffer(out, np.uint8), np.frombuffer(view, np.uint8))
    return out
