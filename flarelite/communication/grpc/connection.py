"""Connection: the two directions of one gRPC stream, run on the endpoint's event loop.

The writer interleaves outgoing frames envelope by envelope (round robin), so a small frame waits for at most
one chunk of a large one. A frame that fits in one envelope is queued as that envelope alone (the common,
latency-bound case: no generator, no per-chunk bookkeeping). The reader reassembles incoming frames; what it
does with them is up to the owner (deliver locally, or relay to another connection chunk by chunk).

Flow control through the relay is per (client, target): a client's connection to the server has a ``window``
(the server's ``Welcome.relay_window``) of bytes it may have in the relay for each target before the server
credits them back (``Credit``, sent once the relay wrote them to the target, or dropped them). A frame whose
target has no window left is parked, and the writer goes on with everything else (heartbeats, frames to the
server or to other targets). A frame always gets one envelope through when nothing is outstanding, so an
envelope larger than the window never deadlocks. The chunks of a relayed blob (written on the data channel by the
sender's thread) count against the same window: that thread ``reserve``s room for each before writing it. Every
frame queued or being written when the connection closes finishes at once, with an error or rerouted (``reroute``)
when none of it was written.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from . import flarelite_pb2 as pb

CHUNK_OVERHEAD = 64  # what a Chunk envelope counts against a window on top of its data
CREDIT_DELAY = 0.1  # seconds credits below ``credit_batch`` may wait (then all due go in one Credit each)
_CREDIT = object()  # in the writer's rotation: send the Credits that are due

Costed = tuple[pb.Envelope, int]  # an envelope and what it counts against a relay window


def header_cost(env: pb.Envelope) -> int:
    """What a Header envelope counts against a relay window: its encoded size (client and server agree on it)."""
    return env.ByteSize()


class Outgoing:
    """One frame on its way out: ``(envelope, cost)`` pairs made lazily by ``gen`` and/or pushed (relay).

    ``done`` is set when the frame has been written or has failed (``error`` says why). ``target`` is the frame's
    destination (it decides the relay window it counts against), ``stream`` its id on the connection (for a
    ``Cancel``), ``source`` the connection a relayed frame comes from (credited as its envelopes are written).
    """

    __slots__ = (
        "gen",
        "pushed",
        "open_for_push",
        "done",
        "started",
        "finished",
        "error",
        "target",
        "stream",
        "source",
        "held",
        "cancelled",
        "on_finish",
        "atomic",
    )

    def __init__(
        self,
        gen: Iterator[Costed] | None = None,
        done: threading.Event | None = None,
        *,
        target: str = "",
        stream: int = 0,
        source: Connection | None = None,
    ) -> None:
        self.gen = gen
        self.pushed: collections.deque[Costed] = collections.deque()
        self.open_for_push = gen is None  # relayed frames are pushed until ``open_for_push`` is cleared
        self.done = done
        self.started = False  # an envelope of it has been written
        self.finished = False
        self.error: str | None = None
        self.target = target
        self.stream = stream
        self.source = source
        self.held: Costed | None = None  # taken from gen/pushed, not yet written (waits for window)
        self.cancelled: str | None = None  # why the sender gave up on it
        self.on_finish: Callable[[Outgoing], None] | None = None
        self.atomic = False  # a small frame: its envelopes go out back to back (it is never left half-sent)

    @classmethod
    def of(
        cls, envelopes: list[Costed], *, target: str = "", stream: int = 0, source: Connection | None = None
    ) -> Outgoing:
        """A frame whose envelopes are all made already."""
        out = cls(target=target, stream=stream, source=source)
        out.pushed.extend(envelopes)
        out.open_for_push = False
        out.atomic = True
        return out

    def peek(self) -> Costed | None:
        """The next envelope (kept until ``take``), or None when none is ready now; StopIteration when done."""
        if self.held is None:
            if self.pushed:
                self.held = self.pushed.popleft()
            elif self.gen is not None:
                self.held = next(self.gen)
            elif self.open_for_push:
                return None
            else:
                raise StopIteration
        return self.held

    @property
    def exhausted(self) -> bool:
        """True when nothing more can come (no generator, nothing pushed or held, not open)."""
        return self.gen is None and not self.pushed and self.held is None and not self.open_for_push

    def unsent_cost(self) -> int:
        """What the envelopes taken or pushed but not yet written count (to credit back when dropped)."""
        return sum(c for _, c in self.pushed) + (self.held[1] if self.held is not None else 0)

    def finish(self, error: str | None = None) -> None:
        """Mark the frame written (or failed with ``error``) and wake its sender; idempotent."""
        if self.finished:
            return
        self.finished = True
        self.error = error
        if self.source is not None:
            lost = self.unsent_cost()
            if lost:
                self.source.credit(self.target, lost)  # dropped: the source may send that much again
        self.pushed.clear()
        self.held = None
        self.gen = None
        self.open_for_push = False
        if self.on_finish is not None:
            self.on_finish(self)
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
        window: int = 0,
    ) -> None:
        self.name = name
        self.stamp_sender = stamp_sender  # frames read here come from ``name`` (not relayed by a server)
        self.reroute = reroute  # takes a frame that was never started when this connection fails
        self.window = window  # client -> server: bytes per relayed target before waiting for Credit (0: none)
        self._write = write
        self._active: collections.deque = collections.deque()  # Outgoing, control Envelopes, _CREDIT
        self._waiting: set[Outgoing] = set()  # relayed frames with nothing ready
        self._parked: dict[str, collections.deque[Outgoing]] = {}  # frames waiting for window, per target
        self._outstanding: dict[str, int] = {}  # client: bytes written per target and not yet credited
        # client: senders of relayed blobs waiting for room in a target's window, in order
        self._reservations: dict[str, collections.deque[tuple[int, concurrent.futures.Future]]] = {}
        self._current: Outgoing | None = None  # the frame an envelope of which is being written
        self.relay_held: dict[str, int] = {}  # server, per source: bytes received per target, not yet credited
        self.relay_lock = threading.Lock()  # relay_held: the data channel's reader admits relayed chunks too
        self._credit_due: dict[str, int] = {}  # server, per source: credits to send
        self.credit_batch = 0  # server: credits due below this wait up to CREDIT_DELAY (one Credit for many)
        self._credit_queued = False
        self._credit_timer: asyncio.TimerHandle | None = None
        self.pending: dict[int, object] = {}  # the reader's frames in progress, by stream id
        self._wake = asyncio.Event()
        self.closed_event = asyncio.Event()
        self.closed = False
        self.close_reason = ""
        self.last_received = time.monotonic()
        self.last_sent = time.monotonic()
        self.heartbeat_interval = heartbeat_interval
        self.data_channel: Any = None  # the data channel opened on this connection (data_routes.py), if any
        self.route_lock = threading.Lock()  # a frame's choice between stream and channel, and the Switch
        self.frames_out: Any = None  # the channel this side's frames to ``name`` take (after its Switch)
        self.data_gate = threading.Event()  # set: frames from ``name`` on the channel may be delivered
        self.gate_streams: set[int] | None = None  # after ``name``'s Switch: its frames begun before it, undelivered

    def enqueue(self, out: Outgoing | pb.Envelope) -> None:
        """Add a frame (or a control envelope) to the writer's rotation (loop thread only)."""
        if self.closed:
            if isinstance(out, Outgoing):
                if out.started or out.cancelled or self.reroute is None or not self.reroute(out):
                    out.finish(self.close_reason or f"connection to {self.name} is closed")
            return
        self._active.append(out)
        if not self._wake.is_set():
            self._wake.set()

    def pushed(self, out: Outgoing) -> None:
        """A relayed frame got an envelope, was ended or cancelled: put it back in the rotation if it waited."""
        if out in self._waiting:
            self._waiting.discard(out)
            self._active.append(out)
        self._wake.set()

    def cancel(self, out: Outgoing, reason: str) -> None:
        """Give up on ``out``: the writer sends Cancel if part of it went out, and finishes it (loop thread)."""
        if out.finished:
            return
        if out.cancelled is None:
            out.cancelled = reason
        parked = self._parked.get(out.target)
        if parked is not None and out in parked:
            parked.remove(out)
            self._active.append(out)
        if not self.closed:  # a closed connection finished what it held; what it did not hold is elsewhere
            self.pushed(out)

    def fail_target(self, target: str, reason: str) -> None:
        """``target`` is gone: give up every frame queued here for it (loop thread)."""
        items = [*self._active, *self._parked.get(target, ()), *self._waiting, self._current]
        for item in items:
            if isinstance(item, Outgoing) and item.target == target:
                self.cancel(item, reason)

    # flow control ------------------------------------------------------------------------------------
    def on_credit(self, target: str, nbytes: int) -> None:
        """The relay passed on ``nbytes`` of our frames to ``target``: resume what waited for it (client)."""
        left = self._outstanding.get(target, 0) - nbytes
        if left > 0:
            self._outstanding[target] = left
        else:
            self._outstanding.pop(target, None)
        waiting = self._reservations.get(target)
        while waiting:
            cost, future = waiting[0]
            if not future.cancelled() and not self._grant(target, cost, future):
                break
            waiting.popleft()
        if not waiting:
            self._reservations.pop(target, None)
        parked = self._parked.pop(target, None)
        if parked:
            self._active.extend(parked)
            self._wake.set()

    def reserve(self, target: str, cost: int, future: concurrent.futures.Future) -> None:
        """Count ``cost`` bytes against ``target``'s window for a sender thread (a relayed blob's chunk on the data
        channel): ``future`` gets a result once they fit, after those waiting before it (client, loop thread).
        A sender that gives up cancels it; one granted that does not write gives the room back (``on_credit``)."""
        if self.closed:
            future.set_exception(ConnectionError(self.close_reason or f"connection to {self.name} is closed"))
            return
        waiting = self._reservations.get(target)
        if waiting or not self._grant(target, cost, future):
            self._reservations.setdefault(target, collections.deque()).append((cost, future))

    def _grant(self, target: str, cost: int, future: concurrent.futures.Future) -> bool:
        used = self._outstanding.get(target, 0)
        if used and used + cost > self.window:
            return False
        if future.set_running_or_notify_cancel():
            self._outstanding[target] = used + cost
            future.set_result(None)
        return True

    def credit(self, target: str, nbytes: int) -> None:
        """The relay wrote (or dropped) ``nbytes`` of this source's frames to ``target``: tell it (server)."""
        with self.relay_lock:
            left = self.relay_held.get(target, 0) - nbytes
            if left > 0:
                self.relay_held[target] = left
            else:
                self.relay_held.pop(target, None)
        if self.closed or not nbytes:
            return
        due = self._credit_due.get(target, 0) + nbytes
        self._credit_due[target] = due
        if self._credit_queued:
            return
        if due >= self.credit_batch:
            self._queue_credits()
        elif self._credit_timer is None:  # small frames: one Credit for all of them a moment later
            self._credit_timer = asyncio.get_running_loop().call_later(CREDIT_DELAY, self._queue_credits)

    def _queue_credits(self) -> None:
        if self._credit_timer is not None:
            self._credit_timer.cancel()
            self._credit_timer = None
        if self._credit_due and not self._credit_queued and not self.closed:
            self._credit_queued = True
            self._active.append(_CREDIT)  # in the rotation like any frame (never ahead of a peer event)
            self._wake.set()

    def _room(self, out: Outgoing, cost: int) -> bool:
        """Whether ``out``'s next envelope (``cost`` bytes) fits in its target's window; counts it if so (one that
        costs nothing, a relayed blob's header, always fits)."""
        if not cost:
            return True
        target = out.target
        used = self._outstanding.get(target, 0)
        if used and used + cost > self.window:
            self._parked.setdefault(target, collections.deque()).append(out)
            return False
        self._outstanding[target] = used + cost
        return True

    # writing -----------------------------------------------------------------------------------------
    async def run_writer(self) -> None:
        """Write envelopes until the connection closes."""
        active, write = self._active, self._write
        try:
            while not self.closed:
                if not active:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                out = active.popleft()
                if type(out) is pb.Envelope:
                    await write(out)
                    self.last_sent = time.monotonic()
                    continue
                if out is _CREDIT:
                    await self._write_credits()
                    continue
                if out.finished:
                    continue
                if out.cancelled is not None:
                    if out.started:
                        await write(pb.Envelope(cancel=pb.Cancel(stream=out.stream, reason=out.cancelled)))
                    out.finish(out.cancelled)
                    continue
                try:
                    item = out.peek()
                except StopIteration:
                    out.finish()
                    continue
                if item is None:
                    self._waiting.add(out)
                    continue
                env, cost = item
                if self.window and out.target != self.name and not self._room(out, cost):
                    continue
                out.held = None
                out.started = True
                self._current = out
                try:
                    await write(env)
                finally:
                    if out.source is not None and cost:  # written, or never will be: the source may send more
                        out.source.credit(self.name, cost)
                self._current = None
                self.last_sent = time.monotonic()
                if out.exhausted:
                    out.finish()
                elif out.atomic or out.cancelled is not None:  # a small frame is not interleaved (receivers
                    active.appendleft(out)  # see few frames half-done); a cancelled one is ended at once
                else:
                    active.append(out)
        finally:
            self.close(self.close_reason or f"connection to {self.name} closed")
            self.fail_all(self.close_reason)

    async def _write_credits(self) -> None:
        due, self._credit_due = self._credit_due, {}
        self._credit_queued = False
        for target, nbytes in due.items():
            await self._write(pb.Envelope(credit=pb.Credit(target=target, bytes=nbytes)))

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
        """Finish every frame queued, parked or being written here: rerouted if none of it went out, else failed."""
        items = list(self._active) + list(self._waiting)
        for parked in self._parked.values():
            items.extend(parked)
        if self._current is not None:
            items.append(self._current)
        self._active.clear()
        self._waiting.clear()
        self._parked.clear()
        self._current = None
        self._credit_due.clear()
        if self._credit_timer is not None:
            self._credit_timer.cancel()
            self._credit_timer = None
        reservations, self._reservations = self._reservations, {}
        for waiting in reservations.values():
            for _, future in waiting:
                if future.set_running_or_notify_cancel():
                    future.set_exception(ConnectionError(reason or f"connection to {self.name} closed"))
        for out in items:
            if not isinstance(out, Outgoing) or out.finished:
                continue
            if not out.started and out.cancelled is None and self.reroute is not None and self.reroute(out):
                continue  # sent another way (a direct peer connection fell back to the relay)
            out.finish(reason or f"connection to {self.name} closed")
