"""Inbox: collects what a transport endpoint receives, for tests that drive endpoints directly."""

from __future__ import annotations

import queue
import time

from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.protocol import Frame


class Inbox:
    """The frames and peer events one endpoint received, in queues; pass ``on_frame``/``on_peer`` to ``start``."""

    def __init__(self) -> None:
        self.frames: queue.Queue = queue.Queue()
        self.peers: queue.Queue = queue.Queue()

    def on_frame(self, frame: Frame) -> None:
        self.frames.put(frame)

    def on_peer(self, name: str, connected: bool) -> None:
        self.peers.put((name, connected))

    def get(self, timeout: float = 10) -> Frame:
        """The next frame; raises queue.Empty after ``timeout`` seconds."""
        return self.frames.get(timeout=timeout)

    def peer_events(self) -> list:
        """The peer events received so far (drains them)."""
        events = []
        while True:
            try:
                events.append(self.peers.get_nowait())
            except queue.Empty:
                return events

    def wait_peer(self, name: str, connected: bool, timeout: float = 10) -> None:
        """Wait for the event ``(name, connected)``; raise AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.peers.get(timeout=0.2) == (name, connected):
                    return
            except queue.Empty:
                pass
        raise AssertionError(f"no peer event {(name, connected)} within {timeout}s")


def endpoint_maker(listen: str):
    """``make(name, **options)`` starts the server (the first call, listening on ``listen``) or a site dialing
    it, each with an Inbox, and returns ``(endpoint, inbox)``; ``make.stop_all()`` stops them, last first."""
    endpoints: list[GrpcCommunicationProtocol] = []

    def make(name: str, **options) -> tuple[GrpcCommunicationProtocol, Inbox]:
        inbox = Inbox()
        if name == "server":
            ep = GrpcCommunicationProtocol("server", listen=listen, **options)
        else:
            ep = GrpcCommunicationProtocol(name, server=endpoints[0].bound, connect_timeout=10, **options)
        ep.start(inbox.on_frame, inbox.on_peer)
        endpoints.append(ep)
        return ep, inbox

    def stop_all() -> None:
        for ep in reversed(endpoints):
            ep.stop()
        endpoints.clear()

    make.stop_all = stop_all  # type: ignore[attr-defined]
    return make
