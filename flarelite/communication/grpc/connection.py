"""Connection: the two directions of one gRPC stream, run on the endpoint's event loop.

The writer interleaves outgoing frames envelope by envelope (round robin), so a small frame waits for at most
one chunk of a large one. A frame that fits in one envelope is queued as that envelope alone (the common,
latency-bound case: no per-frame bookkeeping). The reader reassembles incoming frames; what it does with them
is up to the owner (deliver locally, or relay to another connection chunk by chunk).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

from . import flarelite_pb2 as pb

RELAY_WINDOW = 8  # envelopes a relayed frame may have queued on its way out before the source is paused


class Outgoing:
    """One frame on its way out: envelopes made lazily by ``gen`` and/or pushed (relay); ``done`` when written."""

    def __init__(self, gen: Iterator[pb.Envelope] | None = None, done: threading.Event | None = None) -> None:
        self.gen = gen
        self.pushed: collections.deque[pb.Envelope] = collections.deque()
        self.open_for_push = gen is None  # relayed frames are pushed until ``end_push``
        self.done = done
        self.started = False  # an envelope of it has been written
        self.error: str | None = None
        self.space = asyncio.Event()
        self.space.set()

    def next(self) -> pb.Envelope | None:
        """The next envelope, or None when none is ready now; raises StopIteration when the frame is done."""
        if self.pushed:
            env = self.pushed.popleft()
            if len(self.pushed) < RELAY_WINDOW:
                self.space.set()
            return env
        if self.gen is not None:
            return next(self.gen)
        if self.open_for_push:
            return None
        raise StopIteration

    def finish(self, error: str | None = None) -> None:
        self.error = error
        if self.done is not None:
            self.done.set()


class Connection:
    """Writer and reader of one stream; ``write`` and ``read`` are the gRPC call's (or context's) methods."""

    def __init__(
        self,
        name: str,
        write: Callable[[pb.Envelope], Awaitable[None]],
        heartbeat_interval: float,
        *,
        stamp_sender: bool = True,
        reroute: Callable[[Outgoing], bool] | None = None,
    ) -> None:
        self.name = name
        self.stamp_sender = stamp_sender  # frames read here come from ``name`` (not relayed by a server)
        self.reroute = reroute  # takes a frame that was never started when this connection fails
        self._write = write
        self._active: collections.deque[Outgoing | pb.Envelope] = collections.deque()
        self._waiting: set[Outgoing] = set()  # relayed frames with nothing ready
        self._wake = asyncio.Event()
        self.closed_event = asyncio.Event()
        self._next_stream = 1
        self.closed = False
        self.close_reason = ""
        self.last_received = time.monotonic()
        self.last_sent = time.monotonic()
        self.heartbeat_interval = heartbeat_interval

    def new_stream(self) -> int:
        """A fresh frame id on this connection (loop thread only)."""
        sid = self._next_stream
        self._next_stream += 1
        return sid

    def enqueue(self, out: Outgoing | pb.Envelope) -> None:
        """Add a frame (an Outgoing, or a whole frame's single envelope) to the writer's rotation (loop thread only)."""
        if self.closed:
            if isinstance(out, Outgoing):
                out.finish(f"connection to {self.name} is closed")
            elif self.reroute is not None:
                self.reroute(Outgoing(iter([out])))
            return
        self._active.append(out)
        if not self._wake.is_set():
            self._wake.set()

    def pushed(self, out: Outgoing) -> None:
        """A relayed frame got an envelope or was ended: put it back in the rotation if it waited."""
        if out in self._waiting:
            self._waiting.discard(out)
            self._active.append(out)
        self._wake.set()

    async def run_writer(self) -> None:
        """Write envelopes until the connection closes."""
        try:
            while not self.closed:
                if not self._active:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                out = self._active.popleft()
                if type(out) is pb.Envelope:
                    await self._write(out)
                    self.last_sent = time.monotonic()
                    continue
                try:
                    env = out.next()
                except StopIteration:
                    out.finish()
                    continue
                if env is None:
                    self._waiting.add(out)
                    continue
                out.started = True
                await self._write(env)
                self.last_sent = time.monotonic()
                self._active.append(out)
        finally:
            self.fail_all(self.close_reason or f"connection to {self.name} closed")

    async def run_heartbeat(self, timeout: float) -> None:
        """Send a heartbeat when idle; close the connection when the peer has been silent for ``timeout``."""
        while not self.closed:
            await asyncio.sleep(self.heartbeat_interval)
            now = time.monotonic()
            if now - self.last_received > timeout:
                self.close(f"no message from {self.name} for {timeout:.1f}s")
                return
            if now - self.last_sent >= self.heartbeat_interval:
                self.enqueue(pb.Envelope(heartbeat=pb.Heartbeat(time=time.time())))

    def close(self, reason: str) -> None:
        """Stop writing; pending frames fail with ``reason``."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._wake.set()
            self.closed_event.set()

    async def until_closed(self, reader: Awaitable[None]) -> None:
        """Run ``reader`` until it ends or the connection is closed (e.g. by the heartbeat watchdog)."""
        read = asyncio.ensure_future(reader)
        closed = asyncio.ensure_future(self.closed_event.wait())
        try:
            await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not read.done():
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)
        if read.done() and not read.cancelled() and read.exception() is not None:
            raise read.exception()  # type: ignore[misc]

    def fail_all(self, reason: str) -> None:
        for item in list(self._active) + list(self._waiting):
            out = item if isinstance(item, Outgoing) else Outgoing(iter([item]))
            if not out.started and self.reroute is not None and self.reroute(out):
                continue  # sent another way (a direct peer connection fell back to the relay)
            out.finish(reason)
            out.space.set()
        self._active.clear()
        self._waiting.clear()
