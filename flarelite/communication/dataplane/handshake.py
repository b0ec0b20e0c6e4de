"""Opening a data channel: the listening socket (the server's, or a site's for its peers), a site dialing it, and
the hello.

The listener offers a channel to a site in its gRPC ``Welcome``: where to dial (a Unix socket path, or
``tcp:PORT`` on the host the site reached it at) and a one-time token made for that connection. The site dials
and says ``FLDP <version> <name> <token>``; the listener answers ``\\0`` (the channel is open) or
``\\1 <reason>``. Who may open one:

- on one machine (a Unix socket): a process of the same user (the socket is 0600 in a 0700 folder, and each side
  checks the other's ``SO_PEERCRED``), presenting the token;
- across machines (TCP): under tls/mtls the connection is TLS first (``tls_stream``), the listener proving its
  certificate's name to the site and, under mtls, the site its own (its certificate's name must be the name in
  its hello); then the token. In clear mode (only when asked for, ``data_plane="tcp"``) the token alone, as the
  gRPC connection has no more.

The token was given to that site over its authenticated gRPC connection, is good within seconds, once; so the
channel's identity is the gRPC connection's.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from ... import logsafe
from ...errors import ConnectError
from .tls_stream import TLSStream

_log = logging.getLogger("flarelite.dataplane")
logsafe.install(_log)  # names and reasons a peer sent are logged escaped

MAGIC = b"FLDP"
VERSION = 1
HELLO_TIMEOUT = 2.0  # seconds a new connection has, TLS and hello together (each on its own thread)
MAX_HANDSHAKES = 16  # connections saying hello at once; one more cuts the oldest of the source holding the most
TOKEN_BYTES = 32

Attach = Callable[[str, bytes, Any], "str | None"]  # name, token, socket (or TLSStream) -> refusal reason or None
TCP_PREFIX = "tcp:"  # an offer of a TCP channel: tcp:PORT, on the host the site dialed


def same_user(sock: socket.socket) -> str | None:
    """Why the process at the other end of the Unix socket ``sock`` is not trusted (None when it runs as us)."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None:
        return None  # no way to ask here: the socket's 0600 mode in a 0700 folder is the check
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
    except OSError as exc:
        return f"cannot read its credentials: {exc}"
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        return f"it runs as uid {uid}, not as this user ({os.getuid()})"
    return None


def _recv_exact(sock: Any, n: int, deadline: float | None = None) -> bytes:
    """The next ``n`` bytes; with ``deadline`` (a ``time.monotonic()`` value) all of them by then, however the
    peer trickles them (ConnectionError past it)."""
    out = bytearray()
    while len(out) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError("the other end did not finish the hello in time")
            sock.settimeout(left)
        part = sock.recv(n - len(out))
        if not part:
            raise ConnectionError("closed during the hello")
        out += part
    return bytes(out)


