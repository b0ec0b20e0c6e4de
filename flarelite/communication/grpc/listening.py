"""Listening: the accepting side of the gRPC endpoint: the server takes its clients' streams, and a site with
direct_p2p takes its peers' direct connections. Under mutual TLS the identity is the certificate's.

Who gets in: a valid site name (``site_name_problem``) that the admission rule admits (``set_admission``: the
server's runtime admits only the job's sites); a site's peer listener admits only the peers the server
announced, never the server's name. Without client certificates (clear, tls) a name that is already connected
is refused (``ALREADY_CONNECTED``: the site itself retries until its stale connection times out); under mtls the
certificate's owner may replace its own stale connection. A malformed or refused stream costs one log line at
most, and repeated ones from one address are rate-limited (``_StreamLog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import grpc

from ... import logsafe
from ...errors import ConnectError, ProtocolError
from ..addresses import tcp_host, unix_path
from . import flarelite_pb2 as pb
from . import flarelite_pb2_grpc as pb_grpc
from .connection import Connection
from .core import EndpointCore
from .data_routes import DataRoutes, channel_kind
from .tls import peer_identity, server_credentials
from .wire import (
    WIRE_VERSION,
)

_log = logging.getLogger("flarelite.grpc")
logsafe.install(_log)  # names and reasons a peer sent are logged escaped, whoever handles the records

ALREADY_CONNECTED = "already connected"  # a Refused reason starting with this may be retried later
HELLO_TIMEOUT = 30.0  # seconds a new stream has to say hello
STREAM_LOG_INTERVAL = 10.0  # at most one line per peer address per this many seconds about bad streams
MEMBER_RECHECK = 1.0  # seconds between re-checks that a connected site is still admitted (e.g. after the start)
MEMBER_GRACE = 2.0  # seconds a site no longer admitted has to hear why before its connection closes
PEER_ANNOUNCE_WAIT = 2.0  # seconds a peer listener waits for the server to announce a site that dialed it


class _StreamLog:
    """One log line per peer address per ``interval`` about bad or refused streams; the rest are counted."""

    def __init__(self, interval: float = STREAM_LOG_INTERVAL) -> None:
        self._limit = logsafe.RateLimit(interval)

    def __call__(self, level: int, peer: str, msg: str, *args: Any, site: str | None = None) -> None:
        key = _peer_host(peer)
        allowed = self._limit.check(key)
        if allowed is None:
            return
        hidden, elapsed = allowed
        if hidden:
            msg += " (%d more such streams from %s in the last %.0fs were not logged)"
            args = (*args, hidden, key, elapsed)
        _log.log(level, msg, *args, extra={"site": site})  # ``site``: whose log file it goes to


def _peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:127.0.0.1:5555`` -> ``127.0.0.1``; unix: the socket)."""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        return peer[5:].rsplit(":", 1)[0].strip("[]")
    return peer or "unknown peer"


