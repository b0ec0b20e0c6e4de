"""TLSStream: TLS over one connected TCP socket, safe for one reading thread and one writing thread at once.

A data channel reads on its reader thread while callers write on theirs; OpenSSL does not allow one ``SSL``
object to be used by two threads at once, so the socket is not wrapped (``ssl.SSLSocket``): the TLS state is an
``ssl.SSLObject`` over memory BIOs, used under a lock only for the moment of encrypting or decrypting; the raw
socket's blocking reads and writes happen outside it. Decryption writes straight into the caller's buffer
(``recv_into``: the destination array). The contexts come from the project's certificates (``TLSConfig``): the
listening side presents its certificate and, under mtls, requires one from the CA; the dialing side verifies the
listener's certificate against the name it expects (the server's, or a peer's own).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

from . import shared_memory as shm

_RAW = 256 << 10  # bytes read from the socket at a time
_PIECE = 256 << 10  # plaintext bytes encrypted at a time (what is encrypted waits in memory until sent)
_RECORD_OVERHEAD = 1 << 10  # what TLS adds to a small write, and more


def _room_for(sock: socket.socket, nbytes: int) -> bool:
    """Whether ``sock``'s send buffer takes ``nbytes`` more without waiting (False where that cannot be known: off
    Linux, whose TIOCOUTQ count this reads)."""
    if not shm.AVAILABLE:
        return False
    try:  # (Linux reports twice the buffer's size: half of it holds data)
        return shm.unread(sock) + nbytes <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
    except OSError:
        return False


def server_context(cfg: Any) -> ssl.SSLContext:
    """The listening side's context: its certificate; under mtls a client certificate from the CA is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.cert, cfg.key)
    if cfg.mode == "mtls":
        ctx.load_verify_locations(cfg.ca_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cfg: Any) -> ssl.SSLContext:
    """The dialing side's context: the listener's certificate must come from the CA; under mtls it presents its
    own."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cfg.ca_cert)
    if cfg.mode == "mtls" and cfg.cert:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    return ctx


class TLSStream:
    """A TLS connection over ``sock`` (connected, blocking) with the socket methods a data channel uses:
    ``sendall``, ``recv``, ``recv_into``, ``settimeout``, ``shutdown``, ``close``. ``handshake`` first.

    Failures raise OSError (``ssl.SSLError`` is one), as a socket's do.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None):
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._lock = threading.Lock()  # the TLS state: held only to encrypt or decrypt, never across socket calls
        self._send_lock = threading.Lock()  # what one writer encrypted goes out before another's
        self._raw = bytearray(_RAW)
        self._eof = False

    # set up ----------------------------------------------------------------------------------------------
    def handshake(self, timeout: float) -> None:
        """Complete the TLS handshake within ``timeout`` seconds.

        Raises:
            OSError: the peer's certificate does not verify, it closed, or the time ran out.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the TLS handshake did not finish in time") from None
                self.sock.settimeout(left)
                if not self._fill():
                    raise ConnectionError("closed during the TLS handshake") from None
                continue
            self._flush()
            return

    def peer_common_name(self) -> str | None:
        """The common name of the peer's verified certificate (None when it presented none)."""
        cert = self._tls.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    # the socket's methods ----------------------------------------------------------------------------------
    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        with self._send_lock:
            for offset in range(0, view.nbytes, _PIECE):
                with self._lock:
                    self._tls.write(view[offset : offset + _PIECE])
                    out = self._out.read()
                self.sock.sendall(out)

    def send_now(self, data: bytes) -> bool:
        """Write ``data`` (a small record) only if the socket can take all of its ciphertext at once: its send
        buffer has room beyond what waits there (Linux; elsewhere never). False: nothing was written."""
        if len(data) > _PIECE or not _room_for(self.sock, len(data) + _RECORD_OVERHEAD):
            return False
        if not self._send_lock.acquire(blocking=False):
            return False
        try:
            with self._lock:
                self._tls.write(data)
                out = self._out.read()
            sent = self.sock.send(out, socket.MSG_DONTWAIT)
            if sent < len(out):  # (the room was there a moment ago; encrypted, the rest must follow)
                self.sock.sendall(memoryview(out)[sent:])
            return True
        except BlockingIOError:
            self.sock.sendall(out)
            return True
        finally:
            self._send_lock.release()

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Decrypt into ``buffer`` what has arrived (at least 1 byte; 0 when the peer closed)."""
        view = memoryview(buffer).cast("B")
        n = min(nbytes or view.nbytes, view.nbytes)
        total = 0
        while True:
            with self._lock:
                while total < n:  # every record that has arrived, straight into the buffer
                    try:
                        got = self._tls.read(n - total, view[total:])
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        return total
                    if not got:
                        return total
                    total += got
            if total:
                return total
            if not self._fill():
                return 0

    def recv(self, n: int) -> bytes:
        out = bytearray(n)
        got = self.recv_into(out, n)
        return bytes(out[:got])

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    # the raw socket ----------------------------------------------------------------------------------------
    def _fill(self) -> bool:
        """Read what the socket has into the TLS state (blocking, outside the lock); False at the end."""
        if self._eof:
            return False
        got = self.sock.recv_into(self._raw)
        if got == 0:
            self._eof = True
            return False
        with self._lock:
            self._in.write(memoryview(self._raw)[:got])
        return True

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                out = self._out.read()
            if out:
                self.sock.sendall(out)