class DataListener:
    """A data-plane socket: accepts connections and hands each hello to ``attach``.

    ``DataListener.unix(path, ...)``: a private socket file on this machine. ``DataListener.tcp(host, ...)``: a
    free TCP port on ``host`` (the interface the gRPC listener is on), TLS with ``context`` (None: clear).
    ``offer`` is what a Welcome tells the site to dial.
    """

    def __init__(self, sock: socket.socket, offer: str, owner: str, attach: Attach, *, path: str | None = None,
                 context: ssl.SSLContext | None = None, mtls: bool = False) -> None:  # fmt: skip
        self.offer, self.owner, self._attach = offer, owner, attach
        self.path = path
        self._sock: socket.socket | None = sock
        self._context, self._mtls = context, mtls
        self._thread: threading.Thread | None = None
        self._hellos: dict[socket.socket, str] = {}  # connections saying hello -> their source, oldest first
        self._hellos_lock = threading.Lock()
        self._stopped = False
        self._log_limit = logsafe.RateLimit()  # a TCP port anyone can reach: one line per kind every 10 s

    def _say(self, level: int, kind: str, msg: str, *args: object) -> None:
        seen = self._log_limit.check(kind)
        if seen is None:
            return
        quiet, _ = seen
        more = f" ({quiet} more since the last such line)" if quiet else ""
        _log.log(level, f"%s: {msg}{more}", self.owner, *args, extra={"site": self.owner})

    @classmethod
    def unix(cls, path: str, owner: str, attach: Attach) -> DataListener:
        """Bind a private socket file at ``path``.

        Raises:
            ConnectError: it cannot be bound.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o077)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"{owner} cannot listen for data channels on {path}: {exc}") from exc
        finally:
            os.umask(previous)
        os.chmod(path, 0o600)
        return cls(sock, path, owner, attach, path=path)

    @classmethod
    def tcp(cls, host: str, owner: str, attach: Attach, context: ssl.SSLContext | None, mtls: bool) -> DataListener:
        """Bind a free TCP port on ``host`` ("" or "0.0.0.0": every interface, "::" for IPv6).

        Raises:
            ConnectError: it cannot be bound.
        """
        try:
            family, kind, proto, _, where = socket.getaddrinfo(
                host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.bind(where)
        except OSError as exc:
            raise ConnectError(f"{owner} cannot listen for data channels on {host or '*'}: {exc}") from exc
        return cls(sock, f"{TCP_PREFIX}{sock.getsockname()[1]}", owner, attach, context=context, mtls=mtls)

    def start(self) -> None:
        """Listen and accept on a thread of its own."""
        assert self._sock is not None
        self._sock.listen(64)
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.owner}-data-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting (and remove the socket file)."""
        self._stopped = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopped:
            try:
                conn, address = self._sock.accept()
            except OSError:
                if self._stopped:
                    return
                continue
            source = address[0] if isinstance(address, tuple) else ""  # (a Unix socket's peers are all this user)
            with self._hellos_lock:
                cut = self._make_room() if len(self._hellos) >= MAX_HANDSHAKES else None
                self._hellos[conn] = source
            if cut is not None:
                self._say(logging.WARNING, "busy", "%d data-plane hellos at once: cut the oldest, from %s",
                          MAX_HANDSHAKES, cut[1] or "this machine")  # fmt: skip
                try:
                    cut[0].shutdown(socket.SHUT_RDWR)  # its hello thread fails at once and closes it
                except OSError:
                    pass
            threading.Thread(target=self._handshake, args=(conn,), name=f"{self.owner}-data-hello", daemon=True).start()

    def _make_room(self) -> tuple[socket.socket, str]:
        """Take the oldest hello of the source holding the most out of the table (lock held): a peer that keeps
        connections open without saying hello cuts its own first, and never keeps a new one out."""
        counts: dict[str, int] = {}
        for source in self._hellos.values():
            counts[source] = counts.get(source, 0) + 1
        busiest = max(counts, key=counts.__getitem__)
        conn = next(c for c, source in self._hellos.items() if source == busiest)
        del self._hellos[conn]
        return conn, busiest

    def _hello_over(self, conn: socket.socket) -> None:
        with self._hellos_lock:
            self._hellos.pop(conn, None)

    def _secure(self, conn: socket.socket, deadline: float) -> Any:
        """The connection as the hello reads it: checked to be ours (Unix), or TLS (TCP under tls/mtls).

        Raises:
            ConnectionError: refused (why).
        """
        if conn.family == socket.AF_UNIX:
            problem = same_user(conn)
            if problem:
                raise ConnectionError(problem)
            return conn
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is None:
            return conn
        stream = TLSStream(conn, self._context, server_side=True, server_hostname=None)
        try:
            stream.handshake(max(0.0, deadline - time.monotonic()))
        except OSError as exc:
            raise ConnectionError(f"no TLS: {exc}") from None
        return stream

    def _handshake(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + HELLO_TIMEOUT  # for all of it: a peer trickling bytes gains nothing
        try:
            try:
                link = self._secure(conn, deadline)
            except ConnectionError as exc:
                self._say(logging.WARNING, "refused", "refused a data-plane connection: %s", exc)
                conn.close()
                return
            try:
                magic, version, name_len = struct.unpack("<4sBB", _recv_exact(link, 6, deadline))
                if magic != MAGIC or version != VERSION:
                    raise ConnectionError("not a flarelite data-plane hello")
                name = _recv_exact(link, name_len, deadline).decode("utf-8", "replace")
                token = _recv_exact(link, TOKEN_BYTES, deadline)
                link.settimeout(max(0.001, deadline - time.monotonic()))
            except (OSError, ConnectionError, struct.error) as exc:
                self._say(logging.INFO, "hello", "a data-plane connection said no valid hello: %s", exc)
                conn.close()
                return
            self._hello_over(conn)  # said: no longer a hello that a newer connection may cut
            refusal = None
            if self._mtls and isinstance(link, TLSStream) and link.peer_common_name() != name:
                refusal = f"its certificate is {link.peer_common_name()!r}'s, not {name!r}'s"
            refusal = refusal or self._attach(name, token, link)
            if refusal:
                self._say(logging.WARNING, "channel", "refused a data channel for %r: %s", name, refusal)
                reason = refusal.encode()[:200]
                try:
                    link.sendall(b"\x01" + bytes([len(reason)]) + reason)
                except OSError:
                    pass
                conn.close()
        finally:
            self._hello_over(conn)


def accept_reply(conn: socket.socket) -> None:
    """Tell the dialing site that its channel is open (the server calls it once the channel is in place)."""
    conn.sendall(b"\x00")


def dial(
    where: str,
    name: str,
    token: bytes,
    timeout: float,
    *,
    host: str | None = None,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Any:
    """Open a data channel as ``name`` with ``token`` where an offer said (``where``: a socket path, or
    ``tcp:PORT`` on ``host``, TLS with ``context`` verifying ``server_hostname`` when given); the connected socket
    (or TLSStream).

    Raises:
        ConnectError: it cannot be reached, it is not run by this user, its certificate does not verify, or it
            refused the channel (why).
    """
    tcp = where.startswith(TCP_PREFIX)
    deadline = time.monotonic() + timeout  # for all of it: a listener trickling its answer gains nothing
    try:
        if tcp:
            port = int(where[len(TCP_PREFIX) :])
            if not host or not 0 < port < 65536:
                raise ConnectError(f"the data channel offer {where!r} names no port this site can dial")
            sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(where)
    except ValueError:
        raise ConnectError(f"the data channel offer {where!r} names no port this site can dial") from None
    except OSError as exc:
        target = f"{host}:{where[len(TCP_PREFIX) :]}" if tcp else where
        raise ConnectError(f"no data channel to {target}: {exc}") from exc
    link: Any = sock
    try:
        if not tcp:
            problem = same_user(sock)
            if problem:
                raise ConnectError(f"the data-plane socket {where} is not the server's: {problem}")
        elif context is not None:
            link = TLSStream(sock, context, server_side=False, server_hostname=server_hostname)
            link.handshake(max(0.0, deadline - time.monotonic()))
        raw = name.encode()
        link.sendall(struct.pack("<4sBB", MAGIC, VERSION, len(raw)) + raw + token)
        answer = _recv_exact(link, 1, deadline)
        if answer != b"\x00":
            size = _recv_exact(link, 1, deadline)[0]
            reason = _recv_exact(link, size, deadline).decode("utf-8", "replace")
            raise ConnectError(f"the server refused the data channel: {reason}")
    except ConnectError:
        sock.close()
        raise
    except (OSError, ConnectionError) as exc:
        sock.close()
        raise ConnectError(f"no data channel to {where}: {exc}") from exc
    return link
