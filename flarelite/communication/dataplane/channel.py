"""DataChannel: frames over one connected stream socket, beside the gRPC stream to the same peer, in two ways.

* Blobs (a site and its server): the buffers of a large frame go on the channel as blob N, and the frame's
  header keeps travelling on the gRPC stream naming blob N; so a frame's place among the others (relayed frames,
  peer events, small frames) is the stream's, and only its bytes take the faster way.
* Relayed blobs (a site's frame for another site, through the server): the site announces blob N for its target,
  queues the frame's header on the stream, then writes the chunks as its relay window allows (``Credit`` on the
  stream, per target, as for relayed chunks on gRPC). The server's reader hands each chunk to its relay
  (``relay``: ``grpc/data_relay.py``), which passes it on to the target's own channel (or stream) without holding
  the frame; a channel without ``relay`` takes no blob for anyone else.
* Whole frames (two sites on a direct connection, where nothing else shares the stream): after a side says
  ``Switch`` on the stream, every frame it sends the peer goes on the channel, header and buffers, small ones in
  one write; the receiver delivers them (``deliver``, on the reader thread) once its ``gate`` is open, i.e. once
  every frame the peer began on the stream before the Switch is delivered. So the peers' frames keep their order,
  and a small message costs one write and one read instead of two event-loop hops and gRPC's framing.

Records on the socket (little-endian):

* ``E <u32 n> <n bytes>``: a protobuf ``Envelope``: a ``Header``, either announcing blob ``stream`` (its
  buffers' sizes; no ``kind``, no other field counts) or starting whole frame ``stream`` (a ``kind``, its routing
  fields, its meta inline or as one more buffer after the others when large); or a ``Cancel`` (the sender gave up
  on a blob or frame it started);
* ``C <u64 id> <u32 buffer> <u32 n> <n bytes>``: ``n`` raw bytes of buffer ``buffer`` of that blob or frame,
  received straight into it (``recv_into``): one copy in the receiver, none extra in the sender;
* ``M <u64 id> <u32 buffer> <u64 n>`` with a file descriptor (Unix sockets, ``shared_memory``): the whole of buffer
  ``buffer``, ``n`` bytes, in a sealed memfd the receiver maps (``shared_memory.py``): one copy in the sender,
  none in the receiver. Used for buffers of ``SHARED_MIN`` bytes or more of blobs and whole frames (relayed blobs
  keep C records: the relay passes chunks on under its window).

Blob and frame ids are one sequence and go up.

Sending (``send_blob``, ``send_frame``): the caller's thread writes itself (no hop to an event loop); callers take turns
chunk by chunk, first come first served, so one large blob never holds up another for more than a chunk. The
socket is blocking (one call per record, finished by the kernel without the GIL); a write's deadline is kept by a
watchdog thread, which closes the channel when the record being written passes it. The
sender queues the frame's header on gRPC only once its blob is written, so the receiver has (or is reading) the
blob when the header arrives. A blob that cannot be finished within its timeout is cancelled, or, cut
mid-record, the channel is closed.

Receiving: one reader thread assembles blobs and frames with ``wire.Assembly`` (memory follows the bytes
received; the endpoint's caps on unfinished frames apply); a finished blob waits to be claimed (``claim``) by its
header. What finished blobs hold unclaimed is capped too: a peer that sends blobs and no headers loses its
channel. A whole frame over a cap is delivered as its header with ``error`` saying why (its chunks skipped); its
sender is the channel's authenticated peer, whatever the header says; one for anyone but this endpoint, or on a
channel that takes no whole frames, ends the channel. ``end_writes`` ends the sending side in order: the peer
reads everything written before it, then the end.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import NoReturn, Protocol

from ... import logsafe
from ...errors import ProtocolError, TransportClosed, TransportTimeout
from ..grpc import flarelite_pb2 as pb
from ..grpc.wire import (
    Assembly,
    ChunkCursor,
    Inbound,
    body_size,
    byte_views,
    check_header,
    header_from_proto,
    header_to_proto,
)
from ..protocol import Frame
from . import shared_memory as shm

_log = logging.getLogger("flarelite.dataplane")
logsafe.install(_log)  # names and reasons a peer sent are logged escaped

CHUNK = 4 << 20  # bytes of a buffer per C record (a turn)
MAX_ENVELOPE = 2 << 20  # an E record holds a blob's announcement (its buffer sizes) or a cancel
MAX_BLOB_BUFFERS = 1 << 17
MAX_REFUSED = 256  # refused blobs whose headers have not come yet (or frames whose chunks still come); more close it
POLL = 1.0  # seconds a writer waiting for its turn, or the watchdog, looks at the channel's state again
CANCEL_GRACE = 2.0  # seconds the socket has to take a cancel (a few bytes); past it the peer reads nothing: closed
META_INLINE = 256 << 10  # a whole frame's meta up to this size travels in its header (under MAX_ENVELOPE with
# MAX_BUFFERS sizes); larger meta goes as the frame's last buffer
SMALL = 64 << 10  # a whole frame of at most this many bytes is written as one piece
GATE_TIMEOUT = 30.0  # seconds whole frames may wait for the peer's Switch on the stream; then the channel closes
_E = struct.Struct("<cI")
_C = struct.Struct("<cQII")
_M = struct.Struct("<cQIQ")
_READ_BUFFER = 256 << 10
_ROOM_POLL, _ROOM_POLL_MAX = 0.0005, 0.01  # seconds between looks at what the peer left unread
_WAITALL = getattr(socket, "MSG_WAITALL", 0)

Admit = Callable[[pb.Header, int, Inbound], str]  # why a blob or frame may not be received here ('' if it may)
Deliver = Callable[[Frame], None]
_thread = threading.local()  # .reading: this thread is a channel's reader


def on_reader_thread() -> bool:
    """True on a channel's reader thread (inside ``deliver``): a frame sent from here must not wait unbounded."""
    return getattr(_thread, "reading", False)


