"""GrpcCommunicationProtocol: the CommunicationProtocol over gRPC (TCP ``host:port`` or ``unix:///path``).

One endpoint listens (the server, ``listen=``); the others connect to it (``server=``) and keep one
bidirectional stream each. Frames between clients travel through the server, which relays them chunk by chunk
and stamps the sender with the identity it authenticated. gRPC runs on an asyncio loop in a thread of its own;
``send`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ...errors import ConfigError, ConnectError, ProtocolError, TransportClosed
from ..protocol import CommunicationProtocol, Frame, FrameHandler, PeerHandler
from . import flarelite_pb2 as pb
from . import flarelite_pb2_grpc as pb_grpc
from .connection import RELAY_WINDOW, Connection, Outgoing
from .tls import TLSConfig, channel_credentials, channel_options, peer_identity, server_credentials
from .wire import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    WIRE_VERSION,
    Assembly,
    body_size,
    envelopes_of,
    frame_size,
    header_from_proto,
    header_to_proto,
)

_log = logging.getLogger("flarelite.grpc")
_DISCARD = object()


class _Relay:
    """A frame passing through the server: where its chunks go and how many bytes are still due."""

    def __init__(self, dest: Connection, out: Outgoing, stream: int, remaining: int) -> None:
        self.dest, self.out, self.stream, self.remaining = dest, out, stream, remaining


class GrpcCommunicationProtocol(CommunicationProtocol):
    """A site's gRPC endpoint named ``address``; give ``listen`` (server) or ``server`` (client), not both.

    Parameters:
        address: this site's name (``"server"``, ``"site-1"``...).
        listen: where the server listens: ``"host:port"`` (port 0 picks a free port, see ``bound``) or
            ``"unix:///abs/path.sock"``.
        server: where a client connects: the server's ``listen`` address (``"127.0.0.1:8002"``...).
        tls: a TLSConfig (clear, tls or mtls); default clear.
        max_message_size: the largest frame body accepted on receive (bytes).
        chunk_size: size of the pieces large buffers travel in (1-4 MiB).
        heartbeat_interval, heartbeat_timeout: liveness; a silent peer is dropped after ``heartbeat_timeout``.
        connect_timeout: how long a client's ``start`` keeps trying to reach the server.
        direct_p2p: a client also listens (``p2p_listen``) and talks to peers over direct connections,
            falling back to the server's relay when a direct connection cannot be made or breaks.
        p2p_listen: where such a client listens (default: next to the server's Unix socket, or 127.0.0.1:0).
        p2p_advertise: the address peers should dial (default: the bound ``p2p_listen`` address).
    """

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

    # lifecycle ---------------------------------------------------------------------------------------
    @property
    def is_server(self) -> bool:
        """True for the server endpoint (the one that relays)."""
        return self.server_address is None

    def start(self, on_frame: FrameHandler, on_peer: PeerHandler | None = None) -> None:
        """Listen (server) or connect to the server (client; retries up to ``connect_timeout``)."""
        if self._running:
            raise RuntimeError(f"{self!r} is already started")
        self._on_frame, self._on_peer = on_frame, on_peer
        if self.is_server:
            self.tls.check_server()
        else:
            self.tls.check_client()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name=f"{self.address}-grpc", daemon=True)
        self._thread.start()
        ready.wait()
        self._running = True
        coro = self._serve() if self.is_server else self._start_client()
        try:
            asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.connect_timeout + 5)
        except BaseException:
            self._running = False
            self._stop_loop()
            raise

    def _run_loop(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._stopping = asyncio.Event()
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        """Say goodbye to the peers and close every connection."""
        if not self._running:
            return
        self._running = False
        assert self._loop is not None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception as exc:  # shutting down anyway
            _log.debug("%s: error while stopping: %r", self.address, exc)
        self._stop_loop()

    def _stop_loop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        if not loop.is_running():
            loop.close()

    async def _shutdown(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for conn in list(self._conns.values()):
            conn.enqueue(Outgoing(iter([pb.Envelope(close=pb.Close(reason=f"{self.address} is stopping"))])))
        await asyncio.sleep(0.05)  # let the goodbyes go out
        for conn in list(self._conns.values()):
            conn.close(f"{self.address} stopped")
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=0.5)
        for task in list(self._tasks):
            task.cancel()

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

    # sending -----------------------------------------------------------------------------------------
    def send(self, target: str, frame: Frame) -> None:
        """Send ``frame`` to ``target``; large frames block until written (the buffers are then free)."""
        if not self._running:
            raise TransportClosed(f"{self!r} is stopped; cannot send {frame.kind} to {target!r}")
        size = frame_size(frame)
        limit = min(self.max_message_size, self._remote_max)
        if size > limit:
            raise ProtocolError(
                f"{frame.kind} frame to {target!r} is {size} bytes, over the limit of {limit} bytes "
                "(max_message_size); send less data per message"
            )
        assert self._loop is not None
        on_loop = threading.current_thread() is self._thread
        if target == self.address:
            copy = dataclasses.replace(
                frame, sender=self.address, target=target, buffers=[bytearray(b) for b in frame.buffers]
            )
            self._loop.call_soon_threadsafe(self._deliver, copy)
            return
        conn = self._route(target)
        stream = next(self._streams)
        if not frame.buffers and len(frame.meta) <= self.chunk_size:  # one envelope: build it now, queue, return
            env = header_to_proto(frame, stream, self.chunk_size, sender=self.address, target=target)
            if on_loop:
                conn.enqueue(env)
            else:
                self._loop.call_soon_threadsafe(conn.enqueue, env)
            return
        out_frame = dataclasses.replace(frame, sender=self.address, target=target)
        if size <= self.chunk_size:  # small: encode now (copies), queue, return
            out = Outgoing(iter(list(envelopes_of(out_frame, stream, self.chunk_size))))
            self._loop.call_soon_threadsafe(conn.enqueue, out)
            return
        done = threading.Event()
        out = Outgoing(envelopes_of(out_frame, stream, self.chunk_size), done)
        self._loop.call_soon_threadsafe(conn.enqueue, out)
        if on_loop:
            return  # on the loop itself: cannot wait (the runtime never sends large frames from a callback)
        while not done.wait(1.0):
            if not self._running:
                raise TransportClosed(f"{self!r} stopped while sending to {target!r}")
        if out.error:
            raise TransportClosed(f"{frame.kind} frame to {target!r} not sent: {out.error}")

    def _route(self, target: str) -> Connection:
        if self.is_server:
            conn = self._conns.get(target)
            if conn is None or conn.closed:
                raise ConnectError(f"{target!r} is not connected to {self.address}")
            return conn
        conn = self._conns.get(self._server_name)
        if conn is None or conn.closed:
            raise ConnectError(f"{self.address} is not connected to the server; cannot send to {target!r}")
        if target != self._server_name and target not in self._peers:
            raise ConnectError(f"{target!r} is not connected (sites connected now: {sorted(self._peers)})")
        direct = self._conns.get(target) if target != self._server_name else None
        return direct if direct is not None and not direct.closed else conn

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

    # server role -------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        server = grpc.aio.server(options=self._grpc_options())
        pb_grpc.add_TransportServicer_to_server(_Servicer(self), server)
        creds = server_credentials(self.tls)
        assert self.listen is not None
        try:
            port = server.add_secure_port(self.listen, creds) if creds else server.add_insecure_port(self.listen)
        except Exception as exc:
            raise ConnectError(f"{self.address} cannot listen on {self.listen!r}: {exc}") from exc
        if not self.listen.startswith("unix:"):
            if port == 0:
                raise ConnectError(f"{self.address} cannot listen on {self.listen!r} (address in use?)")
            host = self.listen.rsplit(":", 1)[0]
            self.bound = f"{host}:{port}"
        else:
            self.bound = self.listen
        await server.start()
        self._grpc_server = server
        _log.info("%s listening on %s (%s)", self.address, self.bound, self.tls.mode)

    async def _start_client(self) -> None:
        if self.direct_p2p:
            await self._serve()  # accept peers' direct connections first, then tell the server where
        await self._connect_first()

    async def _accept(self, context: Any) -> None:
        first = await asyncio.wait_for(context.read(), timeout=30)
        if first is grpc.aio.EOF or first.WhichOneof("body") != "hello":
            return
        name = first.hello.name
        if not self._running:
            return  # stopping: end the stream without a refusal, so the client tries again later
        refusal = self._check_hello(name, first.hello.version, context)
        if refusal:
            _log.warning("%s refused a connection claiming to be %r: %s", self.address, name, refusal)
            await context.write(pb.Envelope(refused=pb.Refused(reason=refusal)))
            return
        old = self._conns.get(name)
        if old is not None:
            old.close(f"{name} connected again")
        if not self.is_server:  # a peer's direct connection to this site
            conn = Connection(name, context.write, self.heartbeat_interval, reroute=self._via_server(name))
            self._conns[name] = conn
            await context.write(pb.Envelope(welcome=pb.Welcome(name=name, max_message_size=self.max_message_size)))
            await self._run_direct(conn, context.read)
            return
        conn = Connection(name, context.write, self.heartbeat_interval)
        # no await between listing the peers and joining them: every site learns of every other exactly once
        peers = [self.address, *[n for n, c in self._conns.items() if not c.closed and n != name]]
        if first.hello.p2p_address:
            self._addresses[name] = first.hello.p2p_address
        else:
            self._addresses.pop(name, None)
        addresses = {n: a for n, a in self._addresses.items() if n in peers}
        self._conns[name] = conn
        self._broadcast_peer(name, True)
        await context.write(
            pb.Envelope(
                welcome=pb.Welcome(name=name, peers=peers, max_message_size=self.max_message_size, addresses=addresses)
            )
        )
        self._peer_event(name, True)
        writer = self._spawn(conn.run_writer())  # what was queued for this site meanwhile goes after the welcome
        beat = self._spawn(conn.run_heartbeat(self.heartbeat_timeout))
        try:
            await conn.until_closed(self._read_frames(conn, context.read))
        except (ProtocolError, asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
            conn.close(f"{name}: {exc!r}")
            if isinstance(exc, ProtocolError):
                _log.error("%s: dropped %s: %s", self.address, name, exc)
        finally:
            conn.close(conn.close_reason or f"{name} disconnected")
            writer.cancel()
            beat.cancel()
            if self._conns.get(name) is conn:
                del self._conns[name]
                self._addresses.pop(name, None)
                self._broadcast_peer(name, False)
                self._peer_event(name, False)

    def _check_hello(self, name: str, version: int, context: Any) -> str:
        if version != WIRE_VERSION:
            return f"wire version {version} is not supported (this server speaks {WIRE_VERSION})"
        if not name or name == self.address or name.startswith("@"):
            return f"{name!r} is not a valid site name"
        if not self.is_server and name not in self._peers:
            return f"{name!r} is not a peer of {self.address} (the server has not announced it)"
        if self.tls.mode == "mtls":
            identity = peer_identity(context)
            if identity != name:
                return f"the client certificate is for {identity!r}, not {name!r}"
        return ""

    def _broadcast_peer(self, name: str, connected: bool) -> None:
        address = self._addresses.get(name, "") if connected else ""
        event = pb.PeerEvent(name=name, connected=connected, address=address)
        for other, conn in list(self._conns.items()):
            if other != name:
                conn.enqueue(Outgoing(iter([pb.Envelope(peer=event)])))

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

    def _maybe_dial(self, name: str, address: str) -> None:
        # one connection per pair: the site whose name sorts first dials, the other accepts
        if not self.direct_p2p or not address or name >= self.address or name in self._dialing:
            return
        existing = self._conns.get(name)
        if existing is not None and not existing.closed:
            return
        self._dialing.add(name)
        self._spawn(self._dial(name, address))

    async def _dial(self, name: str, address: str) -> None:
        creds = channel_credentials(self.tls)
        options = self._grpc_options() + channel_options(self.tls, server_name=name)
        channel = (
            grpc.aio.secure_channel(address, creds, options=options)
            if creds is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=5)
            call = pb_grpc.TransportStub(channel).Connect()
            await call.write(pb.Envelope(hello=pb.Hello(name=self.address, version=WIRE_VERSION)))
            first = await asyncio.wait_for(call.read(), timeout=5)
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                reason = first.refused.reason if first is not grpc.aio.EOF else "stream closed"
                raise ConnectionError(f"refused: {reason}")
        except Exception as exc:
            self._dialing.discard(name)
            await channel.close()
            _log.warning("%s: no direct connection to %s at %s (%r); using the relay", self.address, name, address, exc)
            return
        self._dialing.discard(name)
        conn = Connection(name, call.write, self.heartbeat_interval, reroute=self._via_server(name))
        self._conns[name] = conn
        try:
            await self._run_direct(conn, call.read)
        finally:
            call.cancel()
            await channel.close()

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

    # client role -------------------------------------------------------------------------------------
    async def _connect_first(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        while True:
            try:
                await self._connect_once(max(0.2, min(5.0, deadline - time.monotonic())))
                break
            except ConnectError:
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    hint = (
                        f" (security mode {self.tls.mode}: check that the server uses the same mode, that its "
                        "certificate and this site's come from the same project CA, and that the server's "
                        "certificate names it)"
                        if self.tls.mode != "clear"
                        else " (is the server running there, and not expecting TLS?)"
                    )
                    raise ConnectError(
                        f"{self.address} could not reach the server at {self.server_address} within "
                        f"{self.connect_timeout}s: {exc!r}{hint}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def _connect_once(self, timeout: float = 5.0) -> None:
        assert self.server_address is not None
        creds = channel_credentials(self.tls)
        options = self._grpc_options() + channel_options(self.tls)
        if creds is not None:
            channel = grpc.aio.secure_channel(self.server_address, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(self.server_address, options=options)
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=timeout)
            call = pb_grpc.TransportStub(channel).Connect()
            advertise = (self.p2p_advertise or self.bound or "") if self.direct_p2p else ""
            hello = pb.Hello(name=self.address, version=WIRE_VERSION, p2p_address=advertise)
            await call.write(pb.Envelope(hello=hello))
            first = await asyncio.wait_for(call.read(), timeout=10)
        except BaseException:
            await channel.close()
            raise
        if first is grpc.aio.EOF:
            await channel.close()
            raise ConnectionError("the server closed the stream")
        if first.WhichOneof("body") == "refused":
            await channel.close()
            raise ConnectError(f"the server refused {self.address}: {first.refused.reason}")
        welcome = first.welcome
        self._remote_max = welcome.max_message_size or self._remote_max
        self._peers = set(welcome.peers)
        self._server_name = welcome.peers[0] if welcome.peers else "server"
        conn = Connection(self._server_name, call.write, self.heartbeat_interval, stamp_sender=False)
        self._conns[self._server_name] = conn
        self._addresses = dict(welcome.addresses)
        self._spawn(self._run_client(channel, call, conn))
        for name, address in self._addresses.items():
            self._maybe_dial(name, address)

    async def _run_client(self, channel: Any, call: Any, conn: Connection) -> None:
        writer = self._spawn(conn.run_writer())
        beat = self._spawn(conn.run_heartbeat(self.heartbeat_timeout))
        try:
            await conn.until_closed(self._read_frames(conn, call.read))
        except (ProtocolError, grpc.aio.AioRpcError) as exc:
            conn.close(repr(exc))
        except asyncio.CancelledError:
            conn.close("stopped")
        finally:
            writer.cancel()
            beat.cancel()
            call.cancel()
            await channel.close()
            lost = sorted(self._peers - {self._server_name})
            self._peers = set()
            if self._running:  # a goodbye of our own is no news to the runtime
                for name in lost:
                    self._peer_event(name, False)
                self._peer_event(self._server_name, False)
        if self._running and self._stopping is not None and not self._stopping.is_set():
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        assert self._stopping is not None
        while self._running and not self._stopping.is_set():
            try:
                await self._connect_once()
            except ConnectError as exc:
                _log.error("%s: %s; not trying again", self.address, exc)
                return
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._peer_event(self._server_name, True)
            for name in sorted(self._peers - {self._server_name}):
                self._peer_event(name, True)
            return

    def _on_peer_envelope(self, event: pb.PeerEvent) -> None:
        if event.connected:
            self._peers.add(event.name)
            if event.address:
                self._addresses[event.name] = event.address
                self._maybe_dial(event.name, event.address)
        else:
            self._peers.discard(event.name)
            self._addresses.pop(event.name, None)
            direct = self._conns.get(event.name)
            if direct is not None:
                direct.close(f"{event.name} left")
        self._peer_event(event.name, event.connected)


class _Servicer(pb_grpc.TransportServicer):
    def __init__(self, endpoint: GrpcCommunicationProtocol) -> None:
        self.endpoint = endpoint

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # noqa: N802 (gRPC's name)
        await self.endpoint._accept(context)
