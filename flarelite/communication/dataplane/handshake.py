"""Opening a data channel on one machine: the server's listening Unix socket, a site dialing it, and the hello.

The server offers a channel to a site in its gRPC ``Welcome`` (a socket path and a one-time token made for that
connection). The site dials the path and says ``FLDP <version> <name> <token>``; the server answers ``\\0`` (the
channel is open) or ``\\1 <reason>``. Who may open one: a process of the same user (the socket is 0600 in a 0700
folder, and each side checks the other's ``SO_PEERCRED``), presenting the token the server gave that site over
its authenticated gRPC connection, within seconds, once. So the channel's identity is the gRPC connection's.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

from ... import logsafe
from ...errors import ConnectError

_log = logging.getLogger("flarelite.dataplane")
logsafe.install(_log)  # names and reasons a peer sent are logged escaped

MAGIC = b"FLDP"
VERSION = 1
HELLO_TIMEOUT = 2.0  # seconds a new connection has to say hello (each on its own thread: none delays another)
MAX_HANDSHAKES = 16  # connections saying hello at once; more are closed at once
TOKEN_BYTES = 32

Attach = Callable[[str, bytes, socket.socket], "str | None"]  # name, token, socket -> refusal reason or None


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


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        part = sock.recv(n - len(out))
        if not part:
            raise ConnectionError("closed during the hello")
        out += part
    return bytes(out)


class DataListener:
    """The server's data-plane socket at ``path``: accepts connections and hands each hello to ``attach``."""

    def __init__(self, path: str, owner: str, attach: Attach) -> None:
        self.path, self.owner, self._attach = path, owner, attach
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._stopped = False

    def start(self) -> None:
        """Bind (a private socket file) and accept on a thread of its own."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o077)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"{self.owner} cannot listen for data channels on {self.path}: {exc}") from exc
        finally:
            os.umask(previous)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.owner}-data-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and remove the socket file."""
        self._stopped = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
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
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopped:
                    return
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()  # too many hellos at once: one of them is stalling; this one may try again
                continue
            threading.Thread(target=self._handshake, args=(conn,), name=f"{self.owner}-data-hello", daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        try:
            problem = same_user(conn)
            if problem:
                _log.warning("%s: refused a data-plane connection: %s", self.owner, problem, extra={"site": self.owner})
                conn.close()
                return
            conn.settimeout(HELLO_TIMEOUT)
            try:
                magic, version, name_len = struct.unpack("<4sBB", _recv_exact(conn, 6))
                if magic != MAGIC or version != VERSION:
                    raise ConnectionError("not a flarelite data-plane hello")
                name = _recv_exact(conn, name_len).decode("utf-8", "replace")
                token = _recv_exact(conn, TOKEN_BYTES)
            except (OSError, ConnectionError, struct.error) as exc:
                _log.info(
                    "%s: a data-plane connection said no valid hello: %s", self.owner, exc, extra={"site": self.owner}
                )
                conn.close()
                return
            refusal = self._attach(name, token, conn)
            if refusal:
                _log.warning(
                    "%s: refused a data channel for %r: %s", self.owner, name, refusal, extra={"site": self.owner}
                )
                reason = refusal.encode()[:200]
                try:
                    conn.sendall(b"\x01" + bytes([len(reason)]) + reason)
                except OSError:
                    pass
                conn.close()
        finally:
            self._slots.release()


def accept_reply(conn: socket.socket) -> None:
    """Tell the dialing site that its channel is open (the server calls it once the channel is in place)."""
    conn.sendall(b"\x00")


def dial(path: str, name: str, token: bytes, timeout: float) -> socket.socket:
    """Open a data channel to the server's socket at ``path`` as ``name`` with ``token``; the connected socket.

    Raises:
        ConnectError: it cannot be reached, it is not run by this user, or it refused the channel (why).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        problem = same_user(sock)
        if problem:
            raise ConnectError(f"the data-plane socket {path} is not the server's: {problem}")
        raw = name.encode()
        sock.sendall(struct.pack("<4sBB", MAGIC, VERSION, len(raw)) + raw + token)
        answer = _recv_exact(sock, 1)
        if answer != b"\x00":
            size = _recv_exact(sock, 1)[0]
            reason = _recv_exact(sock, size).decode("utf-8", "replace")
            raise ConnectError(f"the server refused the data channel: {reason}")
    except ConnectError:
        sock.close()
        raise
    except (OSError, ConnectionError) as exc:
        sock.close()
        raise ConnectError(f"no data channel to {path}: {exc}") from exc
    return sock
