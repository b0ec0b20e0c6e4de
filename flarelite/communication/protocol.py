"""CommunicationProtocol: moves frames between named endpoints. The only seam between runtime and transports.

Contract (every implementation keeps it; the in-memory one is the reference):

* ``start(on_frame, on_peer)`` makes this endpoint reachable under ``address``. ``on_frame(frame)`` is called
  for every frame sent to this endpoint, on a transport thread, and must return quickly (hand work to a queue
  or pool; never block on another frame). Frames from one sender to one target arrive in the order sent.
  ``on_peer(name, connected)`` is called when another endpoint joins (True) or leaves (False).
* ``send(target, frame)`` is thread-safe. When it returns, the frame's buffers have been copied or
  transmitted: the caller may reuse or mutate them. The receiver never shares memory with the sender.
  Raises ``ConnectError`` when ``target`` is unknown or unreachable, ``TransportClosed`` after ``stop``.
* ``stop()`` leaves: peers see ``on_peer(address, False)``; pending and later sends fail with
  ``TransportClosed``. Calling it twice is harmless.

A ``Frame`` is the unit moved: a few small header fields (the runtime gives them meaning; the transport only
routes on ``target``) plus the codec's ``meta`` bytes and zero or more out-of-band ``buffers``. A transport
that refuses a frame's body (too large) still delivers its header with ``error`` saying why and no body, so
the receiver can answer with a clear error instead of leaving the sender to time out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

FrameHandler = Callable[["Frame"], None]
PeerHandler = Callable[[str, bool], None]


@dataclass
class Frame:
    """One message: routing and correlation headers, the encoded structure and its out-of-band buffers."""

    kind: str
    sender: str = ""
    target: str = ""
    msg_id: str = ""
    ref_id: str = ""
    topic: str = ""
    job_id: str = ""
    rc: str = ""
    meta: bytes = b""
    buffers: list = field(default_factory=list)
    error: str = ""  # set by a transport that could not deliver the body (e.g. over the size limit)

    def addressed(self, sender: str, target: str, buffers: list | None = None) -> Frame:
        """A copy from ``sender`` to ``target`` (with ``buffers`` instead of these when given).

        What ``dataclasses.replace`` does, at a fraction of its cost (every message goes through here).
        """
        return Frame(
            self.kind,
            sender,
            target,
            self.msg_id,
            self.ref_id,
            self.topic,
            self.job_id,
            self.rc,
            self.meta,
            self.buffers if buffers is None else buffers,
            self.error,
        )

    @property
    def nbytes(self) -> int:
        """Size of meta plus buffers, in bytes."""
        return len(self.meta) + sum(memoryview(b).nbytes for b in self.buffers)


class CommunicationProtocol(ABC):
    """A transport endpoint named ``address`` (see the module docstring for the contract)."""

    def __init__(self, address: str) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"{type(self).__name__}: address must be a non-empty str, got {address!r}")
        self.address = address

    @abstractmethod
    def start(self, on_frame: FrameHandler, on_peer: PeerHandler | None = None) -> None:
        """Become reachable; deliver incoming frames to ``on_frame`` and membership changes to ``on_peer``."""

    @abstractmethod
    def send(self, target: str, frame: Frame) -> None:
        """Deliver ``frame`` to endpoint ``target``.

        Raises:
            ConnectError: ``target`` is unknown or unreachable.
            TransportClosed: this endpoint has been stopped.
        """

    @abstractmethod
    def stop(self) -> None:
        """Leave; later sends raise TransportClosed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"