class ChannelUnavailable(Exception):
    """The channel is closed (or ending) and nothing was written: send the frame another way."""


class _Turns:
    """Writers take turns on the socket, first come first served; a large blob goes to the back after each chunk."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[object] = collections.deque()

    def take(self, me: object, deadline: float | None, closed: Callable[[], bool]) -> bool:
        """Wait until ``me`` may write; False when ``deadline`` passed first (``me`` is no longer waiting)."""
        with self._cond:
            self._queue.append(me)
            return self._wait(me, deadline, closed)

    def rotate(self, me: object, deadline: float | None, closed: Callable[[], bool]) -> bool:
        """``me`` wrote a chunk: let the others waiting go first. False when ``deadline`` passed (still queued)."""
        with self._cond:
            if len(self._queue) == 1:
                return True
            self._queue.remove(me)
            self._queue.append(me)
            self._cond.notify_all()
            return self._wait(me, deadline, closed, leave_on_timeout=False)

    def holds(self, me: object) -> bool:
        """Whether it is ``me``'s turn now."""
        with self._cond:
            return bool(self._queue) and self._queue[0] is me

    def leave(self, me: object) -> None:
        """``me`` is done writing (or gives up waiting)."""
        with self._cond:
            try:
                self._queue.remove(me)
            except ValueError:
                pass
            if self._queue:
                self._cond.notify_all()

    def _wait(
        self, me: object, deadline: float | None, closed: Callable[[], bool], leave_on_timeout: bool = True
    ) -> bool:
        while self._queue[0] is not me:
            if closed():
                return True  # the write that follows fails at once
            wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if wait <= 0:
                if leave_on_timeout:
                    self._queue.remove(me)
                    self._cond.notify_all()
                return False
            self._cond.wait(wait)
        return True


class Relay(Protocol):
    """What a server's channel hands a relayed blob to (``grpc/data_relay.py``); called on the reader thread, in
    the order the records came. ``admit`` may raise ProtocolError (the peer sent past its window: the channel
    closes); the others must return at once."""

    def admit(self, target: str, nbytes: int) -> None: ...

    def announce(self, channel: DataChannel, h: pb.Header) -> None: ...

    def chunk(self, channel: DataChannel, blob: int, buffer: int, data: bytearray) -> None: ...

    def done(self, channel: DataChannel, blob: int) -> None: ...

    def cancel(self, channel: DataChannel, blob: int, reason: str) -> None: ...


class _Relayed(ChunkCursor):
    """A blob passing through this endpoint to ``target``: its chunks are checked against its sizes and handed on."""

    __slots__ = ("target",)

    def __init__(self, h: pb.Header) -> None:
        super().__init__(h)
        self.target = h.target


class _Cut(Exception):
    """The socket ended or failed."""


class _Refused:
    """A blob or frame refused here (over a limit) whose chunks are still coming: counted off and dropped."""

    __slots__ = ("remaining", "problem", "whole")

    def __init__(self, remaining: int, problem: str, whole: bool = False) -> None:
        self.remaining, self.problem, self.whole = remaining, problem, whole