def prepare_socket_path(path: str, who: str) -> None:
    """Make ``path`` ready to bind a private Unix socket: its folder exists (created 0700 when missing), and a
    stale socket file from a killed run is removed. Nothing else is ever removed or followed.

    Raises:
        ConnectError: ``path`` is a symlink or not a socket, or a live listener is there ("address in use").
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)  # whatever the umask
        except OSError as exc:
            raise ConnectError(f"{who} cannot create the socket folder {folder}: {exc.strerror or exc}") from exc
    else:
        mode = stat.S_IMODE(os.stat(folder).st_mode)
        if mode & 0o002 and not mode & stat.S_ISVTX:
            raise ConnectError(
                f"{who} will not listen in {folder}: anyone may replace files there (mode {mode:o}); "
                "choose a private folder (e.g. one made with mkdir -m 700)"
            )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConnectError(f"{who} will not listen on {path}: it is a symbolic link; remove it or choose another path")
    if not stat.S_ISSOCK(st.st_mode):
        raise ConnectError(
            f"{who} will not listen on {path}: a file that is not a socket is there; choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConnectError(f"{who} cannot check the socket file {path}: {exc.strerror or exc}") from exc
    else:
        raise ConnectError(
            f"{who} cannot listen on {path}: address in use (another process listens there; stop it or choose "
            "another path)"
        )
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):  # nothing listens: a stale socket from a killed run
        os.unlink(path)
    _log.info(
        "%s removed the stale socket file %s (left by a run that did not end cleanly)", who, path, extra={"site": who}
    )


def warn_unauthenticated(endpoint: EndpointCore) -> None:
    """One warning at start when site identities are not authenticated (modes clear and tls)."""
    if endpoint.tls.mode == "mtls":
        return
    where = endpoint.bound if endpoint.is_server else endpoint.server_address
    scope = "any process of this user" if (where or "").startswith("unix:") else "anyone who can reach the server"
    what = (
        "nothing is encrypted or authenticated"
        if endpoint.tls.mode == "clear"
        else "the server is authenticated, the sites are not (they present no certificates)"
    )
    _log.warning(
        "%s: security mode %s: %s, so site identities are not authenticated: %s (%s) can claim a site name. "
        "Between organisations use mtls (--mtls, certificates from `flarelite provision`).",
        endpoint.address,
        endpoint.tls.mode,
        what,
        scope,
        where,
        extra={"site": endpoint.address},
    )


class Listening(DataRoutes):
    """Listen, accept, check who connects, and tell the sites who else is connected."""

    _stream_log: _StreamLog | None = None

    async def _serve(self) -> None:
        server = grpc.aio.server(options=self._grpc_options())
        pb_grpc.add_TransportServicer_to_server(_Servicer(self), server)
        creds = server_credentials(self.tls)
        assert self.listen is not None
        socket_path = unix_path(self.listen)
        if socket_path is not None:
            prepare_socket_path(socket_path, self.address)
        try:
            previous = os.umask(0o077) if socket_path is not None else None  # the socket is born private
            try:
                port = server.add_secure_port(self.listen, creds) if creds else server.add_insecure_port(self.listen)
            finally:
                if previous is not None:
                    os.umask(previous)
        except Exception as exc:
            raise ConnectError(f"{self.address} cannot listen on {self.listen!r}: {exc}") from exc
        if socket_path is None:
            if port == 0:
                raise ConnectError(f"{self.address} cannot listen on {self.listen!r} (address in use?)")
            host = self.listen.rsplit(":", 1)[0]
            self.bound = f"{host}:{port}"
        else:
            if port == 0:
                raise ConnectError(f"{self.address} cannot listen on {self.listen!r} (is the folder writable?)")
            os.chmod(socket_path, 0o600)  # and stays private, whatever the umask was
            self.bound = self.listen
        await server.start()
        self._grpc_server = server
        try:
            kind = channel_kind(self.data_plane, self.tls.mode, self.listen)  # the server, or a site for its peers
            if kind == "unix" and socket_path is not None:
                self._start_data_listener(socket_path)
            elif kind == "tcp":
                self._start_tcp_data_listener(tcp_host(self.bound))
        except BaseException:  # not started after all: nothing of it stays bound
            self._grpc_server = None
            await server.stop(0)
            raise
        _log.info("%s listening on %s (%s)", self.address, self.bound, self.tls.mode, extra={"site": self.address})
        if self.is_server:
            warn_unauthenticated(self)

    def _log_stream(self, level: int, context: Any, msg: str, *args: Any) -> None:
        if self._stream_log is None:
            self._stream_log = _StreamLog()
        try:
            peer = context.peer() or ""
        except Exception:  # the call is gone already
            peer = ""
        self._stream_log(level, peer, msg, *args, site=self.address)

    async def _accept(self, context: Any) -> None:
        try:
            await self._accept_stream(context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad stream ends here, with one (rate-limited) line, never a traceback
            self._log_stream(logging.WARNING, context, "%s: dropped a bad stream: %r", self.address, exc)

    async def _accept_stream(self, context: Any) -> None:
        try:
            first = await asyncio.wait_for(context.read(), timeout=HELLO_TIMEOUT)
        except asyncio.TimeoutError:
            self._log_stream(
                logging.WARNING, context, "%s: a stream sent no hello within %ss", self.address, HELLO_TIMEOUT
            )
            return
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("body") != "hello":
            self._log_stream(
                logging.WARNING,
                context,
                "%s: a stream began with %r instead of a hello; ended it",
                self.address,
                first.WhichOneof("body"),
            )
            return
        name = first.hello.name
        if not self._running:
            return  # stopping: end the stream without a refusal, so the client tries again later
        if not self.is_server and name not in self._peers:
            await self._await_announcement(name)
        refusal = self._check_hello(name, first.hello.version, context)
        old = self._conns.get(name) if not refusal else None
        if old is not None and not old.closed and self.tls.mode != "mtls":
            # nothing proves who this is: the connected site keeps its place; a site that really reconnects
            # retries until its old connection times out (heartbeats)
            refusal = (
                f"{ALREADY_CONNECTED}: {name!r} is connected to {self.address} already, and in {self.tls.mode} "
                "mode a second connection cannot prove it is the same site"
            )
        if refusal:
            self._log_stream(
                logging.WARNING, context, "%s refused a connection claiming to be %r: %s", self.address, name, refusal
            )
            await context.write(pb.Envelope(refused=pb.Refused(reason=refusal)))
            return
        if old is not None:  # mtls: the certificate's owner reconnected; its stale connection goes
            old.close(f"{name} connected again")
        if not self.is_server:  # a peer's direct connection to this site
            conn = Connection(name, context.write, self.heartbeat_interval, reroute=self._via_server(name))
            self._conns[name] = conn
            data_address, data_token = self._offer_data(name, conn) if first.hello.data_plane else ("", b"")
            welcome = pb.Welcome(
                name=name, max_message_size=self.max_message_size, data_address=data_address, data_token=data_token
            )
            await context.write(pb.Envelope(welcome=welcome))
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
        data_address, data_token = self._offer_data(name, conn) if first.hello.data_plane else ("", b"")
        self._conns[name] = conn
        self._broadcast_peer(name, True)
        await context.write(
            pb.Envelope(
                welcome=pb.Welcome(
                    name=name,
                    peers=peers,
                    max_message_size=self.max_message_size,
                    addresses=addresses,
                    relay_window=self.relay_window,
                    data_address=data_address,
                    data_token=data_token,
                )
            )
        )
        self._peer_event(name, True)
        writer = self._spawn(conn.run_writer())  # what was queued for this site meanwhile goes after the welcome
        beat = self._spawn(conn.run_heartbeat(self.heartbeat_timeout))
        try:
            await conn.until_closed(self._read_frames(conn, self._members_only(conn, context.read, context)))
        except (ProtocolError, asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
            conn.close(f"{name}: {exc!r}")
            if isinstance(exc, ProtocolError):
                self._log_stream(logging.ERROR, context, "%s: dropped %s: %s", self.address, name, exc)
        finally:
            conn.close(conn.close_reason or f"{name} disconnected")
            writer.cancel()
            beat.cancel()
            await self._finish(self._end_member(name, conn))

    async def _end_member(self, name: str, conn: Connection) -> None:
        """``name``'s stream to the server ended: what its data channel holds is delivered, then it is gone."""
        await self._drop_data(name, conn)
        if self._conns.get(name) is conn:
            del self._conns[name]
            self._addresses.pop(name, None)
            self._broadcast_peer(name, False)
            self._peer_event(name, False)

    def _members_only(self, conn: Connection, read: Callable[[], Any], context: Any) -> Callable[[], Any]:
        """``read``, as long as the admission rule still admits ``conn`` (re-checked every MEMBER_RECHECK s).

        A site that stops being a member (an @ALL site that was not ready when the run started) is given
        MEMBER_GRACE seconds to hear why from the runtime; what it sends meanwhile is dropped, then its
        connection is closed. Nothing from it reaches another site.
        """
        next_check = time.monotonic() + MEMBER_RECHECK
        refused_at: float | None = None

        async def checked() -> Any:
            nonlocal next_check, refused_at
            while True:
                env = await read()
                if env is grpc.aio.EOF or env is None or self._admission is None:
                    return env
                now = time.monotonic()
                if refused_at is None:
                    if now < next_check:
                        return env
                    next_check = now + MEMBER_RECHECK
                    refusal = self._admission(conn.name)
                    if not refusal:
                        return env
                    refused_at = now
                    self._log_stream(
                        logging.WARNING,
                        context,
                        "%s: %s is no longer admitted (%s); closing its connection",
                        self.address,
                        conn.name,
                        refusal,
                    )
                if now - refused_at >= MEMBER_GRACE:
                    conn.close(f"{conn.name} is no longer admitted")
                    return grpc.aio.EOF

        return checked

    async def _await_announcement(self, name: str, timeout: float = PEER_ANNOUNCE_WAIT) -> None:
        """A peer may dial before the server's PeerEvent about it arrives here: give that event a moment."""
        deadline = time.monotonic() + timeout
        while name not in self._peers and self._running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _check_hello(self, name: str, version: int, context: Any) -> str:
        if version != WIRE_VERSION:
            return f"wire version {version} is not supported (this server speaks {WIRE_VERSION})"
        if name == self.address:
            return f"{name!r} is this endpoint's own name"
        if self.tls.mode == "mtls":
            identity = peer_identity(context)
            if identity != name:
                return f"the client certificate is for {identity!r}, not {name!r}"
        if not self.is_server:  # a peer listener: only the peers the server announced, never the server
            if name == self._server_name:
                return f"{name!r} is the server's name; the server never connects to a site"
            if name not in self._peers:
                return f"{name!r} is not a peer of {self.address} (the server has not announced it)"
            if name < self.address:
                return f"{self.address} dials {name!r} itself (the site whose name sorts later dials)"
        return self.refusal(name) or ""

    def _broadcast_peer(self, name: str, connected: bool) -> None:
        address = self._addresses.get(name, "") if connected else ""
        event = pb.PeerEvent(name=name, connected=connected, address=address)
        for other, conn in list(self._conns.items()):
            if other != name:
                conn.enqueue(pb.Envelope(peer=event))


class _Servicer(pb_grpc.TransportServicer):
    def __init__(self, endpoint: Listening) -> None:
        self.endpoint = endpoint

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # noqa: N802 (gRPC's name)
        await self.endpoint._accept(context)
