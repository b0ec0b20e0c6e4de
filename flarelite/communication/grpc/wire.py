"""Frames <-> protobuf envelopes, in symmetric pairs, and the reassembly of chunked frames.

The only module that knows both ``Frame`` and the generated protobuf classes. What a received header may cost
is bounded here: ``check_header`` refuses nonsense (more than MAX_BUFFERS buffers), ``header_problem`` says
why a body may not be received (more buffers than its meta could reference, over max_message_size), and an
``Assembly`` takes memory only as chunks arrive; ``Inbound`` counts what one connection's frames hold.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

from ...buffers import forget, lazy_buffer
from ...errors import ProtocolError
from ..protocol import Frame
from ..sizes import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE  # re-exported
from . import flarelite_pb2 as pb

WIRE_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20  # 1 MiB
MAX_BUFFERS = 1 << 17  # buffers one frame may list (more: the stream is closed)
FREE_BUFFERS = 64  # buffers any header may list whatever its meta; beyond, each needs BUFFER_REF_BYTES of meta
BUFFER_REF_BYTES = 6  # the least meta a codec reference to a buffer takes (``["b",0]`` is 7 bytes)
MAPPED_MIN = 64 << 10  # buffers at least this large get lazily committed memory (see Assembly)


def frame_size(frame: Frame) -> int:
    """Bytes a frame's body takes on the wire (meta plus buffers)."""
    return len(frame.meta) + sum(memoryview(b).nbytes for b in frame.buffers)


def header_to_proto(
    frame: Frame, stream: int, chunk_size: int, sender: str | None = None, target: str | None = None
) -> pb.Envelope:
    """The Header envelope of ``frame`` (``sender``/``target`` override the frame's); meta goes inline when it
    fits in one chunk."""
    inline = len(frame.meta) <= chunk_size
    return pb.Envelope(
        header=pb.Header(
            stream=stream,
            kind=frame.kind,
            sender=frame.sender if sender is None else sender,
            target=frame.target if target is None else target,
            msg_id=frame.msg_id,
            ref_id=frame.ref_id,
            topic=frame.topic,
            job_id=frame.job_id,
            rc=frame.rc,
            meta=bytes(frame.meta) if inline else b"",
            meta_size=0 if inline else len(frame.meta),
            buffer_sizes=[memoryview(b).nbytes for b in frame.buffers],
            error=frame.error,
        )
    )


def header_from_proto(h: pb.Header) -> Frame:
    """A Frame with the header's fields (its body still to come when it has chunks)."""
    return Frame(
        kind=h.kind,
        sender=h.sender,
        target=h.target,
        msg_id=h.msg_id,
        ref_id=h.ref_id,
        topic=h.topic,
        job_id=h.job_id,
        rc=h.rc,
        meta=h.meta,
        error=h.error,
    )


def body_size(h: pb.Header) -> int:
    """Total bytes the header announces (meta plus buffers)."""
    return len(h.meta) + h.meta_size + sum(h.buffer_sizes)


def byte_views(buffers: list) -> list[memoryview]:
    """Flat byte views of ``buffers`` (arrays of any dtype), without copying."""
    views = [memoryview(b) for b in buffers]
    return [v.cast("B") if v.format != "B" else v for v in views]


def chunks_of(frame: Frame, stream: int, chunk_size: int) -> Iterator[pb.Envelope]:
    """The Chunk envelopes of ``frame``'s buffers (then of its meta when not inline), made one at a time."""
    pieces = byte_views(frame.buffers)
    if len(frame.meta) > chunk_size:
        pieces.append(memoryview(frame.meta))
    for index, view in enumerate(pieces):
        for offset in range(0, view.nbytes, chunk_size):
            yield pb.Envelope(
                chunk=pb.Chunk(stream=stream, buffer=index, data=bytes(view[offset : offset + chunk_size]))
            )


def envelopes_of(frame: Frame, stream: int, chunk_size: int) -> Iterator[pb.Envelope]:
    """The header then the chunks of ``frame``."""
    yield header_to_proto(frame, stream, chunk_size)
    yield from chunks_of(frame, stream, chunk_size)


