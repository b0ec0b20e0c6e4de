"""DataRoutes: how the gRPC endpoint uses the data plane (``communication/dataplane``) beside its streams.

Where a channel is offered (``channel_kind``): same machine (the server listens on a Unix socket,
``data_plane="auto"``): the server also listens on ``<its socket>.data``; across machines (TCP) under mtls with
``auto``, or in every mode with ``data_plane="tcp"``: on a free TCP port of the interface its gRPC port is on,
TLS with the project's certificates under tls/mtls (``dataplane/tls_stream.py``). A site that says so in its
Hello gets, in its Welcome, where to dial and a one-time token bound to its gRPC connection; it dials and
presents the token (within ``DATA_WAIT`` seconds, once; under mtls with a certificate of the same name). From then
on, a frame between that site and the server whose buffers hold ``BLOB_MIN`` bytes or more sends them as a blob
on the channel, then its header on the gRPC stream with ``blob`` set. The receiver's stream reader takes the
blob's buffers from the channel when it reaches the header (they are there, or nearly: the sender wrote them
first), so frames keep the stream's order and causality (relayed frames, PeerEvents, small frames all stay on
the stream), and only the bulk of the bytes takes the faster way. A large frame for another site takes the
channels too, through the server's relay, chunk by chunk within the relay window (``data_relay.py``).

A direct connection between two sites (direct_p2p) gets a channel of its own the same way, offered by the
listening site in its Welcome, and there whole frames take it: nothing but those two sites' frames shares that
stream, so once a side has its channel it queues a ``Switch`` on the stream (under the connection's
``route_lock``, so no frame chosen for the stream can follow it) and from then on sends every frame for the peer
on the channel, written by the caller's thread, delivered by the peer's reader thread: a small aux round trip
costs a write and a read each way. The receiver holds those frames until every frame the peer began on the
stream before its Switch is delivered (the connection's ``data_gate``), so their order is kept. Why not on the
server's connection too: there the server's own frames share the stream with frames it relays from other sites
and with its peer events, and causality across them (a run's end after the aux messages it relays, a task after
the peer event announcing a site) is the stream's order; whole frames there would need the relay on the channels.

A blob is sent only when its header takes the stream the channel belongs to, and such a frame is never rerouted
to the relay. The channel lives and dies with its gRPC connection: when the connection ends, the channel's reader
first reads what the peer wrote before ending its writes (``DRAIN``), so a site's last frames arrive before the
news that it left. Without a channel, or when it fails before a blob or frame is written, frames go wholly by gRPC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ...errors import ConnectError, ProtocolError, TransportClosed, TransportTimeout
from ..addresses import tcp_host
from ..dataplane import channel as data_channel  # (the module: it imports this package's wire in turn)
from ..dataplane.handshake import TCP_PREFIX, TOKEN_BYTES, DataListener, accept_reply, dial
from ..protocol import Frame
from . import flarelite_pb2 as pb
from .connection import CHUNK_OVERHEAD, Connection, Outgoing
from .core import EndpointCore
from .data_relay import BlobRelay
from .wire import Assembly, Inbound, byte_views, header_from_proto, header_problem, header_to_proto, size_problem

_log = logging.getLogger("flarelite.grpc")
DATA_WAIT = 3.0  # seconds an offered channel has to be opened
BLOB_MIN = 256 << 10  # frames whose buffers hold at least this many bytes send them on the channel
DRAIN = 2.0  # seconds a channel's reader has, when its connection ends, to read what the peer wrote before it


@dataclass
class _Offer:
    """A channel offered to a site: its token, and the gRPC connection it belongs to."""

    token: bytes
    conn: Connection


class DataRoutes(EndpointCore):
    """Offer, open, use and close data channels (see the module docstring)."""

    @property
    def data_peers(self) -> list[str]:
        """The peers a data channel is open to now."""
        with self._data_lock:
            return sorted(name for name, channel in self._data.items() if not channel.closed)

    # the listening side (the server; a site's p2p listener) -------------------------------------------
    def _start_data_listener(self, socket_path: str) -> None:
        """Listen for data channels beside the gRPC socket at ``socket_path`` (the server, or a site taking its
        peers' direct connections; data_plane auto); without one (it cannot be made), frames go by gRPC."""
        from .listening import prepare_socket_path

        path = socket_path + ".data"
        if len(path.encode()) > 100:
            _log.info(
                "%s: no data plane: the socket path %s is too long", self.address, path, extra={"site": self.address}
            )
            return
        try:
            prepare_socket_path(path, self.address)
            listener = DataListener.unix(path, self.address, self._attach_site)
        except ConnectError as exc:  # (e.g. a file that is not a socket sits there: never removed)
            _log.warning("%s: %s; frames go by gRPC", self.address, exc, extra={"site": self.address})
            return
        listener.start()
        self._data_listener = listener

    def _start_tcp_data_listener(self, host: str) -> None:
        """Listen for data channels on a free TCP port of ``host`` (TLS unless the mode is clear); without one
        (it cannot be bound), frames go by gRPC."""
        from ..dataplane.tls_stream import server_context

        context = server_context(self.tls) if self.tls.mode != "clear" else None
        try:
            listener = DataListener.tcp(host, self.address, self._attach_site, context, self.tls.mode == "mtls")
        except ConnectError as exc:
            _log.warning("%s: %s; frames go by gRPC", self.address, exc, extra={"site": self.address})
            return
        listener.start()
        self._data_listener = listener

    def _offer_data(self, name: str, conn: Connection) -> tuple[str, bytes]:
        """Offer ``name`` (connected now as ``conn``) a channel: the Welcome's data_address and data_token."""
        if self._data_listener is None:
            return "", b""
        offer = _Offer(secrets.token_bytes(TOKEN_BYTES), conn)
        with self._data_lock:
            self._data_offers[name] = offer
        assert self._loop is not None
        self._loop.call_later(DATA_WAIT, self._expire_offer, name, offer)
        return self._data_listener.offer, offer.token

    def _expire_offer(self, name: str, offer: _Offer) -> None:
        with self._data_lock:
            if self._data_offers.get(name) is offer:
                del self._data_offers[name]
                _log.info(
                    "%s: %s did not open its data channel; its frames go by gRPC",
                    self.address,
                    name,
                    extra={"site": self.address},
                )

    def _attach_site(self, name: str, token: bytes, sock: Any) -> str | None:
        """A site presents ``token`` on the data socket (listener thread): open its channel, or say why not."""
        with self._data_lock:
            offer = self._data_offers.get(name)
            if offer is None or not hmac.compare_digest(offer.token, token):
                return "no data channel is offered under that name with that token (or the offer expired)"
            del self._data_offers[name]  # once
            if offer.conn.closed or not self._running:
                return "the gRPC connection it was offered on is closed"
            try:
                accept_reply(sock)
            except OSError as exc:
                return f"the answer could not be sent: {exc}"
            channel = self._new_channel(sock, name, offer.conn)
            old = self._data.get(name)
            self._data[name] = channel
        if old is not None:
            old.close(f"{name} opened a new data channel")
        channel.start()
        if self._whole_frames(name):
            self._switch(offer.conn, channel)
        _log.info("%s: data channel to %s open", self.address, name, extra={"site": self.address})
        return None

    # the dialing side (a site, to its server or to a peer) ------------------------------------------
    def _wants_data(self, address: str | None = None) -> bool:
        """Whether this site asks for a data channel where it dials ``address`` (default: the server's)."""
        return channel_kind(self.data_plane, self.tls.mode, address or self.server_address or "") is not None

    def _open_data(
        self, welcome: pb.Welcome, conn: Connection, peer: str | None = None, address: str | None = None
    ) -> None:
        """Dial the data socket ``welcome`` offers (a worker thread) for ``peer`` (default: the server) reached at
        ``address`` (default: the server's); on failure, frames go by gRPC."""
        server = peer or self._server_name
        context = None
        if welcome.data_address.startswith(TCP_PREFIX) and self.tls.mode != "clear":
            from ..dataplane.tls_stream import client_context

            context = client_context(self.tls)
        try:
            sock = dial(
                welcome.data_address,
                self.address,
                bytes(welcome.data_token),
                DATA_WAIT,
                host=tcp_host(address or self.server_address or ""),
                context=context,
                server_hostname=peer or self.tls.server_name,  # whom the gRPC connection verified
            )
        except ConnectError as exc:
            _log.warning("%s: %s; frames to %s go by gRPC", self.address, exc, server, extra={"site": self.address})
            return
        with self._data_lock:
            if conn.closed:
                sock.close()
                return
            channel = self._new_channel(sock, server, conn)
            old = self._data.get(server)
            self._data[server] = channel
        if old is not None:
            old.close("a new data channel replaced it")
        channel.start()
        if self._whole_frames(server):
            self._switch(conn, channel)

    # both --------------------------------------------------------------------------------------------
    def _new_channel(self, sock: Any, peer: str, conn: Connection) -> data_channel.DataChannel:
        def admit(h: pb.Header, size: int, pending: Inbound) -> str:
            # a whole frame's header brings its meta; a blob's announcement never does (its header follows)
            problem = header_problem(h, self.max_message_size) if h.kind else size_problem(h, self.max_message_size)
            return problem or self._over_cap(h, size, pending)

        whole = self._whole_frames(peer)
        channel = data_channel.DataChannel(
            sock,
            local=self.address,
            peer=peer,
            admit=admit,
            on_close=self._channel_closed,
            max_held_bytes=self.max_pending_bytes,
            deliver=self._deliver if whole else None,
            gate=conn.data_gate,
            relay=self._relay().port(conn) if self.is_server else None,
            shared_memory=True,  # on a Unix socket (one machine, the same user) where the platform has memfds
        )
        conn.data_channel = channel  # its stream's headers claim its blobs (also after it closes), its blobs only
        return channel

    def _relay(self) -> BlobRelay:
        """The server's relay of blobs between its channels (made on first use)."""
        if self._blob_relay is None:
            self._blob_relay = BlobRelay(self)
        return self._blob_relay

    def _relay_blob_header(self, conn: Connection, h: pb.Header) -> None:
        self._relay().on_header(conn, h)

    def _whole_frames(self, peer: str) -> bool:
        """Whether whole frames take the channel to ``peer``: on a direct connection between two sites."""
        return not self.is_server and peer != self._server_name

    def _switch(self, conn: Connection, channel: data_channel.DataChannel) -> None:
        """From now on this side's frames to ``channel.peer`` take ``channel``: say so on the stream, after every
        frame already chosen for it (any thread)."""
        assert self._loop is not None
        with conn.route_lock:
            conn.frames_out = channel
            self._loop.call_soon_threadsafe(conn.enqueue, pb.Envelope(switch=pb.Switch()))

    def _channel_for(self, conn: Connection, target: str) -> data_channel.DataChannel | None:
        """The channel a whole frame for ``target`` routed on ``conn`` takes, or None (the stream)."""
        channel = conn.frames_out
        if channel is None or channel.closed or channel.ended or channel.peer != target:
            return None
        return channel

    def _on_switch(self, conn: Connection, pending: Inbound) -> None:
        """The peer's frames come on its channel from here on: open the gate once the frames it began on this
        stream are delivered (loop thread)."""
        if conn.data_gate.is_set() or conn.gate_streams is not None:
            return  # once per connection
        if not self._whole_frames(conn.name):
            _log.warning("%s: ignored a Switch from %s (only direct peers switch)", self.address, conn.name)
            return
        conn.gate_streams = {stream for stream, state in pending.items() if type(state) is Assembly}
        if not conn.gate_streams:
            conn.data_gate.set()

    def _gate_passed(self, conn: Connection, stream: int) -> None:
        """Frame ``stream`` of ``conn`` is delivered or gone: the gate opens when it was the last one before it."""
        streams = conn.gate_streams
        if streams and stream in streams:
            streams.discard(stream)
            if not streams:
                conn.data_gate.set()

    def _channel_closed(self, channel: data_channel.DataChannel) -> None:
        with self._data_lock:
            if self._data.get(channel.peer) is channel:
                del self._data[channel.peer]

    async def _drop_data(self, name: str, conn: Connection) -> None:
        """``conn`` (the gRPC connection to ``name``) ended: so does its channel (once its reader has read what the
        peer wrote before it ended its writes, at most ``DRAIN`` seconds), and any offer made on it."""
        with self._data_lock:
            offer = self._data_offers.get(name)
            if offer is not None and offer.conn is conn:
                del self._data_offers[name]
        channel = conn.data_channel
        if not isinstance(channel, data_channel.DataChannel):
            return
        conn.data_gate.set()  # nothing more comes on the stream: what the channel holds goes now
        deadline = time.monotonic() + DRAIN
        while not channel.reader_done.is_set() and not channel.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        channel.close(f"the gRPC connection to {name} ended")

    def _end_data(self) -> None:
        """Stopping: every channel ends its writes (its peer reads what was sent) before the goodbyes go out."""
        with self._data_lock:
            channels = list(self._data.values())
        for channel in channels:
            channel.end_writes()

    def _close_data(self) -> None:
        """Stopping: close every channel and the listener."""
        with self._data_lock:
            channels = list(self._data.values())
            self._data.clear()
            self._data_offers.clear()
        for channel in channels:
            channel.close(f"{self.address} stopped")
        if self._data_listener is not None:
            self._data_listener.stop()
            self._data_listener = None

    # sending: a whole frame by the channel (direct connections) -----------------------------------------
    def _send_on_channel(
        self, channel: data_channel.DataChannel, target: str, frame: Frame, deadline: float | None, on_loop: bool
    ) -> bool:
        """Write ``frame`` whole on ``channel``; False when it goes by gRPC instead: the channel was closed before
        any of it was written, or broke while it was (the receiver drops what came of it with the channel, so it
        cannot arrive twice). A frame sent from the loop or from a channel's reader (a runtime answering inside its
        frame callback) waits at most ``heartbeat_timeout`` for the socket: a peer that reads nothing cannot hold
        them.

        Raises TransportTimeout once part of it went on the channel and its deadline passed; TransportClosed when
        this endpoint stops meanwhile.
        """
        if deadline is None and (on_loop or data_channel.on_reader_thread()):
            deadline = time.monotonic() + self.heartbeat_timeout
        try:
            channel.send_frame(frame, deadline)
        except data_channel.ChannelUnavailable:
            return False
        except TransportClosed as exc:
            if not self._running:
                raise TransportClosed(f"{frame.kind} frame to {target!r} not sent: {exc}") from None
            _log.info(
                "%s: the data channel to %s broke under a %s frame (%s); it goes by gRPC",
                self.address,
                target,
                frame.kind,
                exc,
                extra={"site": self.address},
            )
            return False
        return True

    # sending: a large frame for another site, its bytes through the server's channels -------------------
    def _send_relayed(
        self, conn: Connection, target: str, frame: Frame, stream: int, deadline: float | None, on_loop: bool
    ) -> bool:
        """Send ``frame`` for ``target`` (another site) with its buffers as a relayed blob on the data channel to
        the server, its header on the stream; False when it goes wholly by gRPC (no channel, small, sent from the
        loop, or the channel closed before any of it was written).

        Raises TransportTimeout / TransportClosed once part of it went on the channel.
        """
        channel = conn.data_channel
        if (
            on_loop
            or self.is_server
            or target == self._server_name
            or conn.name != self._server_name
            or not isinstance(channel, data_channel.DataChannel)
            or channel.closed
        ):
            return False
        pieces = byte_views(frame.buffers)
        if len(frame.meta) > self.chunk_size:
            pieces.append(memoryview(frame.meta))
        if sum(p.nbytes for p in pieces) < BLOB_MIN:
            return False
        env = header_to_proto(frame, stream, self.chunk_size, sender=self.address, target=target)
        loop = self._loop
        assert loop is not None

        def announced(blob: int) -> None:  # the header follows the announcement on the stream (it costs no window)
            env.header.blob = blob
            loop.call_soon_threadsafe(conn.enqueue, Outgoing.of([(env, 0)], target=target, stream=stream))

        def reserve(nbytes: int, deadline: float | None) -> None:
            cost = nbytes + CHUNK_OVERHEAD
            future: concurrent.futures.Future = concurrent.futures.Future()
            loop.call_soon_threadsafe(conn.reserve, target, cost, future)
            while True:
                step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                try:
                    future.result(step)
                    return
                except ConnectionError as exc:
                    raise TransportClosed(str(exc)) from None
                except concurrent.futures.TimeoutError:
                    stopped = not self._running or conn.closed
                    if not stopped and (deadline is None or time.monotonic() < deadline):
                        continue
                    if not future.cancel():  # granted just now: the room goes back unused
                        loop.call_soon_threadsafe(conn.on_credit, target, cost)
                    if stopped:
                        raise TransportClosed(conn.close_reason or f"{self.address} stopped") from None
                    raise TransportTimeout(
                        f"{frame.kind} frame to {target!r} was not sent within its timeout (the relay's window to "
                        f"{target!r} stayed full: it takes the frames slower); what was sent of it is cancelled"
                    ) from None

        chunk = max(64 << 10, min(data_channel.CHUNK, conn.window // 8 or data_channel.CHUNK))
        try:
            channel.send_relayed_blob(pieces, target, deadline, f"{frame.kind} frame", announced, reserve, chunk)
        except data_channel.ChannelUnavailable:
            return False
        except TransportClosed as exc:
            raise TransportClosed(f"{frame.kind} frame to {target!r} not sent: {exc}") from None
        return True

    # sending: the bytes by the channel ---------------------------------------------------------------
    def _blob_for(self, target: str, frame: Frame, deadline: float | None, on_loop: bool, conn: Connection) -> int:
        """Send ``frame``'s buffers (and its meta when over a chunk, as ``header_to_proto`` decides) as a blob on
        the data channel of ``conn``, the stream its header takes, when that channel is to ``target``; its id, or 0
        when the frame goes wholly by gRPC (no such channel, small, or sent from the loop).

        Raises TransportTimeout / TransportClosed once part of the blob went on the channel.
        """
        channel = conn.data_channel
        if on_loop or not isinstance(channel, data_channel.DataChannel) or channel.closed or channel.peer != target:
            return 0  # (a frame relayed to another site takes the server's stream: its channel is not for it)
        if self._whole_frames(target):
            return 0  # a direct connection: before its Switch, frames go wholly by its stream
        pieces = byte_views(frame.buffers)
        if len(frame.meta) > self.chunk_size:
            pieces.append(memoryview(frame.meta))
        if sum(p.nbytes for p in pieces) < BLOB_MIN:
            return 0
        try:
            return channel.send_blob(pieces, deadline, f"{frame.kind} frame")
        except data_channel.ChannelUnavailable:
            return 0
        except TransportClosed as exc:
            raise TransportClosed(f"{frame.kind} frame to {target!r} not sent: {exc}") from None

    # receiving: a header that names a blob -----------------------------------------------------------
    async def _on_blob_header(self, conn: Connection, h: pb.Header) -> None:
        """Deliver the frame of ``h`` with its buffers from the channel (or its header with ``error`` saying why)."""
        channel = conn.data_channel
        problem = header_problem(h, self.max_message_size)
        if not isinstance(channel, data_channel.DataChannel):
            problem = problem or f"its buffers were sent on a data channel from {conn.name} that was never opened"
        elif problem:
            channel.drop(h.blob)
        if problem:
            self._refuse(conn, header_from_proto(h), problem, h.stream, 0, conn.pending)
            return
        wait = 0.8 * self.heartbeat_timeout  # normally milliseconds: the sender wrote the blob before the header
        try:
            buffers = await asyncio.wait_for(asyncio.wrap_future(channel.claim(h.blob)), wait)
        except asyncio.TimeoutError:
            channel.drop(h.blob)
            problem = f"its buffers did not arrive on the data channel within {wait:.0f}s"
        except (TransportClosed, ProtocolError) as exc:
            problem = f"its buffers were lost: {exc}"
        else:
            sizes = [memoryview(b).nbytes for b in buffers]
            if sizes != [*h.buffer_sizes, *([h.meta_size] if h.meta_size else [])]:
                problem = f"its buffers on the data channel ({sizes[:8]}...) are not the sizes its header announced"
        if problem:
            self._refuse(conn, header_from_proto(h), problem, h.stream, 0, conn.pending)
            return
        frame = header_from_proto(h)
        if h.meta_size:
            frame.meta = bytes(buffers.pop())
        frame.buffers = buffers
        self._deliver(frame)


def channel_kind(data_plane: str, mode: str, address: str) -> str | None:
    """Which data channel goes with a gRPC connection to ``address``: ``"unix"`` (a Unix socket: same machine,
    data_plane auto or tcp), ``"tcp"`` (TCP: under mtls with auto, in every mode with tcp) or None (gRPC only)."""
    if data_plane == "grpc":
        return None
    if address.startswith("unix:"):
        return "unix"
    return "tcp" if data_plane == "tcp" or mode == "mtls" else None


__all__ = ["BLOB_MIN", "DATA_WAIT", "DRAIN", "DataRoutes", "channel_kind"]
