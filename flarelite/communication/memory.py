"""In-memory transport: endpoints of one process exchange frames through a hub, copying buffers once."""

from __future__ import annotations

import threading

from ..errors import ConnectError, TransportClosed
from .protocol import CommunicationProtocol, Frame, FrameHandler, PeerHandler


class InMemoryHub:
    """The registry that in-memory endpoints join; one per simulated deployment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, InMemoryCommunicationProtocol] = {}
        self._cut: dict[str, InMemoryCommunicationProtocol] = {}

    def _join(self, endpoint: InMemoryCommunicationProtocol) -> None:
        with self._lock:
            if endpoint.address in self._endpoints:
                raise ConnectError(f"in-memory address {endpoint.address!r} is already in use on this hub")
            others = list(self._endpoints.values())
            self._endpoints[endpoint.address] = endpoint
        for other in others:
            other._peer_event(endpoint.address, True)

    def _leave(self, endpoint: InMemoryCommunicationProtocol) -> None:
        with self._lock:
            if self._endpoints.get(endpoint.address) is not endpoint:
                return
            del self._endpoints[endpoint.address]
            others = list(self._endpoints.values())
        for other in others:
            other._peer_event(endpoint.address, False)

    def disconnect(self, address: str) -> None:
        """Cut ``address`` off, as a network failure would: it and every other endpoint see each other leave."""
        with self._lock:
            endpoint = self._endpoints.pop(address, None)
            if endpoint is None:
                raise ConnectError(f"no endpoint {address!r} on this hub to disconnect")
            self._cut[address] = endpoint
            others = list(self._endpoints.values())
        for other in others:
            other._peer_event(address, False)
            endpoint._peer_event(other.address, False)

    def reconnect(self, address: str) -> None:
        """Undo ``disconnect``: the endpoint and the others see each other join again."""
        with self._lock:
            endpoint = self._cut.pop(address, None)
            if endpoint is None:
                raise ConnectError(f"{address!r} was not disconnected")
            others = list(self._endpoints.values())
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

    def __init__(self, address: str, *, hub: InMemoryHub | None = None) -> None:
        super().__init__(address)
        self.hub = hub if hub is not None else _default_hub
        self._on_frame: FrameHandler | None = None
        self._on_peer: PeerHandler | None = None
        self._running = False

    def start(self, on_frame: FrameHandler, on_peer: PeerHandler | None = None) -> None:
        """Join the hub under ``address``."""
        if self._running:
            raise RuntimeError(f"{self!r} is already started")
        self._on_frame = on_frame
        self._on_peer = on_peer
        self._running = True
        self.hub._join(self)

    def send(self, target: str, frame: Frame) -> None:
        """Copy ``frame``'s buffers and hand it to ``target``'s handler on the calling thread."""
        if not self._running:
            raise TransportClosed(f"{self!r} is stopped; cannot send {frame.kind} to {target!r}")
        if self.hub._lookup(self.address) is not self:
            raise ConnectError(f"{self.address!r} is cut off from the in-memory hub; cannot send to {target!r}")
        endpoint = self.hub._lookup(target)
        if endpoint is None or endpoint._on_frame is None:
            raise ConnectError(f"no endpoint {target!r} on the in-memory hub (is the site running?)")
        # one copy of each buffer: the receiver never shares the sender's memory
        delivered = frame.addressed(self.address, target, [bytearray(b) for b in frame.buffers])
        endpoint._on_frame(delivered)

    def stop(self) -> None:
        """Leave the hub."""
        if not self._running:
            return
        self._running = False
        with self.hub._lock:
            self.hub._cut.pop(self.address, None)
        self.hub._leave(self)

    def _peer_event(self, address: str, connected: bool) -> None:
        if self._on_peer is not None and self._running:
            self._on_peer(address, connected)