def check_header(h: pb.Header) -> None:
    """Refuse a header no honest sender makes, before anything is computed from its lists.

    Raises:
        ProtocolError: it lists more than MAX_BUFFERS buffers, or has both inline meta and a meta size.
    """
    if len(h.buffer_sizes) > MAX_BUFFERS:
        raise ProtocolError(f"a {h.kind} header lists {len(h.buffer_sizes)} buffers, over the limit of {MAX_BUFFERS}")
    if h.meta and h.meta_size:
        raise ProtocolError(f"a {h.kind} header has both inline meta and a meta size of {h.meta_size} bytes")


def header_problem(h: pb.Header, max_message_size: int) -> str:
    """Why the body of a frame with header ``h`` may not be received here ('' when it may); see check_header."""
    meta = len(h.meta) + h.meta_size
    if len(h.buffer_sizes) > FREE_BUFFERS + meta // BUFFER_REF_BYTES:
        return (
            f"a {h.kind} frame lists {len(h.buffer_sizes)} buffers but has {meta} bytes of meta, too little to "
            "use them (the codec needs at least 6 bytes of meta per buffer)"
        )
    return size_problem(h, max_message_size)


def size_problem(h: pb.Header, max_message_size: int) -> str:
    """Why a body of the size ``h`` announces may not be received here ('' when it may). All that is asked of a
    data channel's blob announcement: it lists buffers and never meta (the frame's header, which claims the blob,
    brings the meta and is checked with ``header_problem``; what the list costs is its own bytes)."""
    size = body_size(h)
    if size > max_message_size:
        return f"a {size}-byte message exceeds the limit of {max_message_size} bytes (max_message_size)"
    return ""


def _allocate(size: int) -> Any:
    """A buffer for ``size`` incoming bytes, committed as written (mapped from MAPPED_MIN bytes on)."""
    return lazy_buffer(size, MAPPED_MIN)


class ChunkCursor:
    """Where the next chunk of a frame must go: its buffers' announced sizes, the one being filled, how full.

    The one rule for chunks, kept by the receiver (``Assembly``) and by the relay alike: buffers are filled in
    order, none beyond its announced size, nothing after the last.
    """

    __slots__ = ("sizes", "index", "filled")

    def __init__(self, header: pb.Header) -> None:
        self.sizes = array("Q", header.buffer_sizes)
        if header.meta_size:
            self.sizes.append(header.meta_size)
        self.index = 0  # the buffer being filled
        self.filled = 0  # bytes of it received
        self._skip_done()

    def _skip_done(self) -> None:
        sizes = self.sizes
        while self.index < len(sizes) and self.filled == sizes[self.index]:
            self.index += 1
            self.filled = 0

    @property
    def complete(self) -> bool:
        """True when every buffer is filled."""
        return self.index >= len(self.sizes)

    @property
    def remaining(self) -> int:
        """Bytes announced and not yet received."""
        return sum(self.sizes[self.index :]) - self.filled

    def advance(self, chunk: pb.Chunk) -> tuple[int, int]:
        """Account ``chunk``; return where it starts in its buffer and that buffer's size.

        Raises:
            ValueError: the chunk is out of order, overflows its buffer or comes after the frame is complete.
        """
        return self.advance_by(chunk.buffer, len(chunk.data))

    def advance_by(self, buffer: int, nbytes: int) -> tuple[int, int]:
        """Account ``nbytes`` for buffer number ``buffer``; return where they start in it and its size.

        Raises:
            ValueError: out of order, overflowing the buffer, or after the frame is complete.
        """
        if buffer != self.index or self.complete:
            state = "the frame is complete" if self.complete else f"buffer {self.index} is being filled"
            raise ValueError(f"chunk for buffer {buffer} while {state}")
        size, start = self.sizes[self.index], self.filled
        end = start + nbytes
        if end > size:
            raise ValueError(f"chunk overflows buffer {self.index} ({end} > {size} bytes)")
        self.filled = end
        self._skip_done()
        return start, size


