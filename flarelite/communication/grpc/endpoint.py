"""GrpcCommunicationProtocol: the CommunicationProtocol over gRPC (TCP ``host:port`` or ``unix:///path``).

One endpoint listens (the server, ``listen=``); the others connect to it (``server=``) and keep one
bidirectional stream each. Frames between clients travel through the server, which relays them chunk by chunk
and stamps the sender with the identity it authenticated. gRPC runs on an asyncio loop in a thread of its own;
``send`` may be called from any thread.

The class is put together from ``core.py`` (state; reading, delivering and relaying frames), ``listening.py``
(accepting connections) and ``dialing.py`` (connecting to the server and to peers); this module adds the
lifecycle and ``send``.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ...errors import ConnectError, ProtocolError, TransportClosed
from ..protocol import Frame, FrameHandler, PeerHandler
from . import flarelite_pb2 as pb
from .connection import Connection, Outgoing
from .dialing import Dialing
from .listening import Listening
from .wire import (
    envelopes_of,
    frame_size,
    header_to_proto,
)

_log = logging.getLogger("flarelite.grpc")


class GrpcCommunicationProtocol(Listening, Dialing):
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

    # lifecycle ---------------------------------------------------------------------------------------
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

    async def _start_client(self) -> None:
        if self.direct_p2p:
            await self._serve()  # accept peers' direct connections first, then tell the server where
        await self._connect_first()

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
            copy = frame.addressed(self.address, target, [bytearray(b) for b in frame.buffers])
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
        out_frame = frame.addressed(self.address, target)
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
