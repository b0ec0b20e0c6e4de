"""BlobRelay: the server passing a site's large frame for another site on, over the data channels, cut through.

A site whose frame for another site has ``BLOB_MIN`` bytes of buffers or more announces it on its channel to the
server as blob N for that target, queues the frame's header on its gRPC stream (``blob`` N), and writes the chunks,
each once its relay window to that target has room (the same window, and the same ``Credit``, as relayed chunks on
gRPC). The server starts passing the frame on once it has both the announcement and the header, and checks that
they agree (target, sizes, the size limit):

* the target has a channel too: the target's forwarder thread announces blob M on it and writes each chunk as it
  comes; once the last is written, the header goes on the target's stream naming M (stamped with the source's
  authenticated name), exactly as a frame the server sends itself;
* otherwise the header goes on the target's stream at once, and each chunk follows as a gRPC chunk.

Each chunk is credited to the source once it was written to the target (or dropped), so the server holds at most
a window of bytes per (source, target), whatever the frame's size, and a slow target slows only what goes to it:
the source's channel reader never waits for a target, and each target's channel has its own forwarder thread.
A source that sends past its window loses its channel (the reader's ``admit``). When the frame cannot be passed
on (the target left, its channel broke mid-frame, the announcement and the header disagree, or one of them never
comes), the target gets the header with ``error`` (when it had none of the frame yet and is still connected),
the rest of the chunks are credited and dropped; a frame the source cancels is cancelled at the target.

Everything here runs on the endpoint's loop, except the ``Port`` methods (the source channel's reader thread:
they only hand over to the loop) and ``_Forwarder`` (a thread per target channel).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from ...errors import ProtocolError, TransportClosed, TransportTimeout
from ..dataplane import channel as data_channel  # (the module: it imports this package's wire in turn)
from . import flarelite_pb2 as pb
from .connection import CHUNK_OVERHEAD, Connection, Outgoing
from .wire import body_size, header_problem

if TYPE_CHECKING:
    from .data_routes import DataRoutes

_log = logging.getLogger("flarelite.grpc")
IDLE = 2.0  # seconds a forwarder thread waits for work before it ends (the next frame starts it again)


class _Passing:
    """One relayed blob: what came of it (announcement, header) and where it goes."""

    __slots__ = (
        "source",
        "channel",
        "blob",
        "sizes",
        "target",
        "header",
        "backlog",
        "complete",
        "dest",
        "out",
        "forwarder",
        "dest_blob",
        "lost",
        "failed",
        "told",
        "timer",
    )

    def __init__(self, source: Connection, channel: data_channel.DataChannel, blob: int) -> None:
        self.source, self.channel, self.blob = source, channel, blob
        self.sizes: list[int] | None = None  # from the announcement
        self.target = ""
        self.header: pb.Header | None = None  # from the stream
        self.backlog: list[tuple[int, bytearray]] = []  # chunks that came before it could start
        self.complete = False  # nothing more comes on the channel: every chunk came, or the source cancelled
        self.dest: Connection | None = None
        self.out: Outgoing | None = None  # to a target without a channel: the frame on its stream
        self.forwarder: _Forwarder | None = None  # to a target with a channel
        self.dest_blob = 0  # its id on the target's channel (forwarder thread)
        self.lost = ""  # why the forwarder could not pass it on (forwarder thread)
        self.failed = ""  # why it is not passed on (loop): its chunks are credited and dropped
        self.told = False  # the target got its header (with the frame or an error)
        self.timer: asyncio.TimerHandle | None = None

    @property
    def started(self) -> bool:
        return self.out is not None or self.forwarder is not None


class Port:
    """The relay as one source channel's reader sees it (``dataplane.channel.Relay``): bound to the source's gRPC
    connection, whose window the chunks count against."""

    def __init__(self, relay: BlobRelay, source: Connection) -> None:
        self._relay, self._source = relay, source
        self._call = relay.call

    def admit(self, target: str, nbytes: int) -> None:
        self._relay.endpoint._relay_admit(self._source, target, nbytes + CHUNK_OVERHEAD)

    def announce(self, channel: data_channel.DataChannel, h: pb.Header) -> None:
        self._call(self._relay.on_announce, self._source, channel, h.stream, list(h.buffer_sizes), h.target)

    def chunk(self, channel: data_channel.DataChannel, blob: int, buffer: int, data: bytearray) -> None:
        self._call(self._relay.on_chunk, self._source, channel, blob, buffer, data)

    def done(self, channel: data_channel.DataChannel, blob: int) -> None:
        self._call(self._relay.on_done, channel, blob)

    def cancel(self, channel: data_channel.DataChannel, blob: int, reason: str) -> None:
        self._call(self._relay.on_cancel, channel, blob, reason)


class BlobRelay:
    """The server's relayed blobs (see the module docstring); ``endpoint`` is the server's endpoint."""

    def __init__(self, endpoint: DataRoutes) -> None:
        self.endpoint = endpoint
        # seconds a relayed blob's announcement and its header wait for each other (normally a moment: they are
        # sent one after the other; as long as a blob's header waits for it when the server is its target)
        self.wait = 0.8 * endpoint.heartbeat_timeout
        self._passing: dict[tuple[data_channel.DataChannel, int], _Passing] = {}
        self._open: dict[Connection, int] = {}  # entries per source (at most max_open_frames)
        self._forwarders: dict[data_channel.DataChannel, _Forwarder] = {}
        self._lock = threading.Lock()  # _forwarders (the forwarder threads end themselves)

    def port(self, source: Connection) -> Port:
        return Port(self, source)

    def call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (from a reader or forwarder thread); nothing when the loop is gone."""
        loop = self.endpoint._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed meanwhile
            pass

    # the two halves: the announcement (channel) and the header (stream) --------------------------------
    def _entry(self, source: Connection, channel: data_channel.DataChannel, blob: int) -> _Passing:
        key = (channel, blob)
        p = self._passing.get(key)
        if p is None:
            count = self._open.get(source, 0)
            if count >= self.endpoint.max_open_frames:
                raise _TooMany(source.name)
            self._open[source] = count + 1
            p = self._passing[key] = _Passing(source, channel, blob)
            assert self.endpoint._loop is not None
            p.timer = self.endpoint._loop.call_later(self.wait, self._expire, p)
        return p

    def on_announce(
        self, source: Connection, channel: data_channel.DataChannel, blob: int, sizes: list[int], target: str
    ) -> None:
        try:
            p = self._entry(source, channel, blob)
        except _TooMany:
            channel.close(f"{source.name} has {self.endpoint.max_open_frames} relayed blobs unfinished")
            return
        p.sizes, p.target = sizes, target
        self._start(p)

    def on_header(self, conn: Connection, h: pb.Header) -> None:
        """The header of a relayed blob came on ``conn``'s stream (its sender stamped already)."""
        channel = conn.data_channel
        if not isinstance(channel, data_channel.DataChannel):
            self._tell(conn, h, f"its buffers were sent on a data channel from {conn.name} that was never opened")
            return
        if channel.holds_local(h.blob):  # never from a site that keeps to the protocol: it ends the connection
            channel.drop(h.blob)
            raise ProtocolError(f"{conn.name} sent a header for {h.target!r} naming blob {h.blob}, one for the server")
        try:
            p = self._entry(conn, channel, h.blob)
        except _TooMany:
            self._tell(conn, h, f"{conn.name} has {self.endpoint.max_open_frames} relayed blobs unfinished")
            return
        if p.header is not None:
            self._tell(conn, h, f"blob {h.blob} is named by two headers")
            return
        p.header = h
        if p.failed:  # its buffers failed before it came (they were late, or cancelled): the target hears why
            if not p.told:
                p.told = True
                self._tell(conn, h, p.failed)
            if p.complete:
                self._forget(p)
            return
        self._start(p)

    def _start(self, p: _Passing) -> None:
        """Pass ``p`` on once both halves came (or tell the target why not)."""
        h, sizes = p.header, p.sizes
        if h is None or sizes is None or p.failed or p.started:
            return
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        expected = [*h.buffer_sizes, *([h.meta_size] if h.meta_size else [])]
        limit = self.endpoint.max_message_size
        size = body_size(h)
        problem = header_problem(h, limit)
        if size > limit:
            problem = f"a {size}-byte message exceeds the relay's limit of {limit} bytes"
        elif p.target != h.target:
            problem = f"its buffers were announced for {p.target!r}"
        elif sizes != expected:
            problem = f"its buffers on the data channel ({sizes[:8]}...) are not the sizes its header announced"
        dest = self.endpoint._conns.get(h.target)
        if dest is None or dest.closed:
            _log.warning(
                "%s: dropped a %s frame from %s to %r: not connected",
                self.endpoint.address,
                h.kind,
                p.source.name,
                h.target,
            )
            self._fail(p, "not connected", tell=False)
            return
        if problem:
            _log.error(
                "%s: refused to relay a %s frame from %s to %s: %s",
                self.endpoint.address,
                h.kind,
                p.source.name,
                h.target,
                problem,
            )
            self._fail(p, problem)
            return
        p.dest = dest
        p.source.credit_batch = self.endpoint.relay_window >> 2
        channel = dest.data_channel
        if isinstance(channel, data_channel.DataChannel) and not channel.closed and not channel.ended:
            p.forwarder = self._forwarder(channel)
            p.forwarder.put(("open", p))
        else:  # the target has no channel: the frame goes on its stream, chunk by chunk
            env = pb.Envelope(header=pb.Header())
            env.header.CopyFrom(h)
            env.header.blob = 0
            env.header.stream = next(self.endpoint._streams)
            p.out = Outgoing(target=h.target, stream=env.header.stream, source=p.source)
            p.out.pushed.append((env, 0))
            p.told = True
            dest.enqueue(p.out)
        backlog, p.backlog = p.backlog, []
        for buffer, data in backlog:
            self._pass(p, buffer, data)
        if p.complete:
            self._end(p)

    # chunks, the end, a cancel (each: from the source channel's reader, in order) -------------------------
    def on_chunk(
        self, source: Connection, channel: data_channel.DataChannel, blob: int, buffer: int, data: bytearray
    ) -> None:
        p = self._passing.get((channel, blob))
        if p is None:  # (never: its entry lives until its last chunk or its cancel came; credited all the same)
            return
        if p.failed:
            self._credit(p, len(data))
        elif not p.started:
            p.backlog.append((buffer, data))  # at most the window: the source waits for Credit
        else:
            self._pass(p, buffer, data)

    def _pass(self, p: _Passing, buffer: int, data: bytearray) -> None:
        if p.forwarder is not None:
            p.forwarder.put(("chunk", p, buffer, data))
            return
        out, dest = p.out, p.dest
        assert out is not None and dest is not None
        if out.finished or dest.closed:
            self._credit(p, len(data))
            return
        chunk = pb.Chunk(stream=out.stream, buffer=buffer, data=bytes(data))
        out.pushed.append((pb.Envelope(chunk=chunk), len(data) + CHUNK_OVERHEAD))  # credited once written
        dest.pushed(out)

    def on_done(self, channel: data_channel.DataChannel, blob: int) -> None:
        p = self._passing.get((channel, blob))
        if p is None:
            return
        p.complete = True
        if p.failed:
            self._forget(p)
        elif p.started:
            self._end(p)

    def _end(self, p: _Passing) -> None:
        if p.forwarder is not None:
            p.forwarder.put(("end", p))
            return
        assert p.out is not None and p.dest is not None
        p.out.open_for_push = False
        p.dest.pushed(p.out)
        self._forget(p)

    def on_cancel(self, channel: data_channel.DataChannel, blob: int, reason: str) -> None:
        """The source gave up on the blob (or its channel ended): so does the target; no error header."""
        p = self._passing.get((channel, blob))
        if p is None:
            return
        if p.forwarder is not None:
            p.forwarder.put(("cancel", p, reason))
        elif p.out is not None and p.dest is not None:
            p.dest.cancel(p.out, f"{p.source.name} gave up on it: {reason}")
        self._drop_backlog(p)
        p.complete = True  # nothing more comes of it on the channel
        if not p.started and p.header is None and p.timer is not None:
            p.failed = reason  # its header may still come: it is told nothing (the sender knows)
            p.told = True
            return  # (the entry stays until its timer, to know the header if it comes)
        self._forget(p)

    # the forwarder's news ---------------------------------------------------------------------------
    def forwarded(self, p: _Passing) -> None:
        """Every chunk of ``p`` is on the target's channel: its header follows on the target's stream."""
        assert p.header is not None and p.dest is not None
        self._forget(p)
        env = pb.Envelope(header=pb.Header())
        env.header.CopyFrom(p.header)
        env.header.blob = p.dest_blob
        env.header.stream = next(self.endpoint._streams)
        p.told = True
        p.dest.enqueue(Outgoing.of([(env, 0)], target=p.header.target, stream=env.header.stream))

    def lost(self, p: _Passing, reason: str) -> None:
        """The target's channel failed under ``p``: the target hears it on its stream (it had no header yet)."""
        if not p.told and p.header is not None:
            p.told = True
            self._tell(p.source, p.header, f"its buffers were lost on the relay's data channel: {reason}")
        if not p.complete:
            p.failed = reason  # the chunks still coming are credited and dropped
        else:
            self._forget(p)

    # failing ----------------------------------------------------------------------------------------
    def _expire(self, p: _Passing) -> None:
        p.timer = None
        if p.started:
            return
        if not p.failed:
            half = "header on the stream" if p.header is None else "buffers on the data channel"
            self._fail(p, f"its {half} did not come within {self.wait:.1f}s")
        if p.sizes is None or p.complete:  # nothing (more) comes of it on the channel
            self._forget(p)

    def _fail(self, p: _Passing, problem: str, tell: bool = True) -> None:
        p.failed = problem
        self._drop_backlog(p)
        if tell and not p.told and p.header is not None:
            p.told = True
            self._tell(p.source, p.header, problem)
        if p.complete:
            self._forget(p)

    def _tell(self, source: Connection, h: pb.Header, problem: str) -> None:
        """Give the target of ``h`` its header with ``error`` and no body (it answers the sender with an error)."""
        dest = self.endpoint._conns.get(h.target)
        if dest is None or dest.closed:
            return
        env = pb.Envelope(header=pb.Header())
        env.header.CopyFrom(h)
        env.header.blob, env.header.meta, env.header.meta_size = 0, b"", 0
        del env.header.buffer_sizes[:]
        env.header.error = problem
        env.header.stream = next(self.endpoint._streams)
        dest.enqueue(Outgoing.of([(env, 0)], target=h.target, stream=env.header.stream))

    def _drop_backlog(self, p: _Passing) -> None:
        backlog, p.backlog = p.backlog, []
        for _, data in backlog:
            self._credit(p, len(data))

    def _credit(self, p: _Passing, nbytes: int) -> None:
        p.source.credit(p.target, nbytes + CHUNK_OVERHEAD)

    def _forget(self, p: _Passing) -> None:
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        if self._passing.get((p.channel, p.blob)) is p:
            del self._passing[(p.channel, p.blob)]
            left = self._open.get(p.source, 0) - 1
            if left > 0:
                self._open[p.source] = left
            else:
                self._open.pop(p.source, None)

    def _forwarder(self, channel: data_channel.DataChannel) -> _Forwarder:
        with self._lock:
            forwarder = self._forwarders.get(channel)
            if forwarder is None:
                forwarder = self._forwarders[channel] = _Forwarder(self, channel)
            return forwarder

    def forwarder_ended(self, forwarder: _Forwarder) -> bool:
        """``forwarder`` found nothing to do for a while: its thread may end (True) unless work came meanwhile
        (the next ``put`` starts another)."""
        with self._lock:
            if not forwarder.queue.empty():
                return False
            forwarder.thread = None
            if forwarder.channel.closed and self._forwarders.get(forwarder.channel) is forwarder:
                del self._forwarders[forwarder.channel]
            return True


