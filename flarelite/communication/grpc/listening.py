"""Listening: the accepting side of the gRPC endpoint: the server takes its clients' streams, and a site with
direct_p2p takes its peers' direct connections. Under mutual TLS the identity is the certificate's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from ...errors import ConnectError, ProtocolError
from . import flarelite_pb2 as pb
from . import flarelite_pb2_grpc as pb_grpc
from .connection import Connection, Outgoing
from .core import EndpointCore
from .tls import peer_identity, server_credentials
from .wire import (
    WIRE_VERSION,
)

_log = logging.getLogger("flarelite.grpc")


class Listening(EndpointCore):
    """Listen, accept, check who connects, and tell the sites who else is connected."""

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


class _Servicer(pb_grpc.TransportServicer):
    def __init__(self, endpoint: Listening) -> None:
        self.endpoint = endpoint

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # noqa: N802 (gRPC's name)
        await self.endpoint._accept(context)
