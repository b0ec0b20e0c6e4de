"""DataChannel: the buffers of large frames over one connected stream socket, beside the gRPC stream to the same
peer. The frame's header keeps travelling on the gRPC stream, in order, naming its buffers as blob N of this
channel; so a frame's place among the others is the stream's, and only its bytes take the faster way.

Records on the socket (little-endian):

* ``E <u32 n> <n bytes>``: a protobuf ``Envelope``: a ``Header`` announcing blob ``stream`` (its buffers' sizes;
  no other field counts), or a ``Cancel`` (the sender gave up on a blob it started);
* ``C <u64 blob> <u32 buffer> <u32 n> <n bytes>``: ``n`` raw bytes of buffer ``buffer`` of that blob, received
  straight into it (``recv_into``): one copy in the receiver, none extra in the sender.

Sending (``send_blob``): the caller's thread writes the blob itself (no hop to an event loop); callers take turns
chunk by chunk, first come first served, so one large blob never holds up another for more than a chunk. The
socket is blocking (one call per record, finished by the kernel without the GIL); a write's deadline is kept by a
watchdog thread, which closes the channel when the record being written passes it. The
sender queues the frame's header on gRPC only once its blob is written, so the receiver has (or is reading) the
blob when the header arrives. A blob that cannot be finished within its timeout is cancelled, or, cut
mid-record, the channel is closed.

Receiving: one reader thread assembles blobs with ``wire.Assembly`` (memory follows the bytes received; the
endpoint's caps on unfinished frames apply); a finished blob waits to be claimed (``claim``) by its header.
What finished blobs hold unclaimed is capped too: a peer that sends blobs and no headers loses its channel.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

from ... import logsafe
from ...errors import ProtocolError, TransportClosed, TransportTimeout
from ..grpc import flarelite_pb2 as pb
from ..grpc.wire import Assembly, Inbound, check_header

_log = logging.getLogger("flarelite.dataplane")
logsafe.install(_log)  # names and reasons a peer sent are logged escaped

CHUNK = 4 << 20  # bytes of a buffer per C record (a turn)
MAX_ENVELOPE = 2 << 20  # an E record holds a blob's announcement (its buffer sizes) or a cancel
MAX_BLOB_BUFFERS = 1 << 17
MAX_REFUSED = 256  # refused blobs whose headers have not come yet; more close the channel
POLL = 1.0  # seconds a writer waiting for its turn looks at the channel's state again
_E = struct.Struct("<cI")
_C = struct.Struct("<cQII")
_READ_BUFFER = 256 << 10
_WAITALL = getattr(socket, "MSG_WAITALL", 0)

Admit = Callable[[pb.Header, int, Inbound], str]  # why a blob may not be received here ('' if it may)


class ChannelUnavailable(Exception):
    """The channel is closed and nothing was written: send the frame another way."""


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

    def leave(self, me: object) -> None:
        """``me`` is done writing (or gives up waiting)."""
        with self._cond:
            try:
                self._queue.remove(me)
            except ValueError:
                pass
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


class _Cut(Exception):
    """The socket ended or failed."""


class _Refused:
    """A blob refused here (over a limit) whose chunks are still coming: counted off and dropped."""

    __slots__ = ("remaining", "problem")

    def __init__(self, remaining: int, problem: str) -> None:
        self.remaining, self.problem = remaining, problem


class DataChannel:
    """One socket to ``peer`` carrying blobs both ways (see the module docstring).

    Parameters:
        sock: a connected stream socket whose peer has been authenticated.
        local: this endpoint's name; peer: the authenticated name of the other end (for messages).
        admit: the endpoint's limits: why a blob's announced buffers may not be received ('' when they may).
        on_close: called once when the channel closes (from whichever thread closes it).
        max_held_bytes: bytes finished blobs may hold before their headers claim them.
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
    ) -> None:
        self.sock = sock
        self.local, self.peer = local, peer
        self._admit, self._on_close = admit, on_close
        self.max_held_bytes = max_held_bytes
        # blocking: a write or a chunk's read is one call that the kernel finishes without the GIL; ``close`` wakes
        # them (shutdown), and a write's deadline is kept by the watchdog, which closes the channel at it
        sock.settimeout(None)
        self._watch = threading.Condition(threading.Lock())
        self._writing: tuple[float, int] | None = None  # (deadline, serial) of the record being written
        self._serial = 0
        self._cut_by_deadline = 0  # the serial of the record the watchdog cut
        self._watchdog: threading.Thread | None = None
        self._turns = _Turns()
        self._ids = itertools.count(1)
        self.closed = False
        self.close_reason = ""
        self._lock = threading.Lock()  # guards what follows (the reader fills it, claimers take from it)
        self._done: dict[int, list] = {}  # finished blobs not claimed yet
        self._held = 0  # bytes they hold
        self._claims: dict[int, concurrent.futures.Future] = {}  # claimed before they finished
        self._dropped: set[int] = set()  # refused by their header: freed when they finish
        self._refused: dict[int, str] = {}  # blobs refused here (why), until their header asks (at most MAX_REFUSED)
        self._pending = Inbound()  # blobs being received (reader thread)
        self._announced = 0  # the highest blob id announced (they go up)
        self._buf = bytearray(_READ_BUFFER)
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
        if self._on_close is not None:
            self._on_close(self)
        if not self._reader.is_alive():
            self._fail_claims()

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
        if self.closed:
            raise ChannelUnavailable(self.close_reason)
        sizes = [p.nbytes for p in pieces]
        me = object()
        if not self._turns.take(me, deadline, self._is_closed):
            raise TransportTimeout(
                f"{what} to {self.peer!r} was not sent within its timeout: the data channel was busy with others"
            )
        try:
            if self.closed:
                raise ChannelUnavailable(self.close_reason)
            blob = next(self._ids)  # taken in turn: ids go up on the wire, so the receiver can tell a stale one
            head = pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=sizes)).SerializeToString()
            self._write((_E.pack(b"E", len(head)), head), deadline, what)
            for index, view in enumerate(pieces):
                for offset in range(0, view.nbytes, CHUNK):
                    if not self._turns.rotate(me, deadline, self._is_closed):
                        self._turns.rotate(me, None, self._is_closed)  # the cancel waits for its turn
                        self._cancel(blob, "not sent within its timeout")
                        raise TransportTimeout(
                            f"{what} to {self.peer!r} was not sent within its timeout (the receiver takes it "
                            "slower); what was sent of it is cancelled"
                        )
                    part = view[offset : offset + CHUNK]
                    self._write((_C.pack(b"C", blob, index, part.nbytes), part), deadline, what)
        finally:
            self._turns.leave(me)
        return blob

    def _cancel(self, blob: int, reason: str) -> None:
        body = pb.Envelope(cancel=pb.Cancel(stream=blob, reason=reason)).SerializeToString()
        try:
            self._write((_E.pack(b"E", len(body)), body), None, "a cancel")
        except TransportClosed:
            pass

    def _write(self, parts: tuple, deadline: float | None, what: str) -> None:
        """Write one record (blocking); a record cut short (socket error, deadline) closes the channel."""
        if self.closed:
            raise TransportClosed(f"data channel to {self.peer!r} closed: {self.close_reason}")
        serial = self._watch_write(deadline)
        try:
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

    def _watch_write(self, deadline: float | None) -> int:
        """Tell the watchdog that a record with ``deadline`` is being written (None: no deadline); its serial."""
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
            self._watch.notify()
            return self._serial

    def _watch_loop(self) -> None:
        """Close the channel when the record being written passes its deadline (a blocked write then fails)."""
        with self._watch:
            while not self.closed:
                writing = self._writing
                if writing is None:
                    self._watch.wait(POLL)
                    continue
                left = writing[0] - time.monotonic()
                if left > 0:
                    self._watch.wait(min(left, POLL))
                    continue
                if self._writing is writing:
                    self._cut_by_deadline = writing[1]
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
        pending.clear()  # frees what unfinished blobs held
        self.reader_done.set()
        self.close(reason)
        self._fail_claims()

    def _on_envelope(self, env: pb.Envelope, pending: Inbound) -> None:
        body = env.WhichOneof("body")
        if body == "header":
            self._on_header(env.header, pending)
        elif body == "cancel":
            with self._lock:
                pending.pop(env.cancel.stream, None)
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
        if len(h.buffer_sizes) > MAX_BLOB_BUFFERS or h.meta or h.meta_size:
            raise ProtocolError("a blob announcement with meta or too many buffers")
        check_header(h)
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

    def _on_chunk(self, blob: int, buffer: int, size: int, pending: Inbound) -> None:
        state = pending.get(blob)
        if state is None:
            raise ProtocolError(f"a chunk for unknown blob {blob}")
        if size > CHUNK:
            raise ProtocolError(f"a chunk of {size} bytes (the limit is {CHUNK})")
        if type(state) is _Refused:
            self._discard(size)
            state.remaining -= size
            if state.remaining <= 0:
                with self._lock:
                    pending.pop(blob, None)
            return
        try:
            slot = state.slot(buffer, size)
        except ValueError as exc:
            raise ProtocolError(f"{exc} (blob {blob})") from None
        except MemoryError as exc:
            raise ProtocolError(f"no memory for blob {blob}: {exc}") from None
        self._read_into(slot)
        if state.complete:
            self._finished(blob, state.finish().buffers)

    # the socket, read through a small buffer (record heads) or straight into the destination (chunks) ------
    def _recv_into(self, view: memoryview, flags: int = 0) -> int:
        if self.closed:
            raise _Cut("")
        try:
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
            view = memoryview(self._buf)
            while self._hi < n:
                self._hi += self._recv_into(view[self._hi :])
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
