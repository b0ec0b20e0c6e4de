"""Frames <-> protobuf envelopes, in symmetric pairs, and the reassembly of chunked frames.

The only module that knows both ``Frame`` and the generated protobuf classes.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..protocol import Frame
from . import flarelite_pb2 as pb

WIRE_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20  # 1 MiB
DEFAULT_MAX_MESSAGE_SIZE = 8 << 30  # 8 GiB


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


def chunks_of(frame: Frame, stream: int, chunk_size: int) -> Iterator[pb.Envelope]:
    """The Chunk envelopes of ``frame``'s buffers (then of its meta when not inline), made one at a time."""
    pieces = [memoryview(b).cast("B") if memoryview(b).format != "B" else memoryview(b) for b in frame.buffers]
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


class Assembly:
    """Collects the chunks of one incoming frame into buffers allocated once, at their announced sizes."""

    def __init__(self, header: pb.Header) -> None:
        self.frame = header_from_proto(header)
        sizes = list(header.buffer_sizes)
        if header.meta_size:
            sizes.append(header.meta_size)
        self.parts = [bytearray(n) for n in sizes]
        self.filled = [0] * len(sizes)
        self.index = 0
        self._skip_empty()
        self.meta_chunked = bool(header.meta_size)

    def _skip_empty(self) -> None:
        while self.index < len(self.parts) and self.filled[self.index] == len(self.parts[self.index]):
            self.index += 1

    @property
    def complete(self) -> bool:
        """True when every buffer is filled."""
        return self.index >= len(self.parts)

    def add(self, chunk: pb.Chunk) -> None:
        """Copy one chunk in place.

        Raises:
            ValueError: the chunk is out of order or overflows its buffer.
        """
        if chunk.buffer != self.index:
            raise ValueError(f"chunk for buffer {chunk.buffer} while buffer {self.index} is being filled")
        part, start = self.parts[self.index], self.filled[self.index]
        end = start + len(chunk.data)
        if end > len(part):
            raise ValueError(f"chunk overflows buffer {self.index} ({end} > {len(part)} bytes)")
        part[start:end] = chunk.data
        self.filled[self.index] = end
        self._skip_empty()

    def finish(self) -> Frame:
        """The complete frame."""
        frame = self.frame
        if self.meta_chunked:
            frame.meta = bytes(self.parts.pop())
        frame.buffers = list(self.parts)
        return frame
