"""Dialing: the connecting side of the gRPC endpoint: a client site's stream to the server (with retries and
reconnection) and, with direct_p2p, its direct connections to peers."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import grpc

from ... import logsafe
from ...errors import ConfigError, ConnectError, ProtocolError
from ..addresses import unix_path
from ..protocol import site_name_problem
from . import flarelite_pb2 as pb
from . import flarelite_pb2_grpc as pb_grpc
from .connection import Connection
from .data_routes import DataRoutes
from .listening import ALREADY_CONNECTED, warn_unauthenticated
from .tls import channel_credentials, channel_options
from .wire import (
    WIRE_VERSION,
)

_log = logging.getLogger("flarelite.grpc")
logsafe.install(_log)
WAIT_NOTE_INTERVAL = 5.0  # seconds between the lines a site writes while it waits for the server


class _Busy(ConnectError):
    """The server refused this site because a connection under its name is still open: retry later."""


class Dialing(DataRoutes):
    """Connect to the server and keep connected; dial peers that accept direct connections."""

    async def _connect_first(self) -> None:
        problem = site_name_problem(self.address)
        if problem:
            raise ConfigError(f"{self.address!r} cannot be a site's name: {problem}")
        warn_unauthenticated(self)
        began = time.monotonic()
        deadline = began + self.connect_timeout
        next_note = began + WAIT_NOTE_INTERVAL
        delay = 0.05
        while True:
            try:
                await self._connect_once(max(0.2, min(1.0, deadline - time.monotonic())))
                break
            except _Busy as exc:  # our old connection is still open there: it times out, then we get in
                if time.monotonic() + delay > deadline:
                    raise ConnectError(f"{exc} (still, after {self.connect_timeout}s)") from exc
                next_note = self._note_wait(exc, deadline, next_note)
                await asyncio.sleep(max(delay, 0.5))
                delay = min(delay * 2, 1.0)
            except ConnectError:
                raise
            except Exception as exc:
                next_note = self._note_wait(exc, deadline, next_note)
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
                        f"{self.connect_timeout}s: {self._why(exc)}{hint}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    def _note_wait(self, exc: BaseException, deadline: float, next_note: float) -> float:
        """Every few seconds, say what this site waits for and why; return when to say it next."""
        now = time.monotonic()
        if now < next_note or deadline - now < 1.0:  # the last second: the error itself follows
            return next_note
        _log.warning(
            "%s: waiting for the server at %s: %s; giving up in %.0fs",
            self.address,
            self.server_address,
            self._why(exc),
            max(0.0, deadline - now),
            extra={"site": self.address},
        )
        return now + WAIT_NOTE_INTERVAL

    def _why(self, exc: BaseException) -> str:
        """What the last attempt to reach the server ran into, in words."""
        if isinstance(exc, ConnectError):
            return str(exc)
        address = self.server_address or ""
        if isinstance(exc, asyncio.TimeoutError):
            path = unix_path(address)
            if path is not None:
                if not os.path.exists(path):
                    return f"no socket file {path} yet (is the server started?)"
                return f"nothing accepts connections on {path}"
            return "no answer (nothing listens there yet, or a firewall drops the connection)"
        if isinstance(exc, grpc.aio.AioRpcError):
            return f"{exc.code().name}: {exc.details()}"
        return repr(exc)

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
            hello = pb.Hello(
                name=self.address, version=WIRE_VERSION, p2p_address=advertise, data_plane=self._wants_data()
            )
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
            reason = first.refused.reason
            error = _Busy if reason.startswith(ALREADY_CONNECTED) else ConnectError
            raise error(f"the server refused {self.address}: {reason}")
        welcome = first.welcome
        self._remote_max = welcome.max_message_size or self._remote_max
        self._peers = set(welcome.peers)
        self._server_name = welcome.peers[0] if welcome.peers else "server"
        conn = Connection(
            self._server_name, call.write, self.heartbeat_interval, stamp_sender=False, window=welcome.relay_window
        )
        self._conns[self._server_name] = conn
        self._addresses = dict(welcome.addresses)
        self._spawn(self._run_client(channel, call, conn))
        if welcome.data_address and self._wants_data():  # open before start() returns: the first frames use it
            await asyncio.get_running_loop().run_in_executor(None, self._open_data, welcome, conn)
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
            await self._drop_data(self._server_name, conn)
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
            except _Busy:  # the server still holds our old connection; it is closed by heartbeats
                await asyncio.sleep(max(delay, 0.5))
                delay = min(delay * 2, 2.0)
                continue
            except ConnectError as exc:
                _log.error("%s: %s; not trying again", self.address, exc, extra={"site": self.address})
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

    def _maybe_dial(self, name: str, address: str) -> None:
        # one connection per pair: the site whose name sorts later dials, the other accepts
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
            hello = pb.Hello(name=self.address, version=WIRE_VERSION, data_plane=self._wants_data(address))
            await call.write(pb.Envelope(hello=hello))
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
        if first.welcome.data_address and self._wants_data(address):  # its bulk on a data channel too
            await asyncio.get_running_loop().run_in_executor(None, self._open_data, first.welcome, conn, name, address)
        self._conns[name] = conn
        try:
            await self._run_direct(conn, call.read)
        finally:
            call.cancel()
            await channel.close()
