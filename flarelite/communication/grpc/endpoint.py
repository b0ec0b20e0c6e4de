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
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator

from ...errors import ConnectError, ProtocolError, TransportClosed, TransportTimeout
from ..protocol import Frame, FrameHandler, PeerHandler
from . import flarelite_pb2 as pb
from .connection import CHUNK_OVERHEAD, Connection, Outgoing, header_cost
from .dialing import Dialing
from .listening import Listening
from .wire import (
    MAX_BUFFERS,
    chunks_of,
    frame_size,
    header_to_proto,
)

_log = logging.getLogger("flarelite.grpc")
QUEUED_OVERHEAD = 256  # what a queued frame counts against its destination's queue on top of its bytes


def _costed(frame: Frame, stream: int, chunk_size: int) -> Iterator[tuple[pb.Envelope, int]]:
    """The envelopes of a large frame with what each counts against a relay window, made one at a time.

    A chunk's cost comes from the sizes ``chunks_of`` cuts (reading ``chunk.data`` back would copy it).
    """
    header = header_to_proto(frame, stream, chunk_size)
    yield header, header_cost(header)
    sizes = [memoryview(b).nbytes for b in frame.buffers]
    if len(frame.meta) > chunk_size:
        sizes.append(len(frame.meta))
    cuts = (min(chunk_size, n - offset) + CHUNK_OVERHEAD for n in sizes for offset in range(0, n, chunk_size))
    for env, cost in zip(chunks_of(frame, stream, chunk_size), cuts):
        yield env, cost


def _wait_step(deadline: float | None) -> float:
    """How long to wait before looking again (at most 1 s, so that a stop is noticed)."""
    return 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))


async def _call(fn: Callable[[], None]) -> None:
    fn()