class Assembly(ChunkCursor):
    """Collects the chunks of one incoming frame; its memory follows the bytes actually received.

    A buffer gets memory when its first chunk arrives (a small one at once, a large one as a mapping whose pages
    are committed as chunks are copied in), so a header announcing gigabytes costs nothing until they come.
    The finished buffers are exactly the announced sizes, contiguous and writable (bytearray, mmap or a pooled
    ``uint8`` array, see ``flarelite.buffers``), each byte copied once.
    """

    __slots__ = ("frame", "nbytes", "meta_chunked", "parts")

    def __init__(self, header: pb.Header) -> None:
        super().__init__(header)
        self.frame = header_from_proto(header)
        self.meta_chunked = header.meta_size > 0
        self.nbytes = sum(self.sizes)  # announced
        self.parts: list[Any] = []  # the non-empty buffers reached so far; the last one is being filled

    def add(self, chunk: pb.Chunk) -> None:
        """Copy one chunk in place.

        Raises:
            ValueError: the chunk is out of order, overflows its buffer or comes after the frame is complete.
            MemoryError: no memory for the buffer the chunk starts.
        """
        start, size = self.advance(chunk)
        data = chunk.data
        end = start + len(data)
        if end == start:
            return
        if start == 0:
            self.parts.append(bytearray(data) if end == size else _allocate(size))
            if end == size:
                return
        memoryview(self.parts[-1])[start:end] = data

    def slot(self, buffer: int, nbytes: int) -> memoryview:
        """Where the next ``nbytes`` of buffer number ``buffer`` go: a writable view to receive them into
        (``recv_into``), accounted as received (the caller fills it or drops the whole frame).

        Raises:
            ValueError: out of order, overflowing the buffer, or after the frame is complete.
            MemoryError: no memory for the buffer this starts.
        """
        start, size = self.advance_by(buffer, nbytes)
        if start == 0 and nbytes:
            self.parts.append(_allocate(size))
        return memoryview(self.parts[-1])[start : start + nbytes] if nbytes else memoryview(b"")

    def adopt(self, buffer: int, data: Any) -> None:
        """Take ``data`` (a buffer received whole, e.g. mapped shared memory) as buffer number ``buffer``.

        Raises:
            ValueError: it is not the next buffer, some of it came already, or ``data`` is not its size.
        """
        nbytes = memoryview(data).nbytes
        if self.complete or buffer != self.index or self.filled or nbytes != self.sizes[buffer]:
            raise ValueError(f"a whole buffer {buffer} of {nbytes} bytes where the next bytes go elsewhere")
        self.advance_by(buffer, nbytes)
        self.parts.append(data)

    def finish(self) -> Frame:
        """The complete frame."""
        parts = iter(self.parts)
        buffers = [next(parts) if n else bytearray() for n in self.sizes]
        self.parts = []
        frame = self.frame
        if self.meta_chunked:
            frame.meta = bytes(buffers.pop())
        frame.buffers = buffers
        return frame

    def discard(self) -> None:
        """Free what was received (whoever still holds this Assembly): unmapped, not kept for reuse."""
        for part in self.parts:
            forget(part)
        self.parts = []


class Skip:
    """A frame refused here whose chunks are still coming: counts them off, keeps nothing."""

    __slots__ = ("remaining",)

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining

    def add(self, chunk: pb.Chunk) -> bool:
        """Count one chunk off; True when the last announced byte came."""
        self.remaining -= len(chunk.data)
        return self.remaining <= 0


class Inbound(dict):
    """A connection's frames in progress by stream id, counting what the local ones (Assembly, Skip) hold.

    Counters follow every way of adding or removing an entry (``[]=``, ``del``, ``pop``, ``clear``); ``clear``
    and ``pop`` of an Assembly free its memory at once, whoever still references it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0  # Assembly entries
        self.nbytes = 0  # bytes they announced
        self.nbuffers = 0  # buffers they listed
        self.skipped = 0  # Skip entries

    def _count(self, state: object, sign: int) -> None:
        if type(state) is Assembly:
            self.frames += sign
            self.nbytes += sign * state.nbytes
            self.nbuffers += sign * len(state.sizes)
            if sign < 0:
                state.discard()
        elif type(state) is Skip:
            self.skipped += sign

    def __setitem__(self, stream: int, state: object) -> None:
        old = self.get(stream)
        if old is not None:
            self._count(old, -1)
        super().__setitem__(stream, state)
        self._count(state, 1)

    def __delitem__(self, stream: int) -> None:
        self._count(self[stream], -1)
        super().__delitem__(stream)

    def pop(self, stream: int, *default: Any) -> Any:  # type: ignore[override]
        """Remove and return the entry of ``stream`` (freeing an Assembly's memory)."""
        if stream not in self:
            return super().pop(stream, *default)
        state = super().pop(stream)
        self._count(state, -1)
        return state

    def clear(self) -> None:
        """Remove every entry, freeing every Assembly's memory."""
        for state in self.values():
            self._count(state, -1)
        super().clear()
