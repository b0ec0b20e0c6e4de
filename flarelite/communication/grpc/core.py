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

from ...errors import ConfigError, ProtocolError
from ..protocol import CommunicationProtocol, Frame, FrameHandler, PeerHandler
from . import flarelite_pb2 as pb
from .connection import RELAY_WINDOW, Connection, Outgoing
from .tls import TLSConfig
from .wire import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    Assembly,
    body_size,
    header_from_proto,
)

_log = logging.getLogger("flarelite.grpc")
_DISCARD = object()


class _Relay:
    """A frame passing through the server: where its chunks go and how many bytes are still due."""

    def __init__(self, dest: Connection, out: Outgoing, stream: int, remaining: int) -> None:
        self.dest, self.out, self.stream, self.remaining = dest, out, stream, remaining


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
    ) -> None:
        super().__init__(address)
        if (listen is None) == (server is None):
            raise ConfigError(f"{self!r}: give listen= (the server) or server= (a client), exactly one of them")
        if not (64 << 10) <= chunk_size <= (4 << 20):
            raise ConfigError(f"chunk_size must be between 64 KiB and 4 MiB, got {chunk_size}")
        if max_message_size < 1:
            raise ConfigError(f"max_message_size must be positive, got {max_message_size}")
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

    @property
    def is_server(self) -> bool:
        """True for the server endpoint (the one that relays)."""
        return self.server_address is None

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        pending: dict[int, Any] = {}
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
            elif body == "peer":
                if conn.stamp_sender:  # only the server's connection to a client announces peers
                    _log.warning(
                        "%s: ignored a peer event from %s (only the server announces sites)", self.address, conn.name
                    )
                    continue
                self._on_peer_envelope(env.peer)
            elif body == "close":
                conn.close(f"{conn.name} closed the connection: {env.close.reason}")
                return
            else:
                raise ProtocolError(f"unexpected {body!r} envelope from {conn.name}")

    async def _on_header(self, conn: Connection, env: pb.Envelope, pending: dict[int, Any]) -> None:
        h = env.header
        if h.stream in pending:
            raise ProtocolError(f"{conn.name} reused stream id {h.stream} before finishing it")
        size = body_size(h)
        chunked = bool(h.buffer_sizes) or h.meta_size > 0
        if h.target != self.address:
            if self.is_server:
                await self._relay_header(conn, env, size, chunked, pending)
                return
            raise ProtocolError(f"{conn.name} sent {self.address} a frame for {h.target!r}")
        if conn.stamp_sender:
            h.sender = conn.name  # the authenticated identity, not the claim
        if size > self.max_message_size:
            frame = header_from_proto(h)
            frame.meta, frame.error = b"", f"a {size}-byte message exceeds the limit of {self.max_message_size} bytes"
            _log.error("%s: refused the body of a %s frame from %s: %s", self.address, h.kind, h.sender, frame.error)
            self._deliver(frame)
            if chunked:
                pending[h.stream] = _DISCARD
            return
        if not chunked:  # the whole frame is in its header
            self._deliver(header_from_proto(h))
            return
        assembly = Assembly(h)
        if assembly.complete:  # nothing to wait for (no buffers, or only empty ones)
            self._deliver(assembly.finish())
            return
        pending[h.stream] = assembly

    async def _on_chunk(self, conn: Connection, env: pb.Envelope, pending: dict[int, Any]) -> None:
        chunk = env.chunk
        state = pending.get(chunk.stream)
        if state is None:
            raise ProtocolError(f"{conn.name} sent a chunk for unknown stream {chunk.stream}")
        if state is _DISCARD:
            return
        if isinstance(state, _Relay):
            await self._relay_chunk(env, state, pending, chunk.stream)
            return
        try:
            state.add(chunk)
        except ValueError as exc:
            raise ProtocolError(f"{conn.name}: {exc}") from exc
        if state.complete:
            del pending[chunk.stream]
            self._deliver(state.finish())

    def _on_peer_envelope(self, event: pb.PeerEvent) -> None:
        """A site joined or left (told by the server); dialing.py handles it."""
        raise NotImplementedError

    # relaying (server) -------------------------------------------------------------------------------
    async def _relay_header(self, conn: Connection, env: pb.Envelope, size: int, chunked: bool, pending: dict) -> None:
        h = env.header
        h.sender = conn.name
        dest = self._conns.get(h.target)
        if dest is None or dest.closed:
            _log.warning(
                "%s: dropped a %s frame from %s to %r: not connected", self.address, h.kind, conn.name, h.target
            )
            if chunked:
                pending[h.stream] = _DISCARD
            return
        source_stream = h.stream
        h.stream = dest.new_stream()
        if size > self.max_message_size:
            h.error = f"a {size}-byte message exceeds the relay's limit of {self.max_message_size} bytes"
            h.meta, h.meta_size = b"", 0
            del h.buffer_sizes[:]
            _log.error(
                "%s: refused to relay a %s frame from %s to %s: %s", self.address, h.kind, conn.name, h.target, h.error
            )
            dest.enqueue(Outgoing(iter([pb.Envelope(header=h)])))
            if chunked:
                pending[source_stream] = _DISCARD
            return
        if size - len(h.meta) == 0:  # no chunk will follow (no buffers, or only empty ones)
            dest.enqueue(env)  # the envelope as received, re-stamped
            return
        out = Outgoing()
        out.pushed.append(pb.Envelope(header=h))
        pending[source_stream] = _Relay(dest, out, h.stream, size - len(h.meta))
        dest.enqueue(out)

    async def _relay_chunk(self, env: pb.Envelope, relay: _Relay, pending: dict, source_stream: int) -> None:
        relay.remaining -= len(env.chunk.data)
        env.chunk.stream = relay.stream
        out = relay.out
        if relay.dest.closed:
            if relay.remaining <= 0:
                del pending[source_stream]
            return
        out.pushed.append(env)
        if relay.remaining <= 0:
            del pending[source_stream]
            out.open_for_push = False
        relay.dest.pushed(out)
        if len(out.pushed) >= RELAY_WINDOW:
            out.space.clear()
            await out.space.wait()  # the destination is slower: stop reading from the source for now

    # direct peer connections (client role, direct_p2p) ------------------------------------------------
    def _via_server(self, name: str) -> Callable[[Outgoing], bool]:
        """Reroute a frame that a broken direct connection to ``name`` never started onto the relay."""

        def reroute(out: Outgoing) -> bool:
            conn = self._conns.get(self._server_name)
            if conn is None or conn.closed or not self._running:
                return False
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
            if self._conns.get(conn.name) is conn:
                del self._conns[conn.name]
            _log.info("%s: direct connection to %s ended (%s)", self.address, conn.name, conn.close_reason)