class GrpcCommunicationProtocol(Listening, Dialing):
    """A site's gRPC endpoint named ``address``; give ``listen`` (server) or ``server`` (client), not both.

    Parameters:
        address: this site's name (``"server"``, ``"site-1"``...).
        listen: where the server listens: ``"host:port"`` (port 0 picks a free port, see ``bound``) or
            ``"unix:///abs/path.sock"``.
        server: where a client connects: the server's ``listen`` address (``"127.0.0.1:8002"``...).
        tls: a TLSConfig (clear, tls or mtls); default clear.
        max_message_size: the largest frame body accepted on receive (bytes; default 2 GiB).
        max_open_frames: frames one connection may have started and not finished (default 256); a header over
            it is delivered with ``error`` and no body, so the receiver answers the sender with a clear error.
        max_pending_bytes: bytes announced by one connection's unfinished frames (default 4 x max_message_size);
            over it, the same refusal. Memory is taken only as the bytes arrive, whatever a header announces.
        chunk_size: size of the pieces large buffers travel in (1-4 MiB).
        heartbeat_interval, heartbeat_timeout: liveness; a silent peer is dropped after ``heartbeat_timeout``.
        connect_timeout: how long a client's ``start`` keeps trying to reach the server.
        direct_p2p: a client also listens (``p2p_listen``) and talks to peers over direct connections,
            falling back to the server's relay when a direct connection cannot be made or breaks.
        p2p_listen: where such a client listens (default: next to the server's Unix socket, or 127.0.0.1:0).
        p2p_advertise: the address peers should dial (default: the bound ``p2p_listen`` address).
        relay_window: flow control per destination, in bytes (default 8 MiB, at least ``chunk_size``): what a
            client may have in the server's relay per target (the server's value, told in Welcome), and what
            ``send`` queues per destination before it waits.
        data_plane: ``"auto"`` (default): on one machine (Unix sockets), and across machines (TCP) under mtls,
            a data channel beside the stream (``data_routes.py``): between a site and its server the buffers of
            large frames take it (the headers keep their place on the stream), between two sites on a direct
            connection every frame does; ``"tcp"``: over TCP in every mode too (TLS under tls, plain in clear);
            ``"grpc"``: gRPC only.
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
        # stopped: end what is left on the loop (gRPC's own call tasks too) so that none is destroyed pending
        left = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for task in left:
            task.cancel()
        if left:
            try:
                self._loop.run_until_complete(asyncio.wait(left, timeout=2.0))
            except Exception as exc:  # stopping anyway
                _log.debug("%s: ending the loop's tasks: %r", self.address, exc)

    def stop(self) -> None:
        """Say goodbye to the peers and close every connection."""
        if not self._running:
            return
        self._running = False
        with self._room:
            self._room.notify_all()  # senders waiting for room fail now
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
        # the channels first: their peers read to the end what was written on them, then get the goodbyes
        await asyncio.get_running_loop().run_in_executor(None, self._end_data)
        for conn in list(self._conns.values()):
            conn.enqueue(pb.Envelope(close=pb.Close(reason=f"{self.address} is stopping")))
        await asyncio.sleep(0.05)  # let the goodbyes go out
        for conn in list(self._conns.values()):
            conn.close(f"{self.address} stopped")
        self._close_data()
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=0.5)
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:  # let them run their cleanup (close channels, end calls) before the loop stops under them
            await asyncio.wait(tasks, timeout=2.0)

    async def _start_client(self) -> None:
        if self.direct_p2p:
            await self._serve()  # accept peers' direct connections first, then tell the server where
        await self._connect_first()

    # sending -----------------------------------------------------------------------------------------
    def send(self, target: str, frame: Frame, timeout: float | None = None) -> None:
        """Send ``frame`` to ``target``; large frames block until written (the buffers are then free).

        A small frame is copied and queued; when ``relay_window`` bytes are already queued for ``target`` it
        waits for room first. ``timeout`` (seconds, None: no limit) bounds every wait: past it, TransportTimeout,
        and the part already sent is cancelled at the receiver (and at the relay).
        """
        if not self._running:
            raise TransportClosed(f"{self!r} is stopped; cannot send {frame.kind} to {target!r}")
        size = frame_size(frame)
        limit = min(self.max_message_size, self._remote_max)
        if size > limit:
            raise ProtocolError(
                f"{frame.kind} frame to {target!r} is {size} bytes, over the limit of {limit} bytes "
                "(max_message_size); send less data per message"
            )
        if len(frame.buffers) > MAX_BUFFERS:
            raise ProtocolError(
                f"{frame.kind} frame to {target!r} has {len(frame.buffers)} out-of-band buffers, over the wire's "
                f"limit of {MAX_BUFFERS}; send fewer arrays per message (e.g. stack them into one)"
            )
        assert self._loop is not None
        on_loop = threading.current_thread() is self._thread
        if target == self.address:
            copy = frame.addressed(self.address, target, [bytearray(b) for b in frame.buffers])
            self._loop.call_soon_threadsafe(self._deliver, copy)
            return
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:  # twice at most: a channel that a frame chosen for the stream meets at its queueing takes it
            conn = self._route(target)
            channel = self._channel_for(conn, target)
            if channel is not None and self._send_on_channel(channel, target, frame, deadline, on_loop):
                return
            if self._send_by_stream(conn, target, frame, size, deadline, timeout, on_loop):
                return

    def _send_by_stream(
        self,
        conn: Connection,
        target: str,
        frame: Frame,
        size: int,
        deadline: float | None,
        timeout: float | None,
        on_loop: bool,
    ) -> bool:
        """Send ``frame`` on ``conn``'s stream (its buffers as a blob on the data channel of a connection to the
        server, when large); False when a direct connection's channel to ``target`` took the stream's place."""
        stream = next(self._streams)
        if self._send_relayed(conn, target, frame, stream, deadline, on_loop):
            return True  # its bytes through the server's data channels, its header on the stream
        blob = self._blob_for(target, frame, deadline, on_loop, conn)
        if blob:  # the buffers went on the data channel: the header follows on the stream, in its place
            env = header_to_proto(frame, stream, self.chunk_size, sender=self.address, target=target)
            env.header.blob = blob
            out = Outgoing.of([(env, header_cost(env))], target=target, stream=stream)
            return self._queue(conn, out, env.ByteSize() + QUEUED_OVERHEAD, deadline, on_loop)
        if not frame.buffers and len(frame.meta) <= self.chunk_size:  # one envelope: build it now, queue, return
            env = header_to_proto(frame, stream, self.chunk_size, sender=self.address, target=target)
            out = Outgoing.of([(env, header_cost(env))], target=target, stream=stream)
            return self._queue(conn, out, size + QUEUED_OVERHEAD, deadline, on_loop)
        out_frame = frame.addressed(self.address, target)
        if size <= self.chunk_size:  # small: encode now (copies), queue, return
            out = Outgoing.of(list(_costed(out_frame, stream, self.chunk_size)), target=target, stream=stream)
            return self._queue(conn, out, size + QUEUED_OVERHEAD, deadline, on_loop)
        done = threading.Event()
        out = Outgoing(_costed(out_frame, stream, self.chunk_size), done, target=target, stream=stream)
        if not self._enqueue(conn, out, on_loop):
            return False
        if on_loop:
            return True  # on the loop itself: cannot wait (the runtime never sends large frames from a callback)
        while not done.wait(_wait_step(deadline)):
            if not self._running:
                self._give_up(out, f"{self.address} stopped")
                raise TransportClosed(f"{self!r} stopped while sending to {target!r}")
            if deadline is not None and time.monotonic() >= deadline:
                self._give_up(out, f"not sent within {timeout}s")
                if not (out.finished and out.error is None):  # (unless it was written just in time)
                    raise TransportTimeout(
                        f"{frame.kind} frame to {target!r} ({size} bytes) was not sent within {timeout}s "
                        f"(the receiver, or the relay to it, takes it slower); what was sent of it is cancelled"
                    )
        if out.error:
            raise TransportClosed(f"{frame.kind} frame to {target!r} not sent: {out.error}")
        return True

    def _enqueue(self, conn: Connection, out: Outgoing, on_loop: bool) -> bool:
        """Put ``out`` in ``conn``'s writer rotation, unless a data channel to its target took the stream's place
        (then False): decided under the connection's route lock, so nothing chosen for the stream follows a Switch."""
        assert self._loop is not None
        with conn.route_lock:
            if self._channel_for(conn, out.target) is not None:
                return False
            if on_loop:
                conn.enqueue(out)
            else:
                self._loop.call_soon_threadsafe(conn.enqueue, out)
        return True

    def _queue(self, conn: Connection, out: Outgoing, charge: int, deadline: float | None, on_loop: bool) -> bool:
        """Queue a copied frame on ``conn`` once its target has room (``relay_window`` bytes queued at most);
        False when a data channel to its target took the stream's place meanwhile."""
        assert self._loop is not None
        if on_loop:  # cannot wait on the loop thread; what the loop sends is the transport's own small frames
            return self._enqueue(conn, out, on_loop)
        target = out.target
        waited = False
        with self._room:
            while True:
                queued = self._queued.get(target, 0)
                if not queued or queued + charge <= self.relay_window:
                    break
                waited = True
                if not self._running:
                    raise TransportClosed(f"{self!r} stopped while waiting to send to {target!r}")
                if deadline is not None and time.monotonic() >= deadline:
                    raise TransportTimeout(
                        f"no room to send a frame to {target!r}: {queued} bytes are already queued for it "
                        f"(relay_window {self.relay_window}) and it takes them slower than they come"
                    )
                self._room_waiters += 1
                try:
                    self._room.wait(_wait_step(deadline))
                finally:
                    self._room_waiters -= 1
            self._queued[target] = queued + charge
        out.on_finish = functools.partial(self._unqueue, target, charge)
        if waited:  # the way to the target may have changed meanwhile (or be gone: ConnectError)
            try:
                conn = self._route(target)
            except ConnectError:
                self._unqueue(target, charge, out)
                raise
        if not self._enqueue(conn, out, on_loop):
            self._unqueue(target, charge, out)
            return False
        return True

    def _unqueue(self, target: str, charge: int, out: Outgoing) -> None:
        with self._room:
            left = self._queued.get(target, 0) - charge
            if left > 0:
                self._queued[target] = left
            else:
                self._queued.pop(target, None)
            if self._room_waiters:
                self._room.notify_all()

    def _give_up(self, out: Outgoing, reason: str) -> None:
        """Cancel ``out`` wherever it is queued; returns once the loop has taken note (its buffers are then free)."""
        assert self._loop is not None

        def cancel() -> None:
            for conn in list(self._conns.values()):
                conn.cancel(out, reason)
            if out.cancelled is None and not out.finished:
                out.cancelled = reason  # on no connection (rerouting): whoever takes it drops it

        if out.finished:
            return
        try:
            asyncio.run_coroutine_threadsafe(_call(cancel), self._loop).result(5)
        except Exception as exc:  # the loop is gone: nothing will touch the buffers any more
            _log.debug("%s: cancelling a frame: %r", self.address, exc)

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
