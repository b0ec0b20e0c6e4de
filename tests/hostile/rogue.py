"""Rogue: a deliberately bad peer for the hostile tests. It speaks flarelite's wire with the generated protobuf
classes and says whatever a test tells it to, so each attack goes through the real server's (or a site's)
gRPC listener exactly as an attacker's program would.

    rogue = Rogue("unix:///tmp/x/server.sock")            # or "127.0.0.1:PORT", tls=TLSConfig(...)
    rogue.hello("site-2")                                   # -> the first envelope the server answered
    rogue.frame(kind="aux_req", target="site-1", meta=b"...", buffer_sizes=[1 << 30])  # announce, send nothing
    rogue.chunk(stream=1, buffer=0, data=b"x" * 1024)
    rogue.receive("header")                                 # the next envelope of that kind (or AssertionError)
    rogue.close()

Nothing here is flarelite's own client code: the transport under test is only ever on the other side.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc

from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.grpc import flarelite_pb2_grpc as pb_grpc
from flarelite.communication.grpc import tls as tls_helper
from flarelite.communication.grpc.tls import TLSConfig

WIRE_VERSION = 1
_LIMIT = 16 << 20  # our own gRPC message limit: big enough for any envelope a test makes


class Rogue:
    """One hand-driven stream to a flarelite listener (a server, or a site's direct_p2p listener)."""

    def __init__(self, target: str, tls: TLSConfig | None = None, *, timeout: float = 60.0) -> None:
        cfg = tls or TLSConfig("clear")
        options = [("grpc.max_send_message_length", _LIMIT), ("grpc.max_receive_message_length", _LIMIT)]
        if cfg.mode == "clear":
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            creds = tls_helper.channel_credentials(cfg)
            self.channel = grpc.secure_channel(target, creds, options=options + tls_helper.channel_options(cfg))
        self.outbox: queue.Queue = queue.Queue()
        self.inbox: queue.Queue = queue.Queue()
        self.ended = threading.Event()
        self.status: Any = None  # the gRPC status the stream ended with, once it ended
        self.call = pb_grpc.TransportStub(self.channel).Connect(iter(self.outbox.get, None), timeout=timeout)
        self._reader = threading.Thread(target=self._read, name="rogue-reader", daemon=True)
        self._reader.start()
        self._streams = 0

    def _read(self) -> None:
        try:
            for env in self.call:
                self.inbox.put(env)
        except grpc.RpcError as exc:
            self.status = exc.code()
        self.ended.set()
        self.inbox.put(None)

    # sending -----------------------------------------------------------------------------------------
    def send(self, **body: Any) -> None:
        """Send one Envelope with ``body`` (e.g. ``hello=pb.Hello(...)``)."""
        self.outbox.put(pb.Envelope(**body))

    def send_envelope(self, env: pb.Envelope) -> None:
        self.outbox.put(env)

    def hello(
        self, name: str, *, version: int = WIRE_VERSION, p2p_address: str = "", timeout: float = 10
    ) -> pb.Envelope:
        """Say hello as ``name``; return the first envelope that comes back (welcome or refused)."""
        self.send(hello=pb.Hello(name=name, version=version, p2p_address=p2p_address))
        return self.first(timeout)

    def first(self, timeout: float = 10) -> pb.Envelope:
        """The next envelope that is not a heartbeat or a peer event (AssertionError if the stream ended)."""
        deadline = time.monotonic() + timeout
        while True:
            env = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            assert env is not None, f"the stream ended (status {self.status})"
            if env.WhichOneof("body") not in ("heartbeat", "peer"):
                return env

    def frame(self, *, target: str, kind: str = "aux_req", stream: int | None = None, **fields: Any) -> int:
        """Send a Header (``buffer_sizes``, ``meta``, ``msg_id``... as given); return its stream id."""
        if stream is None:
            self._streams += 1
            stream = self._streams
        self.send(header=pb.Header(stream=stream, kind=kind, target=target, **fields))
        return stream

    def chunk(self, *, stream: int, buffer: int = 0, data: bytes = b"") -> None:
        self.send(chunk=pb.Chunk(stream=stream, buffer=buffer, data=data))

    def heartbeat(self) -> None:
        self.send(heartbeat=pb.Heartbeat(time=time.time()))

    # receiving ---------------------------------------------------------------------------------------
    def receive(self, body: str, timeout: float = 10) -> pb.Envelope:
        """The next envelope of kind ``body`` (others are skipped); AssertionError if the stream ends first."""
        deadline = time.monotonic() + timeout
        while True:
            env = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            assert env is not None, f"the stream ended before a {body!r} envelope came (status {self.status})"
            if env.WhichOneof("body") == body:
                return env

    def drain(self) -> list[pb.Envelope]:
        """Every envelope received so far (None marks the end of the stream)."""
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def wait_ended(self, timeout: float = 10) -> bool:
        """True when the server ended the stream within ``timeout`` seconds."""
        return self.ended.wait(timeout)

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()
        self._reader.join(5)

    def __enter__(self) -> Rogue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
