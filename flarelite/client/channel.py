"""The local channel between a ClientAPIExecutor and its external training script: framed messages on a socket.

A message is a fixed prefix, the lengths of its buffers, the codec's meta, then the buffers (little-endian)::

    magic b"FLCA" | version u8 | kind u8 | reserved u16 | meta length u32 | buffer count u32 | buffer bytes u64
    | buffer lengths (count x u64) | meta | buffer 0 | buffer 1 | ...

The body is a dict encoded by flarelite's safe codec (``flarelite.serialization.encode``): arrays and tensors
travel out of band, sent with ``socket.sendmsg`` without being joined and received with ``recv_into`` into
buffers of their own (no pickle, nothing received can run code). Every read is bounded: the prefix is checked
against the message size limit before anything is allocated, and an oversize or malformed message is refused
with a ProtocolError that names it. Memory follows the bytes actually received: a large buffer is a private
anonymous mapping whose pages the kernel supplies as they are written, so what a prefix announces costs address
space, not memory, until the bytes come.

Messages (kept small): HELLO(token, pid) -> READY(config); TASK(task_id, task_name, data) -> ACCEPTED(task_id);
RESULT(task_id, data); LOG(record); HEARTBEAT; ABORT(task_id or None for the job, reason); SHUTDOWN(reason).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

from flarelite.apis.shareable import Shareable
from flarelite.buffers import forget, lazy_buffer
from flarelite.errors import CodecError, ProtocolError, TransportClosed, TransportTimeout
from flarelite.serialization import decode, encode
from flarelite.serialization.limits import MAX_META_BYTES, max_buffers

MAGIC = b"FLCA"
VERSION = 1
MAX_MESSAGE_SIZE = 2 << 30  # as flarelite's transports (communication.sizes.DEFAULT_MAX_MESSAGE_SIZE)
HELLO_MAX_SIZE = 64 << 10  # the first message, from a connection not yet trusted
SOCKET_BUFFER = 4 << 20
MAPPED_MIN = 1 << 20  # buffers this large are mapped (committed as written), smaller ones are bytearrays
_IOV_MAX = 512
_PREFIX = struct.Struct("<4sBBHIIQ")


class Msg:
    """Message kinds."""

    HELLO = 1
    READY = 2
    TASK = 3
    ACCEPTED = 4
    RESULT = 5
    LOG = 6
    HEARTBEAT = 7
    ABORT = 8
    SHUTDOWN = 9


NAMES = {v: k for k, v in vars(Msg).items() if isinstance(v, int)}
_FIELDS: dict[int, dict[str, tuple[type, ...]]] = {
    Msg.HELLO: {"token": (str,), "pid": (int,)},
    Msg.READY: {"config": (dict,)},
    Msg.TASK: {"task_id": (str,), "task_name": (str,), "data": (Shareable,)},
    Msg.ACCEPTED: {"task_id": (str,)},
    Msg.RESULT: {"task_id": (str,), "data": (Shareable,)},
    Msg.LOG: {"record": (dict,)},
    Msg.HEARTBEAT: {},
    Msg.ABORT: {"task_id": (str, type(None)), "reason": (str,)},
    Msg.SHUTDOWN: {"reason": (str,)},
}


def allocate(size: int) -> Any:
    """A writable buffer for ``size`` incoming bytes, committed only as it is written (see ``lazy_buffer``).

    Raises:
        MemoryError: the address space for it cannot be reserved.
    """
    return lazy_buffer(size, MAPPED_MIN)


def _bytes_view(buf: Any) -> memoryview:
    view = memoryview(buf)
    return view.cast("B") if view.nbytes else memoryview(b"")


class Channel:
    """One connected socket: thread-safe ``send``, one reader calling ``recv``; ``last_seen`` tracks the peer."""

    def __init__(
        self, sock: socket.socket, *, peer: str, max_message_size: int = MAX_MESSAGE_SIZE, io_timeout: float = 0.5
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.max_message_size = max_message_size
        self.last_seen = time.monotonic()
        self._send_lock = threading.Lock()
        self._closed = False
        sock.settimeout(io_timeout)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    # sending ---------------------------------------------------------------------------------------------
    def send(self, kind: int, body: dict, stall_timeout: float | None = None) -> None:
        """Send one message.

        Raises:
            UnsupportedTypeError, CodecError: the body holds a value the codec does not carry.
            ProtocolError: the message is over ``max_message_size``.
            TransportClosed: the channel is closed or the peer is gone.
            TransportTimeout: the peer read nothing for ``stall_timeout`` seconds.
        """
        meta, buffers = encode(body)
        views = [_bytes_view(b) for b in buffers]
        lengths = [v.nbytes for v in views]
        head = _PREFIX.pack(MAGIC, VERSION, kind, 0, len(meta), len(views), sum(lengths))
        size = len(head) + 8 * len(views) + len(meta) + sum(lengths)
        if size > self.max_message_size:
            raise ProtocolError(
                f"{NAMES.get(kind, kind)} message to {self.peer} is {size} bytes, over the limit of "
                f"{self.max_message_size} bytes"
            )
        parts = [memoryview(head + struct.pack(f"<{len(lengths)}Q", *lengths) + meta)]
        parts.extend(v for v in views if v.nbytes)
        with self._send_lock:
            self._send_all(parts, stall_timeout)

    def _send_all(self, parts: list[memoryview], stall_timeout: float | None) -> None:
        i = 0
        stalled_since: float | None = None
        while i < len(parts):
            if self._closed:
                raise TransportClosed(f"the channel to {self.peer} is closed")
            try:
                sent = self.sock.sendmsg(parts[i : i + _IOV_MAX])
            except socket.timeout:
                now = time.monotonic()
                stalled_since = stalled_since or now
                if stall_timeout is not None and now - stalled_since > stall_timeout:
                    raise TransportTimeout(f"{self.peer} read nothing for {stall_timeout}s") from None
                continue
            except OSError as exc:
                raise TransportClosed(f"the connection to {self.peer} is gone: {exc}") from exc
            stalled_since = None
            while sent > 0:
                n = parts[i].nbytes
                if sent >= n:
                    sent -= n
                    i += 1
                else:
                    parts[i] = parts[i][sent:]
                    sent = 0

    # receiving -------------------------------------------------------------------------------------------
    def _read_into(self, view: memoryview, deadline: float | None) -> None:
        got = 0
        total = view.nbytes
        while got < total:
            if self._closed:
                raise TransportClosed(f"the channel to {self.peer} is closed")
            try:
                n = self.sock.recv_into(view[got:])
            except socket.timeout:
                if deadline is not None and time.monotonic() > deadline:
                    raise TransportTimeout(f"{self.peer} sent no complete message in time") from None
                continue
            except OSError as exc:
                raise TransportClosed(f"the connection to {self.peer} is gone: {exc}") from exc
            if n == 0:
                raise TransportClosed(f"{self.peer} closed the connection")
            got += n
            self.last_seen = time.monotonic()

    def _read(self, n: int, deadline: float | None) -> Any:
        buf = allocate(n)
        if n:
            try:
                self._read_into(memoryview(buf), deadline)
            except BaseException:
                forget(buf)  # never completed: freed, not kept for reuse
                raise
        return buf

    def recv(self, deadline: float | None = None, max_size: int | None = None) -> tuple[int, dict]:
        """Read one message; return ``(kind, body)`` with the body's fields checked.

        Raises:
            ProtocolError: not a flarelite Client API message, over the size limit, or malformed.
            TransportClosed: the peer closed the connection (or ``close`` was called).
            TransportTimeout: ``deadline`` (a ``time.monotonic()`` value) passed before a whole message came.
        """
        limit = min(self.max_message_size, max_size or self.max_message_size)
        magic, version, kind, _, meta_len, count, buf_total = _PREFIX.unpack(self._read(_PREFIX.size, deadline))
        name = NAMES.get(kind)
        if magic != MAGIC:
            raise ProtocolError(f"{self.peer} sent {bytes(magic)!r}, not a flarelite Client API message")
        if version != VERSION:
            raise ProtocolError(f"{self.peer} speaks Client API channel version {version}, this site {VERSION}")
        if name is None:
            raise ProtocolError(f"{self.peer} sent an unknown message kind {kind}")
        size = _PREFIX.size + 8 * count + meta_len + buf_total
        if size > limit:
            raise ProtocolError(f"{name} message from {self.peer} announces {size} bytes, over the limit of {limit}")
        if meta_len == 0 or meta_len > MAX_META_BYTES:
            raise ProtocolError(f"{name} message from {self.peer} has a meta of {meta_len} bytes")
        if count > max_buffers(meta_len):
            raise ProtocolError(f"{name} message from {self.peer} announces {count} buffers for {meta_len} meta bytes")
        lengths = struct.unpack(f"<{count}Q", self._read(8 * count, deadline)) if count else ()
        if sum(lengths) != buf_total:
            raise ProtocolError(f"{name} message from {self.peer}: buffer lengths do not add up to {buf_total}")
        meta = self._read(meta_len, deadline)
        buffers = [self._read(n, deadline) for n in lengths]
        try:
            body = decode(meta, buffers, max_meta=meta_len)
        except CodecError as exc:
            raise ProtocolError(f"malformed {name} message from {self.peer}: {exc}") from exc
        check_body(kind, body, self.peer)
        return kind, body

    def close(self) -> None:
        """Close the socket (a reader blocked in ``recv`` gets TransportClosed)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def check_body(kind: int, body: Any, peer: str) -> None:
    """Raise ProtocolError unless ``body`` is a dict with the fields (and types) message ``kind`` needs."""
    name = NAMES.get(kind, str(kind))
    if not isinstance(body, dict):
        raise ProtocolError(f"{name} message from {peer} holds {type(body).__name__}, not a dict")
    for field, types in _FIELDS[kind].items():
        value = body.get(field)
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ProtocolError(f"{name} message from {peer}: field {field!r} must be {expected}, got {value!r:.80}")