class _TooMany(Exception):
    pass


class _Forwarder:
    """Writes the relayed blobs for one target channel, in order, on a thread of its own (a target that reads
    slowly holds only this thread; each write's deadline is ``heartbeat_timeout``, then the channel closes)."""

    def __init__(self, relay: BlobRelay, channel: data_channel.DataChannel) -> None:
        self.relay, self.channel = relay, channel
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None  # set and cleared under the relay's lock

    def put(self, op: tuple) -> None:
        """Queue ``op`` (loop thread); starts the thread when none runs."""
        with self.relay._lock:
            self.queue.put(op)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name=f"{self.relay.endpoint.address}-relay-{self.channel.peer}", daemon=True
                )
                self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                op = self.queue.get(timeout=IDLE)
            except queue.Empty:
                if self.relay.forwarder_ended(self):
                    return
                continue
            try:
                self._do(op)
            except Exception:  # never the thread: the frame is lost at its target, told so
                _log.exception("%s: relaying to %s failed", self.relay.endpoint.address, self.channel.peer)
                self._lose(op[1], "the relay failed")

    def _do(self, op: tuple) -> None:
        kind, p = op[0], op[1]
        deadline = time.monotonic() + self.relay.endpoint.heartbeat_timeout
        if kind == "open":
            try:
                p.dest_blob = self.channel.begin_blob(p.sizes, deadline)
            except (data_channel.ChannelUnavailable, TransportClosed, TransportTimeout) as exc:
                self._lose(p, str(exc) or "the data channel closed")
        elif kind == "chunk":
            data = op[3]
            if p.dest_blob and not p.lost:
                try:
                    self.channel.write_chunk(p.dest_blob, op[2], memoryview(data), deadline)
                except (TransportClosed, TransportTimeout) as exc:
                    self._lose(p, str(exc))
            self.relay.call(self.relay._credit, p, len(data))  # written, or dropped
        elif kind == "end":
            self.relay.call(self.relay.forwarded if p.dest_blob and not p.lost else self.relay._forget, p)
        elif kind == "cancel":
            if p.dest_blob and not p.lost:
                p.lost = op[2]
                self.channel.cancel_blob(p.dest_blob, op[2])

    def _lose(self, p: _Passing, reason: str) -> None:
        if not p.lost:
            p.lost = reason or "the data channel closed"
            self.relay.call(self.relay.lost, p, p.lost)


__all__ = ["BlobRelay", "Port"]