class DataChannel:
    """One socket to ``peer`` carrying blobs and whole frames both ways (see the module docstring).

    Parameters:
        sock: a connected stream socket whose peer has been authenticated.
        local: this endpoint's name; peer: the authenticated name of the other end (every whole frame's sender).
        admit: the endpoint's limits: why a blob's or frame's announced body may not be received ('' when it may).
        deliver: takes each whole frame received (on the reader thread; it must return quickly); None: this
            channel carries blobs only, and a whole frame on it breaks its protocol.
        gate: set once the peer's frames begun on the stream before its Switch are delivered; whole frames wait.
        relay: takes the blobs the peer sends for other sites (the server's channels); None: such a blob breaks
            the channel's protocol.
        on_close: called once when the channel closes (from whichever thread closes it).
        max_held_bytes: bytes finished blobs may hold before their headers claim them.
        shared_memory: on a Unix socket where the platform has sealed memfds (Linux), this channel takes M records
            (both ends of a socket decide alike) and sends its large buffers so unless ``FLARELITE_SHARED_MEMORY``
            is 0; otherwise (and over TCP) buffers go as C records.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        local: str,
        peer: str,
        admit: Admit,
        on_close: Callable[[DataChannel], None] | None = None,
        max_held_bytes: int = 8 << 30,
        deliver: Deliver | None = None,
        gate: threading.Event | None = None,
        relay: Relay | None = None,
        shared_memory: bool = False,
    ) -> None:
        self.sock = sock
        self.shared = (
            shared_memory
            and shm.AVAILABLE
            and isinstance(sock, socket.socket)
            and sock.family == getattr(socket, "AF_UNIX", None)
        )
        self._received = shm.Received() if self.shared else None  # descriptors ahead of their M records
        self._sends_shared = self.shared and shm.sends_shared()
        self._shared_failed = False  # a memfd could not be made (said once)
        self._shared_sent = 0  # bytes of shared buffers sent since the peer was last seen to have read everything
        self.local, self.peer = local, peer
        self._admit, self._on_close = admit, on_close
        self._deliver = deliver
        self._relay = relay
        self._relaying = 0  # relayed blobs being received (at most MAX_REFUSED)
        self.gate = gate if gate is not None else threading.Event()
        self.max_held_bytes = max_held_bytes
        # blocking: a write or a chunk's read is one call that the kernel finishes without the GIL; ``close`` wakes
        # them (shutdown), and a write's deadline is kept by the watchdog, which closes the channel at it
        sock.settimeout(None)
        self._watch = threading.Condition(threading.Lock())
        self._writing: tuple[float, int] | None = None  # (deadline, serial) of the record being written
        self._watch_until = 0.0  # when the watchdog looks next (a write due earlier wakes it)
        self._serial = 0
        self._cut_by_deadline = 0  # the serial of the record the watchdog cut
        self._watchdog: threading.Thread | None = None
        self._turns = _Turns()
        self._cancels: list[bytes] = []  # cancel records that found the turn taken: the next writer writes them first
        self._ids = itertools.count(1)
        self.closed = False
        self.ended = False  # end_writes was called: nothing more is sent
        self.close_reason = ""
        self._lock = threading.Lock()  # guards what follows (the reader fills it, claimers take from it)
        self._done: dict[int, list] = {}  # finished blobs not claimed yet
        self._held = 0  # bytes they hold
        self._claims: dict[int, concurrent.futures.Future] = {}  # claimed before they finished
        self._dropped: set[int] = set()  # refused by their header: freed when they finish
        self._refused: dict[int, str] = {}  # blobs refused here (why), until their header asks (at most MAX_REFUSED)
        self._refused_frames = 0  # whole frames refused here whose chunks still come (at most MAX_REFUSED)
        self._refusal_log = logsafe.RateLimit()
        self._pending = Inbound()  # blobs being received (reader thread)
        self._announced = 0  # the highest blob id announced (they go up)
        self._buf = memoryview(bytearray(_READ_BUFFER))  # a view: slices of it copy nothing
        self._lo = self._hi = 0
        self.reader_done = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"{local}-data-{peer}", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self._reader.start()

    def close(self, reason: str) -> None:
        """Close the socket (blocked writers and the reader wake up and fail); idempotent.

        Blobs that finished stay claimable; claims of any other blob fail.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.close_reason = reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        _log.debug("%s: data channel to %s closed: %s", self.local, self.peer, reason, extra={"site": self.local})
        with self._watch:
            self._watch.notify()
        if self._on_close is not None:
            self._on_close(self)
        if not self._reader.is_alive():
            self._fail_claims()

    def end_writes(self, timeout: float = 2.0) -> None:
        """Send nothing more: after the record being written (waiting at most ``timeout``), the peer reads the end."""
        me = object()
        self.ended = True
        took = self._turns.take(me, time.monotonic() + timeout, self._is_closed)
        try:
            if took and not self.closed:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self._turns.leave(me)

    def _is_closed(self) -> bool:
        return self.closed

    # sending -----------------------------------------------------------------------------------------
    def send_blob(self, pieces: list[memoryview], deadline: float | None, what: str = "frame") -> int:
        """Write the byte buffers ``pieces`` as one blob on this thread; return its id once the socket took it.

        Raises:
            ChannelUnavailable: the channel is closed and nothing was written (send the frame another way).
            TransportTimeout: ``deadline`` (a ``time.monotonic()`` value) passed; what was sent is cancelled.
            TransportClosed: the channel failed while the blob was being written.
        """
        sizes = [p.nbytes for p in pieces]
        me = object()
        self._take_turn(me, deadline, what)
        try:
            blob = next(self._ids)  # taken in turn: ids go up on the wire, so the receiver can tell a stale one
            head = pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=sizes)).SerializeToString()
            self._write_records(me, blob, head, pieces, deadline, what)
        finally:
            self._leave(me)
        return blob

    def send_frame(self, frame: Frame, deadline: float | None) -> None:
        """Write ``frame`` whole (from this endpoint to the peer) on this thread; return once the socket took it.

        Raises:
            ChannelUnavailable: the channel is closed or ending and nothing was written (send the frame another way).
            TransportTimeout: ``deadline`` (a ``time.monotonic()`` value) passed; what was sent is cancelled.
            TransportClosed: the channel failed while the frame was being written.
        """
        pieces = byte_views(frame.buffers)
        total = sum(p.nbytes for p in pieces) + len(frame.meta)
        if len(frame.meta) > META_INLINE:  # (as header_to_proto decides with META_INLINE)
            pieces.append(memoryview(frame.meta))
        what = f"{frame.kind} frame"
        me = object()
        self._take_turn(me, deadline, what)
        try:
            stream = next(self._ids)  # taken in turn: ids go up on the wire
            env = header_to_proto(frame, stream, META_INLINE, sender=self.local, target=self.peer)
            head = env.SerializeToString()
            if total <= SMALL:  # one write: the header and every buffer
                parts: list = [_E.pack(b"E", len(head)), head]
                for index, view in enumerate(pieces):
                    if view.nbytes:
                        parts += (_C.pack(b"C", stream, index, view.nbytes), view)
                self._write((b"".join(parts),), deadline, what, fresh=True)
                return
            self._write_records(me, stream, head, pieces, deadline, what)
        finally:
            self._leave(me)

    def send_relayed_blob(
        self,
        pieces: list[memoryview],
        target: str,
        deadline: float | None,
        what: str,
        announced: Callable[[int], None],
        reserve: Callable[[int, float | None], None],
        chunk: int = CHUNK,
    ) -> int:
        """Write ``pieces`` as blob N for ``target`` through the peer (the server's relay): the announcement, then
        ``announced(N)`` (the caller queues the frame's header on the stream), then chunks of at most ``chunk``
        bytes, each once ``reserve(nbytes, deadline)`` found room in the relay window to ``target``; the turn is
        left while waiting for room, so frames to other targets go meanwhile. Returns N.

        Raises:
            ChannelUnavailable: the channel is closed and nothing was written (send the frame another way).
            TransportTimeout: ``deadline`` passed (waiting for room or the socket); what was sent is cancelled.
            TransportClosed: the channel (or the connection whose window ``reserve`` waits on) failed meanwhile.
        """
        sizes = [p.nbytes for p in pieces]
        me = object()
        self._take_turn(me, deadline, what)
        try:
            blob = next(self._ids)
            head = pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=sizes, target=target)).SerializeToString()
            self._write((_E.pack(b"E", len(head)), head), deadline, what, fresh=True)
        finally:
            self._leave(me)
        announced(blob)
        try:
            for index, view in enumerate(pieces):
                for offset in range(0, view.nbytes, chunk):
                    part = view[offset : offset + chunk]
                    reserve(part.nbytes, deadline)
                    self.write_chunk(blob, index, part, deadline, what)
        except TransportTimeout:
            self.cancel_blob(blob, "not sent within its timeout")
            raise
        return blob

    def begin_blob(self, sizes: list[int], deadline: float | None, what: str = "a relayed blob") -> int:
        """Announce a blob of ``sizes`` whose chunks follow by ``write_chunk`` (the server passing one on); its id.

        Raises ChannelUnavailable, TransportTimeout, TransportClosed (as ``send_blob``).
        """
        me = object()
        self._take_turn(me, deadline, what)
        try:
            blob = next(self._ids)
            head = pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=sizes)).SerializeToString()
            self._write((_E.pack(b"E", len(head)), head), deadline, what, fresh=True)
        finally:
            self._leave(me)
        return blob

    def write_chunk(
        self, blob: int, buffer: int, data: memoryview, deadline: float | None, what: str = "a relayed blob"
    ) -> None:
        """Write ``data`` as the next bytes of buffer ``buffer`` of blob ``blob`` (announced), in its turn.

        Raises:
            TransportTimeout: no turn before ``deadline`` (nothing written), or the record was cut at it.
            TransportClosed: the channel is closed or failed.
        """
        me = object()
        try:
            self._take_turn(me, deadline, what)
        except ChannelUnavailable as exc:
            raise TransportClosed(f"data channel to {self.peer!r} closed: {exc}") from None
        try:
            self._write((_C.pack(b"C", blob, buffer, data.nbytes), data), deadline, what)
        finally:
            self._leave(me)

    def cancel_blob(self, blob: int, reason: str) -> None:
        """Tell the peer that blob ``blob`` will not be finished (nothing happens when the channel is closed); never
        waits for a turn another writer holds (the cancel then goes before that writer's next record)."""
        me = object()
        if self.closed or not self._turns.take(me, time.monotonic(), self._is_closed):
            self._cancel_later(blob, reason)
            return
        try:
            self._cancel(blob, reason)
        finally:
            self._leave(me)

    def _take_turn(self, me: object, deadline: float | None, what: str) -> None:
        """Wait for ``me``'s turn to write (its caller leaves the turn in a ``finally``).

        Raises:
            ChannelUnavailable: the channel is closed or ending (nothing written).
            TransportTimeout: ``deadline`` passed first.
        """
        if self.closed or self.ended:
            raise ChannelUnavailable(self.close_reason or "the channel is ending")
        if not self._turns.take(me, deadline, self._is_closed):
            raise TransportTimeout(
                f"{what} to {self.peer!r} was not sent within its timeout: the data channel was busy with others"
            )
        if self.closed or self.ended:
            self._turns.leave(me)
            raise ChannelUnavailable(self.close_reason or "the channel is ending")

    def _write_records(
        self, me: object, stream: int, head: bytes, pieces: list, deadline: float | None, what: str
    ) -> None:
        """Write the E record ``head`` of blob or frame ``stream``, then its ``pieces``, a record a turn (``me`` holds
        the turn): each large one in shared memory as an M record where this channel sends so, the others as C
        records of a chunk each; past ``deadline`` what was sent is cancelled."""
        self._write((_E.pack(b"E", len(head)), head), deadline, what, fresh=True)
        for index, view in enumerate(pieces):
            if self._sends_shared and view.nbytes >= shm.SHARED_MIN:
                self._next_turn(me, stream, deadline, what)
                if self._write_shared(me, stream, index, view, deadline, what):
                    continue
            for offset in range(0, view.nbytes, CHUNK):
                self._next_turn(me, stream, deadline, what)
                part = view[offset : offset + CHUNK]
                self._write((_C.pack(b"C", stream, index, part.nbytes), part), deadline, what)

    def _write_shared(
        self, me: object, stream: int, index: int, view: memoryview, deadline: float | None, what: str
    ) -> bool:
        """Write buffer ``index`` of ``stream`` as an M record: wait until the peer has read enough of the shared
        buffers sent before (``SHARED_WINDOW``), copy it into a sealed memfd, pass that on. False when no memfd can
        be made (no memory, no descriptors left): the buffer goes as C records.
        """
        self._shared_room(me, stream, view.nbytes, deadline, what)
        try:
            fd = shm.share(view)
        except OSError as exc:
            if not self._shared_failed:  # (once a channel: it may recur for every buffer while memory is short)
                self._shared_failed = True
                _log.warning(
                    "%s: buffers to %s go through the socket while there is no shared memory: %s",
                    self.local,
                    self.peer,
                    exc,
                    extra={"site": self.local},
                )
            return False
        try:
            if deadline is not None and time.monotonic() > deadline:
                self._timed_out(me, stream, what, "copying it into shared memory took longer")
            self._write((_M.pack(b"M", stream, index, view.nbytes),), deadline, what, fd=fd)
        finally:
            os.close(fd)
        self._shared_sent += view.nbytes
        return True

    def _shared_room(self, me: object, stream: int, size: int, deadline: float | None, what: str) -> None:
        """Wait until ``size`` more bytes of shared buffers fit the window: the peer may leave at most
        ``SHARED_WINDOW`` bytes of them (or one buffer, however large) unread, each holding this machine's memory
        while it does. Others write meanwhile; the peer has read them all once the socket holds nothing unread.

        Raises:
            TransportTimeout: ``deadline`` passed first (what was sent of ``stream`` is cancelled).
            TransportClosed: the channel closed meanwhile.
        """
        pause = _ROOM_POLL
        while self._shared_sent and self._shared_sent + size > shm.SHARED_WINDOW:
            if self.closed:
                raise TransportClosed(f"data channel to {self.peer!r} closed: {self.close_reason}")
            try:
                left = shm.unread(self.sock)
            except (OSError, ValueError) as exc:  # (closed under it)
                raise TransportClosed(f"data channel to {self.peer!r} failed: {exc}") from None
            if not left:
                self._shared_sent = 0
                return
            if deadline is not None and time.monotonic() >= deadline:
                unread_mib = self._shared_sent >> 20
                self._timed_out(
                    me, stream, what, f"the receiver has not read the {unread_mib} MiB of shared buffers sent before it"
                )
            time.sleep(pause)
            pause = min(2 * pause, _ROOM_POLL_MAX)
            self._next_turn(me, stream, deadline, what)

    def _next_turn(self, me: object, stream: int, deadline: float | None, what: str) -> None:
        """Let others write a record, then take the turn back for ``stream``'s next; past ``deadline``, cancel it."""
        if not self._turns.rotate(me, deadline, self._is_closed):
            self._timed_out(me, stream, what, "the receiver takes it slower")

    def _timed_out(self, me: object, stream: int, what: str, why: str) -> NoReturn:
        """Cancel what was sent of ``stream`` and raise TransportTimeout, now: the cancel is written at once when the
        turn is ``me``'s, else by the writer holding it (before its next record, or as it leaves the turn): ``me``
        never waits for a turn past its deadline."""
        if self._turns.holds(me):
            self._cancel(stream, "not sent within its timeout")
        else:
            self._cancel_later(stream, "not sent within its timeout")
        raise TransportTimeout(
            f"{what} to {self.peer!r} was not sent within its timeout ({why}); what was sent of it is cancelled"
        )

    def _cancel(self, blob: int, reason: str) -> None:
        """Write the cancel of ``blob`` (the caller holds the turn), after those that waited for a writer."""
        with self._lock:
            self._cancels.append(self._cancel_record(blob, reason))
        self._flush_cancels()

    @staticmethod
    def _cancel_record(blob: int, reason: str) -> bytes:
        body = pb.Envelope(cancel=pb.Cancel(stream=blob, reason=reason)).SerializeToString()
        return _E.pack(b"E", len(body)) + body

    def _cancel_later(self, blob: int, reason: str) -> None:
        """Queue the cancel of ``blob`` for the next writer (at most MAX_REFUSED wait: past that, close)."""
        with self._lock:
            self._cancels.append(self._cancel_record(blob, reason))
            over = len(self._cancels) > MAX_REFUSED
        if over:
            self.close(f"{MAX_REFUSED} cancels waited for a writer")

    def _leave(self, me: object) -> None:
        """``me`` is done writing; cancels queued meanwhile that no writer after it would carry are written now."""
        self._turns.leave(me)
        if not self._cancels or self.closed:
            return
        last = object()
        if not self._turns.take(last, time.monotonic(), self._is_closed):
            return  # another writer holds the turn now: it writes them
        try:
            self._flush_cancels()
        finally:
            self._turns.leave(last)

    def _flush_cancels(self) -> None:
        """Write the queued cancels (the caller holds the turn); a peer that takes not even those few bytes within
        ``CANCEL_GRACE`` reads nothing: the channel closes."""
        try:
            self._write_cancels(time.monotonic() + CANCEL_GRACE)
        except (TransportClosed, TransportTimeout):
            pass

    def _write_cancels(self, deadline: float | None) -> None:
        """Write the cancels that found the turn taken (the caller holds it, between two records)."""
        with self._lock:
            cancels, self._cancels = self._cancels, []
        if cancels:  # under the writer's own deadline (none: as its record would wait)
            self._write((b"".join(cancels),), deadline, "a cancel")

    def _write(
        self, parts: tuple, deadline: float | None, what: str, fresh: bool = False, fd: int | None = None
    ) -> None:
        """Write one record (blocking), with descriptor ``fd`` attached when given; a record cut short (socket error,
        deadline) closes the channel.

        ``fresh``: the first record of its blob or frame (nothing of it written yet). With its deadline passed
        already (``timeout=0``: "now, if there is room") it is written only if the socket takes it at once, else
        TransportTimeout with nothing written (the caller may send it later); a watchdog would cut it otherwise.
        """
        if self.closed:
            raise TransportClosed(f"data channel to {self.peer!r} closed: {self.close_reason}")
        if fresh and deadline is not None and deadline <= time.monotonic():
            self._write_now(b"".join(parts), what)
            return
        if self._cancels and what != "a cancel":
            self._write_cancels(deadline)
        serial = self._watch_write(deadline)
        try:
            if fd is not None:
                shm.send_with_file(self.sock, b"".join(parts), fd)
            else:
                for part in parts:
                    self.sock.sendall(part)
        except OSError as exc:
            if serial and self._cut_by_deadline == serial:  # (serial 0: a write without a deadline)
                raise TransportTimeout(
                    f"{what} to {self.peer!r} was not sent within its timeout (the receiver takes it slower); the "
                    "data channel was closed and what was sent of it is dropped"
                ) from None
            self.close(f"write failed: {exc}")
            raise TransportClosed(f"data channel to {self.peer!r} failed: {exc}") from None
        finally:
            if deadline is not None:
                with self._watch:
                    self._writing = None

    def _write_now(self, data: bytes, what: str) -> None:
        """Write ``data`` (a whole record) if the socket takes all of it without waiting (see ``_write``)."""
        sent = 0
        try:
            if isinstance(self.sock, socket.socket):
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            elif self.sock.send_now(data):  # TLS cannot write a record partly: all of it if there is room
                return
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.close(f"write failed: {exc}")
            raise TransportClosed(f"data channel to {self.peer!r} failed: {exc}") from None
        if sent == len(data):
            return
        if sent:
            self.close("a record was cut short by its timeout")
        raise TransportTimeout(
            f"{what} to {self.peer!r} was not sent: its timeout had run out and the data channel had no room now"
        )

    def _watch_write(self, deadline: float | None) -> int:
        """Tell the watchdog that a record with ``deadline`` is being written (None: no deadline); its serial.

        The watchdog is woken only when this deadline comes before it would look anyway (a small write costs no
        thread switch)."""
        if deadline is None:
            return 0
        with self._watch:
            self._serial += 1
            self._writing = (deadline, self._serial)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch_loop, name=f"{self.local}-data-watch-{self.peer}", daemon=True
                )
                self._watchdog.start()
            elif deadline < self._watch_until:
                self._watch.notify()
            return self._serial

    def _watch_loop(self) -> None:
        """Close the channel when the record being written passes its deadline (a blocked write then fails)."""
        with self._watch:
            while not self.closed:
                writing = self._writing
                now = time.monotonic()
                left = POLL if writing is None else min(POLL, writing[0] - now)
                if left > 0:
                    self._watch_until = now + left
                    self._watch.wait(left)
                    continue
                self._cut_by_deadline = writing[1]  # type: ignore[index]
                self._writing = None
                break
        if self._cut_by_deadline and not self.closed:
            self.close("a blob was cut short by its timeout")

    # claiming ----------------------------------------------------------------------------------------
    def claim(self, blob: int) -> concurrent.futures.Future:
        """The buffers of blob ``blob`` (a future: they may still be on their way); each blob is claimed once.

        The future fails with TransportClosed when the channel ends before the blob is complete.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            buffers = self._done.pop(blob, None)
            refused = self._refused.pop(blob, None)
            if buffers is not None:
                self._held -= sum(memoryview(b).nbytes for b in buffers)
                future.set_result(buffers)
            elif refused is not None:
                future.set_exception(ProtocolError(refused))
            elif blob in self._claims or (blob <= self._announced and blob not in self._pending):
                future.set_exception(ProtocolError(f"blob {blob} is claimed twice, or was dropped or cancelled"))
            elif self.reader_done.is_set():
                future.set_exception(TransportClosed(f"the data channel from {self.peer} closed before blob {blob}"))
            else:
                self._claims[blob] = future
        return future

    def drop(self, blob: int) -> None:
        """The header of ``blob`` was refused: free it now or when it finishes."""
        with self._lock:
            buffers = self._done.pop(blob, None)
            if buffers is not None:
                self._held -= sum(memoryview(b).nbytes for b in buffers)
            elif self._refused.pop(blob, None) is not None:
                pass  # refused here already: nothing is kept of it
            elif blob > self._announced or blob in self._pending:
                self._dropped.add(blob)  # still to come, or coming: freed when it finishes
            future = self._claims.pop(blob, None)
        if future is not None:
            future.cancel()

    def holds_local(self, blob: int) -> bool:
        """Whether blob ``blob`` came (or is coming) for this side itself, not for the relay."""
        with self._lock:
            state = self._pending.get(blob)
            local = state is not None and not isinstance(state, _Relayed)
            return local or blob in self._done or blob in self._refused

    def _finished(self, blob: int, buffers: list) -> None:
        """Blob ``blob`` is complete: to its claim, or kept for it (atomically with leaving ``_pending``)."""
        with self._lock:
            self._pending.pop(blob, None)
            if blob in self._dropped:
                self._dropped.discard(blob)
                return
            future = self._claims.pop(blob, None)
            if future is None:
                size = sum(memoryview(b).nbytes for b in buffers)
                if self._held + size > self.max_held_bytes:
                    raise ProtocolError(
                        f"{self._held + size} bytes of blobs no header claimed (the limit is {self.max_held_bytes})"
                    )
                self._done[blob] = buffers
                self._held += size
                return
        future.set_result(buffers)

    def _fail_claims(self) -> None:
        with self._lock:
            claims, self._claims = self._claims, {}
        for blob, future in claims.items():
            future.set_exception(TransportClosed(f"the data channel from {self.peer} closed before blob {blob}"))

    # receiving ---------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        _thread.reading = True
        pending = self._pending
        reason = "closed"  # (closed between two records: the loop just ends)
        try:
            while not self.closed:
                kind = self._take(1)
                if kind == b"E":
                    (size,) = struct.unpack("<I", self._take(4))
                    if size > MAX_ENVELOPE:
                        raise ProtocolError(f"an envelope of {size} bytes (the limit is {MAX_ENVELOPE})")
                    env = pb.Envelope()
                    env.ParseFromString(self._take(size))
                    self._on_envelope(env, pending)
                elif kind == b"C":
                    blob, buffer, size = struct.unpack("<QII", self._take(16))
                    self._on_chunk(blob, buffer, size, pending)
                elif kind == b"M" and self._received is not None:
                    blob, buffer, size = struct.unpack("<QIQ", self._take(20))
                    self._on_shared(blob, buffer, size, pending)
                else:
                    raise ProtocolError(f"a record of unknown kind {kind!r}")
        except _Cut as exc:
            reason = str(exc) or f"{self.peer} closed the data channel"
        except ProtocolError as exc:
            reason = f"{self.peer} broke the data channel's protocol: {exc}"
            _log.warning(
                "%s: closed the data channel from %s: %s", self.local, self.peer, exc, extra={"site": self.local}
            )
        except Exception as exc:  # a decode error of the envelope, or worse: end this channel, never the process
            reason = f"reading from {self.peer} failed: {exc!r}"
            _log.warning(
                "%s: closed the data channel from %s: %r", self.local, self.peer, exc, extra={"site": self.local}
            )
        if self._relay is not None:  # what was passing through ends at its targets
            for blob, state in list(pending.items()):
                if type(state) is _Relayed:
                    self._relay.cancel(self, blob, reason)
        pending.clear()  # frees what unfinished blobs held
        if self._received is not None:
            self._received.close()
        self.reader_done.set()
        self.close(reason)
        self._fail_claims()

    def _on_envelope(self, env: pb.Envelope, pending: Inbound) -> None:
        body = env.WhichOneof("body")
        if body == "header":
            self._on_header(env.header, pending)
        elif body == "cancel":
            with self._lock:
                state = pending.pop(env.cancel.stream, None)
            if type(state) is _Refused and state.whole:
                self._refused_frames -= 1
            if type(state) is _Relayed:
                self._relaying -= 1
                assert self._relay is not None
                self._relay.cancel(self, env.cancel.stream, env.cancel.reason)
                return
            self._finished_cancelled(env.cancel.stream, env.cancel.reason)
        else:
            raise ProtocolError(f"unexpected {body!r} envelope")

    def _finished_cancelled(self, blob: int, reason: str) -> None:
        with self._lock:
            self._dropped.discard(blob)
            future = self._claims.pop(blob, None)
        if future is not None:
            future.set_exception(TransportClosed(f"{self.peer} gave up on blob {blob}: {reason}"))

    def _on_header(self, h: pb.Header, pending: Inbound) -> None:
        if h.stream <= self._announced:
            raise ProtocolError(f"blob id {h.stream} after {self._announced} (ids go up)")
        if h.kind:
            self._on_frame_header(h, pending)
            return
        if len(h.buffer_sizes) > MAX_BLOB_BUFFERS or h.meta or h.meta_size:
            raise ProtocolError("a blob announcement with meta or too many buffers")
        check_header(h)
        if h.target and h.target != self.local:
            self._on_relayed(h, pending)
            return
        size = sum(h.buffer_sizes)
        problem = self._admit(h, size, pending)
        if problem:  # its chunks are skipped; its header gets the reason
            with self._lock:
                self._announced = h.stream
                if len(self._refused) >= MAX_REFUSED:
                    raise ProtocolError(f"{len(self._refused)} refused blobs that no header asked about")
                future = self._claims.pop(h.stream, None)
                if future is None:
                    self._refused[h.stream] = problem
                if size:
                    pending[h.stream] = _Refused(size, problem)
            if future is not None:
                future.set_exception(ProtocolError(problem))
            return
        assembly = Assembly(h)
        with self._lock:
            self._announced = h.stream
            pending[h.stream] = assembly
        if assembly.complete:
            self._finished(h.stream, assembly.finish().buffers)

    def _on_relayed(self, h: pb.Header, pending: Inbound) -> None:
        """A blob for another site (the peer's relay window bounds what of it is in flight): handed to the relay."""
        if self._relay is None:
            raise ProtocolError(f"a blob for {h.target!r} on a channel that relays nothing")
        if self._relaying >= MAX_REFUSED:
            raise ProtocolError(f"{self._relaying} relayed blobs are unfinished (it starts them, never ends them)")
        state = _Relayed(h)
        with self._lock:
            self._announced = h.stream
            if not state.complete:
                pending[h.stream] = state
                self._relaying += 1
        self._relay.announce(self, h)
        if state.complete:
            self._relay.done(self, h.stream)

    def _on_frame_header(self, h: pb.Header, pending: Inbound) -> None:
        """A whole frame starts (or is complete already)."""
        self._announced = h.stream
        if self._deliver is None:
            raise ProtocolError(f"a whole {h.kind!r} frame on a channel that carries only blobs")
        check_header(h)
        if h.target != self.local:
            raise ProtocolError(f"a frame for {h.target!r} (only frames for {self.local!r} travel on this channel)")
        h.sender = self.peer  # the authenticated identity, not the claim
        size = body_size(h)
        problem = self._admit(h, size, pending)
        if problem:  # its header is delivered with the reason; its chunks are skipped
            remaining = size - len(h.meta)
            if remaining > 0:
                if self._refused_frames >= MAX_REFUSED:
                    raise ProtocolError(f"{self._refused_frames} refused frames are unfinished (it sends on anyway)")
                with self._lock:
                    pending[h.stream] = _Refused(remaining, problem, whole=True)
                self._refused_frames += 1
            self._log_refusal(h.kind, problem)
            frame = header_from_proto(h)
            frame.meta, frame.error = b"", problem
            self._pass(frame)
            return
        assembly = Assembly(h)
        if assembly.complete:
            self._pass(assembly.finish())
            return
        with self._lock:
            pending[h.stream] = assembly

    def _pass(self, frame: Frame) -> None:
        """Deliver a whole frame once the gate is open (the peer's frames begun on the stream are delivered)."""
        if not self.gate.is_set():
            deadline = time.monotonic() + GATE_TIMEOUT
            while not self.gate.wait(min(POLL, max(0.0, deadline - time.monotonic()))):
                if self.closed:
                    raise _Cut("")
                if time.monotonic() >= deadline:
                    raise ProtocolError(f"frames came on the data channel, no Switch on the stream in {GATE_TIMEOUT}s")
        assert self._deliver is not None
        self._deliver(frame)

    def _log_refusal(self, kind: str, problem: str) -> None:
        allowed = self._refusal_log.check(self.peer)
        if allowed is not None:
            more = f" ({allowed[0]} more refused since the last report)" if allowed[0] else ""
            _log.error(
                "%s: refused the body of a %s frame from %s on the data channel: %s%s",
                self.local,
                kind,
                self.peer,
                problem,
                more,
                extra={"site": self.local},
            )

    def _on_chunk(self, blob: int, buffer: int, size: int, pending: Inbound) -> None:
        state = pending.get(blob)
        if state is None:
            raise ProtocolError(f"a chunk for unknown blob {blob}")
        if size > CHUNK:
            raise ProtocolError(f"a chunk of {size} bytes (the limit is {CHUNK})")
        if type(state) is _Relayed:
            self._on_relayed_chunk(state, blob, buffer, size, pending)
            return
        if type(state) is _Refused:
            self._discard(size)
            self._count_off(state, blob, size, pending)
            return
        try:
            slot = state.slot(buffer, size)
        except ValueError as exc:
            raise ProtocolError(f"{exc} (blob {blob})") from None
        except MemoryError as exc:
            raise ProtocolError(f"no memory for blob {blob}: {exc}") from None
        self._read_into(slot)
        self._filled(state, blob, pending)

    def _on_shared(self, blob: int, buffer: int, size: int, pending: Inbound) -> None:
        """Buffer ``buffer`` of ``blob``, whole, in the sealed memfd that came with the record: mapped, not copied."""
        assert self._received is not None
        fd = self._received.take()
        try:
            state = pending.get(blob)
            if state is None:
                raise ProtocolError(f"a shared buffer for unknown blob {blob}")
            if type(state) is _Relayed:
                raise ProtocolError(f"a shared buffer for blob {blob}, relayed to {state.target!r} (chunks only)")
            if type(state) is _Refused:
                self._count_off(state, blob, size, pending)
                return
            if not size:
                raise ProtocolError(f"an empty shared buffer (blob {blob})")
            mapping = shm.open_shared(fd, size)
            try:
                state.adopt(buffer, mapping)
            except ValueError as exc:
                mapping.close()
                raise ProtocolError(f"{exc} (blob {blob})") from None
        finally:
            os.close(fd)
        self._filled(state, blob, pending)

    def _count_off(self, state: _Refused, blob: int, size: int, pending: Inbound) -> None:
        """``size`` more bytes of a refused blob or frame came (and were dropped)."""
        state.remaining -= size
        if state.remaining <= 0:
            with self._lock:
                pending.pop(blob, None)
            if state.whole:
                self._refused_frames -= 1

    def _filled(self, state: Assembly, blob: int, pending: Inbound) -> None:
        """A record of ``blob`` was received into ``state``: deliver or keep it when it is complete."""
        if state.complete:
            if state.frame.kind:  # a whole frame (a blob's announcement has no kind)
                frame = state.finish()
                with self._lock:
                    pending.pop(blob, None)
                self._pass(frame)
                return
            self._finished(blob, state.finish().buffers)

    def _on_relayed_chunk(self, state: _Relayed, blob: int, buffer: int, size: int, pending: Inbound) -> None:
        try:
            state.advance_by(buffer, size)
        except ValueError as exc:
            raise ProtocolError(f"{exc} (blob {blob} for {state.target!r})") from None
        assert self._relay is not None
        self._relay.admit(state.target, size)  # raises when the peer sends past its window
        data = bytearray(size)
        self._read_into(memoryview(data))
        self._relay.chunk(self, blob, buffer, data)
        if state.complete:
            with self._lock:
                pending.pop(blob, None)
            self._relaying -= 1
            self._relay.done(self, blob)

    # the socket, read through a small buffer (record heads) or straight into the destination (chunks) ------
    def _recv_into(self, view: memoryview, flags: int = 0) -> int:
        if self.closed:
            raise _Cut("")
        try:
            if self._received is not None:  # (keeps the descriptors that shared buffers bring)
                got = self._received.recv_into(self.sock, view, flags)
            else:
                got = self.sock.recv_into(view, 0, flags)
        except OSError as exc:
            raise _Cut(f"reading from {self.peer} failed: {exc}") from None
        if got == 0:
            raise _Cut("")
        return got

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        if self._hi - self._lo < n:
            if n > len(self._buf):  # a large announcement (bounded by MAX_ENVELOPE)
                out = bytearray(n)
                self._read_into(memoryview(out))
                return bytes(out)
            if self._lo:
                self._buf[: self._hi - self._lo] = self._buf[self._lo : self._hi]
                self._hi -= self._lo
                self._lo = 0
            while self._hi < n:
                self._hi += self._recv_into(self._buf[self._hi :])
        out = bytes(self._buf[self._lo : self._lo + n])
        self._lo += n
        return out

    def _read_into(self, view: memoryview) -> None:
        """Fill ``view`` with the next bytes of the stream: first what is buffered, then straight from the socket."""
        have = min(self._hi - self._lo, view.nbytes)
        if have:
            view[:have] = self._buf[self._lo : self._lo + have]
            self._lo += have
        got = have
        while got < view.nbytes:  # a chunk's bytes in one call where the platform can (the kernel waits for all)
            got += self._recv_into(view[got:], _WAITALL)

    def _discard(self, n: int) -> None:
        """Read and drop the next ``n`` bytes of the stream."""
        scratch = memoryview(bytearray(min(n, _READ_BUFFER) or 1))
        while n > 0:
            part = scratch[: min(n, scratch.nbytes)]
            self._read_into(part)
            n -= part.nbytes
