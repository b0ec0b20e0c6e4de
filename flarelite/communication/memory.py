"""In-memory transport: endpoints of one process exchange frames through a hub, copying buffers once."""

from __future__ import annotations

import threading

from ..buffers import copied_buffer
from ..errors import ConnectError, ProtocolError, TransportClosed
from .protocol import CommunicationProtocol, Frame, FrameHandler, PeerHandler
from .sizes import max_message_size as message_limit


class InMemoryHub:
    """The registry that in-memory endpoints join; one per simulated deployment.

    An endpoint with an admission rule (a server) hears of every endpoint joining and leaving; the others hear
    of a peer once they have exchanged a frame with it (either way): those are the peers whose comings and goings
    matter to them (a pending request, the server). So 10,000 sites leaving cost about 10,000 events, not
    10,000 x 10,000.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, InMemoryCommunicationProtocol] = {}
        self._cut: dict[str, InMemoryCommunicationProtocol] = {}
        self._contacts: dict[str, set[str]] = {}  # address -> the addresses it has exchanged frames with
        self._guards: list[InMemoryCommunicationProtocol] = []  # endpoints that joined with an admission rule

    def _link(self, a: str, b: str) -> None:
        with self._lock:
            self._contacts.setdefault(a, set()).add(b)
            self._contacts.setdefault(b, set()).add(a)

    def _gates(self) -> list[InMemoryCommunicationProtocol]:
        """The joined endpoints with an admission rule (call with the lock held)."""
        return [e for e in self._guards if self._endpoints.get(e.address) is e]

    def _known_to(self, address: str) -> list[InMemoryCommunicationProtocol]:
        """The joined endpoints to tell of ``address`` joining or leaving (call with the lock held): those with an
        admission rule (a server hears of every site, as a gRPC server of its connections), and those that have
        exchanged frames with it."""
        told = {e.address: e for e in self._gates() if e.address != address}
        for a in self._contacts.get(address, ()):
            endpoint = self._endpoints.get(a)
            if endpoint is not None:
                told[a] = endpoint
        return list(told.values())

    def _join(self, endpoint: InMemoryCommunicationProtocol) -> None:
        with self._lock:
            if endpoint.address in self._endpoints:
                raise ConnectError(f"in-memory address {endpoint.address!r} is already in use on this hub")
            for other in self._gates():  # an endpoint with an admission rule turns away whom it does not admit
                reason = other._refuses(endpoint.address)
                if reason:
                    raise ConnectError(f"{other.address} refused {endpoint.address!r}: {reason}")
            self._endpoints[endpoint.address] = endpoint
            if endpoint._admission is not None:
                self._guards = [*self._gates(), endpoint]
            others = self._known_to(endpoint.address)
        for other in others:
            other._peer_event(endpoint.address, True)

    def _leave(self, endpoint: InMemoryCommunicationProtocol) -> None:
        with self._lock:
            if self._endpoints.get(endpoint.address) is not endpoint:
                return
            del self._endpoints[endpoint.address]
            others = self._known_to(endpoint.address)
        for other in others:
            other._peer_event(endpoint.address, False)

    def disconnect(self, address: str) -> None:
        """Cut ``address`` off, as a network failure would: it and the endpoints that know it see each other leave."""
        with self._lock:
            endpoint = self._endpoints.pop(address, None)
            if endpoint is None:
                raise ConnectError(f"no endpoint {address!r} on this hub to disconnect")
            self._cut[address] = endpoint
            others = self._known_to(address)
        for other in others:
            other._peer_event(address, False)
            endpoint._peer_event(other.address, False)

    def reconnect(self, address: str) -> None:
        """Undo ``disconnect``: the endpoint and those that know it see each other join again."""
        with self._lock:
            endpoint = self._cut.pop(address, None)
            if endpoint is None:
                raise ConnectError(f"{address!r} was not disconnected")
            others = self._known_to(address)
            self._endpoints[address] = endpoint
        for other in others:
            other._peer_event(address, True)
            endpoint._peer_event(other.address, True)

    def _lookup(self, address: str) -> InMemoryCommunicationProtocol | None:
        return self._endpoints.get(address)

    def addresses(self) -> list[str]:
        """Return the addresses currently joined."""
        with self._lock:
            return list(self._endpoints)


_default_hub = InMemoryHub()


class InMemoryCommunicationProtocol(CommunicationProtocol):
    """Endpoint on an ``InMemoryHub``; ``send`` copies the buffers and calls the target's handler directly."""

    def __init__(
        self, address: str, *, hub: InMemoryHub | None = None, max_message_size: int | str | None = None
    ) -> None:
        super().__init__(address)
        self.hub = hub if hub is not None else _default_hub
        self.max_message_size = message_limit(max_message_size)  # as the gRPC endpoint's (default 2 GiB)
        self._on_frame: FrameHandler | None = None
        self._on_peer: PeerHandler | None = None
        self._running = False
        self._linked: set[str] = set()  # peers this endpoint has told the hub it exchanged frames with

    def start(self, on_frame: FrameHandler, on_peer: PeerHandler | None = None) -> None:
        """Join the hub under ``address``."""
        if self._running:
            raise RuntimeError(f"{self!r} is already started")
        self._on_frame = on_frame
        self._on_peer = on_peer
        self._running = True
        self.hub._join(self)

    def send(self, target: str, frame: Frame, timeout: float | None = None) -> None:
        """Copy ``frame``'s buffers and hand it to ``target``'s handler on the calling thread.

        Nothing is queued here, so nothing waits for room and ``timeout`` never runs out (the handler returns
        quickly, as the contract asks); it is accepted so that callers need not know the transport.
        """
        if not self._running:
            raise TransportClosed(f"{self!r} is stopped; cannot send {frame.kind} to {target!r}")
        if self.hub._lookup(self.address) is not self:
            raise ConnectError(f"{self.address!r} is cut off from the in-memory hub; cannot send to {target!r}")
        endpoint = self.hub._lookup(target)
        if endpoint is None or endpoint._on_frame is None:
            raise ConnectError(f"no endpoint {target!r} on the in-memory hub (is the site running?)")
        reason = endpoint._refuses(self.address)
        if reason:
            raise ConnectError(f"{target} refused {self.address!r}: {reason}")
        if target not in self._linked:
            self._linked.add(target)
            endpoint._linked.add(self.address)
            self.hub._link(self.address, target)
        size = frame.nbytes
        if size > self.max_message_size:
            raise ProtocolError(
                f"{frame.kind} frame to {target!r} is {size} bytes, over the limit of {self.max_message_size} bytes "
                "(max_message_size); send less data per message"
            )
        if size > endpoint.max_message_size:  # what the gRPC transport does: the header comes with the error
            delivered = frame.addressed(self.address, target, [])
            delivered.meta = b""
            delivered.error = f"a {size}-byte message exceeds the limit of {endpoint.max_message_size} bytes"
            endpoint._on_frame(delivered)
            return
        # one copy of each buffer: the receiver never shares the sender's memory
        delivered = frame.addressed(self.address, target, [copied_buffer(b) for b in frame.buffers])
        endpoint._on_frame(delivered)

    def stop(self) -> None:
        """Leave the hub."""
        if not self._running:
            return
        self._running = False
        with self.hub._lock:
            self.hub._cut.pop(self.address, None)
        self.hub._leave(self)

    def _refuses(self, address: str) -> str | None:
        """Why this endpoint's admission rule turns ``address`` away (None: no rule, or admitted)."""
        if self._admission is None or address == self.address:
            return None
        return self.refusal(address)

    def _peer_event(self, address: str, connected: bool) -> None:
        if self._on_peer is not None and self._running and not self._refuses(address):
            self._on_peer(address, connected)
