"""CommunicationProtocol: moves frames between named endpoints. The only seam between runtime and transports.

Contract (every implementation keeps it; the in-memory one is the reference):

* ``start(on_frame, on_peer)`` makes this endpoint reachable under ``address``. ``on_frame(frame)`` is called
  for every frame sent to this endpoint, on a transport thread, and must return quickly (hand work to a queue
  or pool; never block on another frame). Frames from one sender to one target arrive in the order sent.
  ``on_peer(name, connected)`` is called when another endpoint joins (True) or leaves (False).
* ``send(target, frame, timeout=None)`` is thread-safe. When it returns, the frame's buffers have been copied
  or transmitted: the caller may reuse or mutate them. The receiver never shares memory with the sender.
  Flow control is per destination: ``send`` waits (without spinning) while ``target`` already has a bounded
  amount queued or in flight, and only sends to ``target`` wait; ``timeout`` (seconds; None: as long as it
  takes) bounds that wait: past it, ``TransportTimeout`` naming the target, and what was sent of the frame is
  cancelled (the receiver frees it and never sees the frame). ``send`` never waits past a closed connection:
  a frame queued or being written when its connection closes fails at once (``TransportClosed``).
  Raises ``ConnectError`` when ``target`` is unknown or unreachable, ``TransportClosed`` after ``stop``.
* ``stop()`` leaves: peers see ``on_peer(address, False)``; pending and later sends fail with
  ``TransportClosed``. Calling it twice is harmless.
* ``set_admission(check)`` (before ``start``) names who may connect: ``check(name)`` returns why ``name`` may
  not (a refusal reason) or None. A refused endpoint is turned away when it connects (the gRPC server answers
  its hello with Refused naming the reason); nothing it sends reaches ``on_frame`` and ``on_peer`` never hears
  of it. Names are checked with ``site_name_problem`` first (invalid ones are refused without asking).

A ``Frame`` is the unit moved: a few small header fields (the runtime gives them meaning; the transport only
routes on ``target``) plus the codec's ``meta`` bytes and zero or more out-of-band ``buffers``. A transport
that refuses a frame's body (too large) still delivers its header with ``error`` saying why and no body, so
the receiver can answer with a clear error instead of leaving the sender to time out.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

FrameHandler = Callable[["Frame"], None]
PeerHandler = Callable[[str, bool], None]
AdmissionCheck = Callable[[str], "str | None"]

SITE_NAME_MAX = 64
_SITE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def site_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a client site's name (None when it can).

    A site name is 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit; it is not
    ``server`` (the server's own name). So it holds no control characters, no spaces, no path separators, and
    never starts with ``@`` (deploy-map keywords such as ``@ALL``).
    """
    if not isinstance(name, str) or not name:
        return "a site name must be a non-empty string"
    if len(name) > SITE_NAME_MAX:
        return f"a site name has at most {SITE_NAME_MAX} characters (this one has {len(name)})"
    if name.lower() == "server":
        return "'server' is the server's own name, not a client site's"
    if name.startswith("@"):
        return "names starting with '@' are deploy-map keywords (such as @ALL), not sites"
    if not _SITE_NAME_RE.match(name):
        return "a site name uses only letters, digits, '.', '_' and '-', starting with a letter or digit"
    return None


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
        self._admission: AdmissionCheck | None = None

    def set_admission(self, check: AdmissionCheck | None) -> None:
        """Admit only the endpoints for which ``check(name)`` returns None (call before ``start``).

        ``check`` returns a refusal reason (str) for a name that may not connect; None clears the rule.
        """
        self._admission = check

    def refusal(self, name: str) -> str | None:
        """Why the endpoint ``name`` may not connect here (None when it may): its name, then the admission rule."""
        problem = site_name_problem(name)
        if problem:
            return f"{name!r} is not a valid site name: {problem}"
        if self._admission is None:
            return None
        return self._admission(name) or None

    @abstractmethod
    def start(self, on_frame: FrameHandler, on_peer: PeerHandler | None = None) -> None:
        """Become reachable; deliver incoming frames to ``on_frame`` and membership changes to ``on_peer``."""

    @abstractmethod
    def send(self, target: str, frame: Frame, timeout: float | None = None) -> None:
        """Deliver ``frame`` to endpoint ``target``, waiting at most ``timeout`` seconds (None: no limit) for room.

        Raises:
            ConnectError: ``target`` is unknown or unreachable.
            TransportTimeout: ``timeout`` ran out before the frame was queued or written (the part sent is
                cancelled at the receiver).
            TransportClosed: this endpoint has been stopped, or the connection closed while the frame was queued
                or being written.
        """

    @abstractmethod
    def stop(self) -> None:
        """Leave; later sends raise TransportClosed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"
