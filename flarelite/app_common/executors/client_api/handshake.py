"""The site's side of the Client API handshake: accept connections until one presents the launch's token.

Every connection to the private socket is checked on a short-lived thread of its own (its first message must be
a HELLO holding the bootstrap's token, within ``HELLO_TIMEOUT`` seconds and ``HELLO_MAX_SIZE`` bytes), so a
connection that sends half a frame, or nothing, delays no other: the training script is served as soon as its
HELLO arrives. At most ``MAX_PENDING`` connections are checked at once; a further one pushes out the oldest.
The first connection with the token wins and the others are closed. Refusals are logged, rate-limited.
"""

from __future__ import annotations

import collections
import hmac
import select
import socket
import threading
import time
from typing import Callable

from flarelite import logsafe
from flarelite.client.channel import HELLO_MAX_SIZE, MAX_MESSAGE_SIZE, Channel, Msg
from flarelite.errors import CodecError, ProtocolError, TransportError

HELLO_TIMEOUT = 10.0  # a connection must present its token this soon
MAX_PENDING = 16  # connections checked at once (also the listen backlog)


class Doorman:
    """Accepts connections on ``listener`` and returns the first that presents ``token`` (see the module doc)."""

    def __init__(self, listener: socket.socket, token: str, peer: str, warn: Callable[[str], None]) -> None:
        self.listener = listener
        listener.setblocking(False)  # select says when to accept; a connection reset meanwhile blocks nothing
        self.token = token.encode()
        self.peer = peer
        self.warn = warn
        self._lock = threading.Lock()
        self._pending: collections.deque[Channel] = collections.deque()
        self._winner: Channel | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._refusals = logsafe.RateLimit()

    def accept(self, poll: float, check: Callable[[], None]) -> Channel:
        """Serve the socket until a connection presents the token; return its channel.

        ``check`` runs every ``poll`` seconds and raises to give up (the script exited, launch_timeout...).

        Raises:
            RuntimeError: the socket failed, or whatever ``check`` raised.
        """
        try:
            while True:
                with self._lock:
                    if self._winner is not None:
                        return self._winner
                check()
                ready, _, _ = select.select([self.listener, self._wake_r], [], [], poll)
                if self.listener not in ready:
                    continue
                try:
                    conn, _ = self.listener.accept()
                except (BlockingIOError, InterruptedError, socket.timeout):
                    continue
                except OSError as exc:
                    raise RuntimeError(f"the Client API socket failed: {exc}") from exc
                self._admit(conn)
        finally:
            self._close()

    def _admit(self, conn: socket.socket) -> None:
        channel = Channel(conn, peer=self.peer, max_message_size=MAX_MESSAGE_SIZE)
        with self._lock:
            self._pending.append(channel)
            pushed_out = self._pending.popleft() if len(self._pending) > MAX_PENDING else None
        if pushed_out is not None:
            pushed_out.close()  # its thread sees the channel closed and ends
            self._refused(f"more than {MAX_PENDING} connections at once without a HELLO: the oldest was dropped")
        threading.Thread(target=self._check, args=(channel,), name="client-api-hello", daemon=True).start()

    def _check(self, channel: Channel) -> None:
        try:
            kind, body = channel.recv(deadline=time.monotonic() + HELLO_TIMEOUT, max_size=HELLO_MAX_SIZE)
            if kind != Msg.HELLO:
                raise ProtocolError(f"the first message was kind {kind}, not HELLO")
            if not hmac.compare_digest(body["token"].encode(), self.token):
                raise ProtocolError("wrong token")
        except (TransportError, CodecError) as exc:
            with self._lock:
                if channel in self._pending:
                    self._pending.remove(channel)
            if not channel.closed:  # else it was pushed out, or the handshake is over: said already
                channel.close()
                self._refused(str(exc))
            return
        with self._lock:
            if channel in self._pending:
                self._pending.remove(channel)
            won = self._winner is None and not self._wake_w.fileno() < 0
            if won:
                self._winner = channel
        if not won:
            channel.close()
            return
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass

    def _refused(self, reason: str) -> None:
        said = self._refusals.check(reason)
        if said is not None:
            more = f" ({said[0]} more since)" if said[0] else ""
            self.warn(f"refused a connection to the Client API socket: {reason}{more}")

    def _close(self) -> None:
        with self._lock:
            pending, self._pending = list(self._pending), collections.deque()
            self._wake_w.close()
            self._wake_r.close()
        for channel in pending:
            channel.close()
