"""EndpointCore: what both roles of the gRPC endpoint share: its state, reading frames off a connection (deliver
them here, or relay them to another connection when this is the server), and direct peer connections.

The roles build on it: ``listening.py`` accepts connections (the server; a site with direct_p2p),
``dialing.py`` connects to the server and to peers, and ``endpoint.py`` puts them together as
GrpcCommunicationProtocol. Everything here runs on the endpoint's event loop thread unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ... import logsafe
from ...errors import ConfigError, ProtocolError
from ..addresses import check_address
from ..planes import check_data_plane
from ..protocol import CommunicationProtocol, Frame, FrameHandler, PeerHandler
from ..sizes import max_message_size as check_max_message_size
from . import flarelite_pb2 as pb
from .connection import CHUNK_OVERHEAD, Connection, Outgoing, header_cost
from .tls import TLSConfig
from .wire import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_BUFFERS,
    Assembly,
    ChunkCursor,
    Inbound,
    Skip,
    body_size,
    check_header,
    header_from_proto,
    header_problem,
)

_log = logging.getLogger("flarelite.grpc")
_DISCARD = object()


DEFAULT_RELAY_WINDOW = 8 << 20  # bytes a client may have in the relay per target (and queue per destination)
DEFAULT_MAX_OPEN_FRAMES = 256  # frames one connection may have started and not finished, delivered here


class _Relay(ChunkCursor):
    """A frame passing through the server: who sends it, where its chunks go (``out`` None: dropped, only
    credited), and where its next chunk must go, so that a chunk that breaks its announced sizes is refused here
    and never reaches (and disconnects) the destination."""

    __slots__ = ("source", "dest", "out", "stream", "target")

    def __init__(self, source: Connection, dest: Connection | None, out: Outgoing | None, h: pb.Header) -> None:
        super().__init__(h)
        self.source, self.dest, self.out, self.stream, self.target = source, dest, out, h.stream, h.target


class EndpointCore(CommunicationProtocol):
    """State and frame handling of one gRPC endpoint (see GrpcCommunicationProtocol for the parameters)."""

    def __init__(
        self,
        address: str,
        *,
        listen: str | None = None,
        server: str | None = None,
        tls: TLSConfig | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 10.0,
        connect_timeout: float = 60.0,
        direct_p2p: bool = False,
        p2p_listen: str | None = None,
        p2p_advertise: str | None = None,
        relay_window: int = DEFAULT_RELAY_WINDOW,
        max_open_frames: int = DEFAULT_MAX_OPEN_FRAMES,
        max_pending_bytes: int | None = None,
        data_plane: str = "auto",
    ) -> None:
        super().__init__(address)
        self.data_plane = check_data_plane(data_plane)
        if (listen is None) == (server is None):
            raise ConfigError(f"{self!r}: give listen= (the server) or server= (a client), exactly one of them")
        if listen is not None:
            check_address(listen, f"{address}: the address to listen on", listening=True)
        if server is not None:
            check_address(server, f"{address}: the server address", listening=False)
        if p2p_listen is not None:
            check_address(p2p_listen, f"{address}: the p2p listen address", listening=True)
        if p2p_advertise is not None:
            check_address(p2p_advertise, f"{address}: the p2p advertised address", listening=False)
        if not (64 << 10) <= chunk_size <= (4 << 20):
            raise ConfigError(f"chunk_size must be between 64 KiB and 4 MiB, got {chunk_size}")
        max_message_size = check_max_message_size(max_message_size)
        for option, value in (("max_open_frames", max_open_frames), ("max_pending_bytes", max_pending_bytes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{option} must be a positive int, got {value!r}")
        self.max_open_frames = max_open_frames  # per connection, frames being received for this endpoint
        # per connection, bytes announced by those frames (what they can come to hold)
        self.max_pending_bytes = max_pending_bytes if max_pending_bytes is not None else 4 * max_message_size
        self._refusal_log = logsafe.RateLimit()  # one line per sender every 10 s about refused frames
        if direct_p2p and listen is not None:
            raise ConfigError(f"{self!r}: direct_p2p is for client sites (server=...), not the server")
        self.direct_p2p = direct_p2p
        if direct_p2p and p2p_listen is None:
            assert server is not None
            p2p_listen = (
                f"unix://{os.path.dirname(server[len('unix://') :])}/{address}.sock"
                if server.startswith("unix://")
                else "127.0.0.1:0"
            )
        self.p2p_advertise = p2p_advertise
        self.listen = listen if listen is not None else p2p_listen
        self.server_address = server
        self.tls = tls or TLSConfig("clear")
        self.max_message_size = max_message_size
        self.chunk_size = chunk_size
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        if relay_window < chunk_size:
            raise ConfigError(f"relay_window must be at least chunk_size ({chunk_size} bytes), got {relay_window}")
        self.relay_window = relay_window  # per destination: relayed bytes in flight, and bytes send() queues
        self._room = threading.Condition(threading.Lock())  # send() waits here for its destination's queue
        self._room_waiters = 0  # senders waiting on _room (it is notified only when there are some)
        self._queued: dict[str, int] = {}  # bytes queued (copied, not yet written) per destination
        self.bound: str | None = None
        self._on_frame: FrameHandler | None = None
        self._on_peer: PeerHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._conns: dict[str, Connection] = {}  # server: clients by name; client: {server name: connection}
        self._peers: set[str] = set()  # client: the sites connected to the server, as the server told us
        self._addresses: dict[str, str] = {}  # direct addresses of sites (server: all; client: its peers)
        self._dialing: set[str] = set()
        self._server_name = "server"
        self._remote_max = max_message_size
        self._streams = itertools.count(1)
        self._grpc_server: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping: asyncio.Event | None = None
        self._data: dict[str, Any] = {}  # data channels by peer (data_routes.py)
        self._data_offers: dict[str, Any] = {}  # channels offered or being opened, by peer
        self._data_lock = threading.Lock()
        self._data_listener: Any = None
        self._blob_relay: Any = None  # the server's relay of blobs between channels (data_relay.py)

    @property
    def is_server(self) -> bool:
        """True for the server endpoint (the one that relays)."""
        return self.server_address is None

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish(self, ending: Any) -> None:
        """Run ``ending`` (what a connection does once it is over) to its end, even if the task awaiting it is
        cancelled meanwhile: gRPC cancels a stream's handler as soon as its RPC is over, which may be while the
        handler still drains the connection's data channel; cut short there, the connection would never be
        dropped, nor its peer reported gone, and a run would wait for a dead site forever."""
        await asyncio.shield(self._spawn(ending))

    def _grpc_options(self) -> list[tuple[str, Any]]:
        limit = 2 * self.chunk_size + (1 << 20)
        return [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.so_reuseport", 0),
            # a site started before its server (the simulator starts them together) connects as soon as the
            # server listens: gRPC's own reconnect backoff starts at 1 s and grows, ours stays short
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]

    # receiving (both roles) --------------------------------------------------------------------------
    def _deliver(self, frame: Frame) -> None:
        try:
            assert self._on_frame is not None
            self._on_frame(frame)
        except Exception:
            _log.exception("%s: frame handler failed on a %s frame from %s", self.address, frame.kind, frame.sender)

    def _peer_event(self, name: str, connected: bool) -> None:
        if self._on_peer is None:
            return
        try:
            self._on_peer(name, connected)
        except Exception:
            _log.exception("%s: peer handler failed for %s", self.address, name)

    async def _read_frames(self, conn: Connection, read: Callable[[], Any]) -> None:
        """Read envelopes from ``conn`` until it ends: deliver our frames, relay the others (server)."""
        pending = conn.pending = Inbound()  # freed at once when the stream ends (see the finally)
        failure = ""
        try:
            while not conn.closed:
                env = await read()
                if env is grpc.aio.EOF or env is None:
                    conn.close(f"{conn.name} ended the stream")
                    return
                conn.last_received = time.monotonic()
                body = env.WhichOneof("body")
                if body == "chunk":
                    await self._on_chunk(conn, env, pending)
                elif body == "header":
                    await self._on_header(conn, env, pending)
                elif body == "heartbeat":
                    continue
                elif body == "credit":
                    if conn.stamp_sender:  # only the server (the relay) gives credit
                        raise ProtocolError(f"{conn.name} sent a credit (only the server's relay does)")
                    conn.on_credit(env.credit.target, env.credit.bytes)
                elif body == "cancel":
                    self._on_cancel(conn, env, pending)
                elif body == "peer":
                    if conn.stamp_sender:  # only the server's connection to a client announces peers
                        _log.warning(
                            "%s: ignored a peer event from %s (only the server announces sites)",
                            self.address,
                            conn.name,
                        )
                        continue
                    if not env.peer.connected:  # what waits here to go to it never will
                        conn.fail_target(env.peer.name, f"{env.peer.name} left")
                    self._on_peer_envelope(env.peer)
                elif body == "close":
                    conn.close(f"{conn.name} closed the connection: {env.close.reason}")
                    return
                elif body == "switch":
                    self._on_switch(conn, pending)
                else:
                    raise ProtocolError(f"unexpected {body!r} envelope from {conn.name}")
        except ProtocolError as exc:
            failure = str(exc)
        finally:
            self._end_relays(conn, pending)
        # raised afresh, outside the except: its traceback and context hold neither the envelope (which may hold
        # megabytes) nor the frames it came through; the connection's owner keeps the error a while
        if failure:
            env = None  # noqa: F841 (this frame stays in the traceback: not the envelope)
            raise ProtocolError(failure)

    async def _on_header(self, conn: Connection, env: pb.Envelope, pending: Inbound) -> None:
        h = env.header
        if h.stream in pending:
            raise ProtocolError(f"{conn.name} reused stream id {h.stream} before finishing it")
        try:
            check_header(h)
        except ProtocolError as exc:
            raise ProtocolError(f"{conn.name}: {exc}") from None
        if h.blob and h.target != self.address:
            if not self.is_server:
                raise ProtocolError(f"{conn.name} sent a frame for {h.target!r} with its buffers on the data channel")
            h.sender = conn.name  # the authenticated identity, not the claim
            self._relay_blob_header(conn, h)  # its buffers pass through on the data channels (data_relay.py)
            return
        size = body_size(h)
        chunked = bool(h.buffer_sizes) or h.meta_size > 0
        if h.target != self.address:
            if self.is_server:
                await self._relay_header(conn, env, size, chunked, pending)
                return
            raise ProtocolError(f"{conn.name} sent {self.address} a frame for {h.target!r}")
        if conn.stamp_sender:
            h.sender = conn.name  # the authenticated identity, not the claim
        if h.blob:  # its buffers come on the data channel (data_routes.py)
            await self._on_blob_header(conn, h)
            return
        problem = header_problem(h, self.max_message_size) or (self._over_cap(h, size, pending) if chunked else "")
        if problem:
            self._refuse(conn, header_from_proto(h), problem, h.stream, size - len(h.meta) if chunked else 0, pending)
            return
        if not chunked:  # the whole frame is in its header
            self._deliver(header_from_proto(h))
            return
        assembly = Assembly(h)
        if assembly.complete:  # nothing to wait for (no buffers, or only empty ones)
            self._deliver(assembly.finish())
            return
        pending[h.stream] = assembly

    def _over_cap(self, h: pb.Header, size: int, pending: Inbound) -> str:
        """Why one more frame of ``size`` bytes from this connection may not be received now ('' if it may)."""
        if pending.frames >= self.max_open_frames:
            return (
                f"{self.address} is already receiving {pending.frames} unfinished frames from this sender, the limit "
                "(max_open_frames); send fewer messages at once or raise the receiver's max_open_frames"
            )
        if pending.nbytes + size > self.max_pending_bytes:
            return (
                f"a {size}-byte message on top of {pending.nbytes} bytes announced by unfinished frames exceeds the "
                f"limit of {self.max_pending_bytes} bytes (max_pending_bytes); send less at once or raise it"
            )
        if pending.nbuffers + len(h.buffer_sizes) > 4 * MAX_BUFFERS:
            return (
                f"{pending.nbuffers} buffers of unfinished frames from this sender are pending, the limit is "
                f"{4 * MAX_BUFFERS}; send fewer arrays per message"
            )
        return ""

    def _refuse(
        self, conn: Connection, frame: Frame, problem: str, stream: int, remaining: int, pending: Inbound
    ) -> None:
        """Deliver ``frame``'s header with ``error`` and no body (the runtime answers the sender with an error);
        its ``remaining`` bytes on ``stream`` are skipped as they come."""
        self._log_refusal(conn, frame.kind, problem)
        frame.meta, frame.buffers, frame.error = b"", [], problem
        self._deliver(frame)
        if remaining > 0:
            if pending.skipped >= self.max_open_frames:
                raise ProtocolError(
                    f"{conn.name} keeps {pending.skipped} refused frames unfinished (it neither sends their chunks "
                    "nor cancels them); closing its connection"
                )
            pending[stream] = Skip(remaining)

    def _log_refusal(self, conn: Connection, kind: str, problem: str) -> None:
        """One log line per sender every few seconds, however many frames it gets refused."""
        allowed = self._refusal_log.check(conn.name)
        if allowed is None:
            return
        since = allowed[0]
        more = f" ({since} more refused since the last report)" if since else ""
        _log.error("%s: refused the body of a %s frame from %s: %s%s", self.address, kind, conn.name, problem, more)

    async def _on_chunk(self, conn: Connection, env: pb.Envelope, pending: Inbound) -> None:
        chunk = env.chunk
        state = pending.get(chunk.stream)
        if state is None:
            raise ProtocolError(f"{conn.name} sent a chunk for unknown stream {chunk.stream}")
        if state is _DISCARD:
            return
        if isinstance(state, _Relay):
            await self._relay_chunk(env, state, pending, chunk.stream)
            return
        if type(state) is Skip:
            if state.add(chunk):
                del pending[chunk.stream]
            return
        try:
            state.add(chunk)
        except ValueError as exc:
            raise ProtocolError(f"{conn.name}: {exc} (stream {chunk.stream})") from None
        except MemoryError as exc:
            remaining = state.remaining  # the chunk that found no memory is counted in already
            del pending[chunk.stream]  # frees what it held
            self._refuse(conn, state.frame, str(exc), chunk.stream, remaining, pending)
            if conn.gate_streams:
                self._gate_passed(conn, chunk.stream)
            return
        if state.complete:
            frame = state.finish()
            del pending[chunk.stream]
            self._deliver(frame)
            if conn.gate_streams:
                self._gate_passed(conn, chunk.stream)

    def _on_peer_envelope(self, event: pb.PeerEvent) -> None:
        """A site joined or left (told by the server); dialing.py handles it."""
        raise NotImplementedError

    async def _on_blob_header(self, conn: Connection, h: pb.Header) -> None:
        """A header whose buffers come on the data channel; data_routes.py handles it."""
        raise NotImplementedError

    def _on_switch(self, conn: Connection, pending: Inbound) -> None:
        """The peer's frames take its data channel from here on; data_routes.py handles it."""
        raise NotImplementedError

    def _gate_passed(self, conn: Connection, stream: int) -> None:
        """Frame ``stream`` of ``conn`` is delivered or gone (the data channel's gate); data_routes.py."""
        raise NotImplementedError

    async def _drop_data(self, name: str, conn: Connection) -> None:
        """``conn`` ended, and with it its data channel; data_routes.py handles it."""
        raise NotImplementedError

    def _relay_blob_header(self, conn: Connection, h: pb.Header) -> None:
        """The header of a frame whose buffers ``conn`` relays through its data channel; data_routes.py."""
        raise NotImplementedError

    # relaying (server) -------------------------------------------------------------------------------
    # Flow control is per (source, target): a source may have ``relay_window`` bytes received here and not yet
    # written to the target; each relayed envelope is credited back to the source once written (or dropped).
    # The server never stops reading a source: a slow target slows only what goes to it. A source that sends
    # beyond its window ignores the protocol: its connection is closed (ProtocolError, logged once).
    def _relay_admit(self, source: Connection, target: str, cost: int) -> None:
        """Count ``cost`` more bytes from ``source`` for ``target`` in the relay (the loop, or the reader thread of
        ``source``'s data channel for a relayed blob's chunks)."""
        with source.relay_lock:
            held = source.relay_held.get(target, 0)
            if held and held + cost > self.relay_window:
                raise ProtocolError(
                    f"{source.name} sent {cost} more bytes for {target} with {held} bytes already in the relay, over "
                    f"its relay window of {self.relay_window} bytes (it does not wait for Credit)"
                )
            source.relay_held[target] = held + cost

    async def _relay_header(self, conn: Connection, env: pb.Envelope, size: int, chunked: bool, pending: dict) -> None:
        env.DiscardUnknownFields()  # what the window counts is what goes out
        h = env.header
        target = h.target
        cost = header_cost(env)
        conn.credit_batch = self.relay_window >> 2
        self._relay_admit(conn, target, cost)
        h.sender = conn.name
        dest = self._conns.get(target)
        if dest is None or dest.closed:
            _log.warning("%s: dropped a %s frame from %s to %r: not connected", self.address, h.kind, conn.name, target)
            conn.credit(target, cost)
            if chunked:
                pending[h.stream] = _Relay(conn, None, None, h)
            return
        source_stream = h.stream
        h.stream = next(self._streams)  # unique on every connection (the server's own frames count from it too)
        if size > self.max_message_size:
            h.error = f"a {size}-byte message exceeds the relay's limit of {self.max_message_size} bytes"
            _log.error(
                "%s: refused to relay a %s frame from %s to %s: %s", self.address, h.kind, conn.name, target, h.error
            )
            if chunked:  # its chunks are checked, credited and dropped
                pending[source_stream] = _Relay(conn, None, None, h)
            h.meta, h.meta_size = b"", 0
            del h.buffer_sizes[:]
            dest.enqueue(Outgoing.of([(env, cost)], target=target, source=conn))
            return
        if size - len(h.meta) == 0:  # no chunk will follow (no buffers, or only empty ones)
            dest.enqueue(Outgoing.of([(env, cost)], target=target, source=conn))  # the envelope, re-stamped
            return
        if len(pending) >= 3 * self.max_open_frames:  # local frames and refused ones are capped at 1x each
            raise ProtocolError(
                f"{conn.name} has {len(pending)} frames unfinished (it starts frames and does not end them)"
            )
        out = Outgoing(target=target, stream=h.stream, source=conn)
        out.atomic = size <= self.chunk_size
        out.pushed.append((env, cost))
        relay = _Relay(conn, dest, out, h)
        pending[source_stream] = relay
        dest.enqueue(out)

    async def _relay_chunk(self, env: pb.Envelope, relay: _Relay, pending: dict, source_stream: int) -> None:
        chunk = env.chunk
        n = len(chunk.data)
        cost = n + CHUNK_OVERHEAD
        source = relay.source
        self._relay_admit(source, relay.target, cost)
        try:
            relay.advance(chunk)
        except ValueError as exc:
            raise ProtocolError(f"{source.name}: {exc} (stream {source_stream}, to {relay.target})") from exc
        complete = relay.complete
        if complete:
            del pending[source_stream]
        out = relay.out
        if out is None or out.finished or relay.dest is None or relay.dest.closed:
            source.credit(relay.target, cost)  # dropped
            return
        env.DiscardUnknownFields()
        chunk.stream = relay.stream
        out.pushed.append((env, cost))
        if complete:
            out.open_for_push = False
        relay.dest.pushed(out)

    def _on_cancel(self, conn: Connection, env: pb.Envelope, pending: dict) -> None:
        """The sender gave up on a frame: free what is held of it; a relayed one is cancelled at its target."""
        state = pending.pop(env.cancel.stream, None)  # an assembly being filled here is dropped with it
        if conn.gate_streams:
            self._gate_passed(conn, env.cancel.stream)
        if isinstance(state, _Relay) and state.out is not None and state.dest is not None:
            state.dest.cancel(state.out, f"{conn.name} gave up on it: {env.cancel.reason}")

    def _end_relays(self, conn: Connection, pending: dict) -> None:
        """``conn``'s stream ended: cancel its relayed frames that were still coming, at their targets."""
        for state in pending.values():
            if isinstance(state, _Relay) and state.out is not None and state.dest is not None:
                state.dest.cancel(state.out, f"{conn.name} disconnected before the frame was complete")
        pending.clear()

    # direct peer connections (client role, direct_p2p) ------------------------------------------------
    def _via_server(self, name: str) -> Callable[[Outgoing], bool]:
        """Reroute a frame that a broken direct connection to ``name`` never started onto the relay."""

        def reroute(out: Outgoing) -> bool:
            first = out.pushed[0][0] if out.pushed else None
            if first is not None and first.WhichOneof("body") == "header" and first.header.blob:
                return False  # its buffers went on the direct connection's data channel: the relay cannot have them
            conn = self._conns.get(self._server_name)
            if conn is None or conn.closed or not self._running or name not in self._peers:
                return False  # no relay, or the peer is gone: the frame fails
            conn.enqueue(out)
            return True

        return reroute

    async def _run_direct(self, conn: Connection, read: Callable[[], Any]) -> None:
        writer = self._spawn(conn.run_writer())
        beat = self._spawn(conn.run_heartbeat(self.heartbeat_timeout))
        try:
            await conn.until_closed(self._read_frames(conn, read))
        except (ProtocolError, grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            conn.close(repr(exc))
        finally:
            conn.close(conn.close_reason or "direct connection ended")
            writer.cancel()
            beat.cancel()
            await self._finish(self._end_direct(conn))

    async def _end_direct(self, conn: Connection) -> None:
        await self._drop_data(conn.name, conn)
        if self._conns.get(conn.name) is conn:
            del self._conns[conn.name]
        _log.info("%s: direct connection to %s ended (%s)", self.address, conn.name, conn.close_reason)
