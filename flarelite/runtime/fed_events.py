"""Federated events, receiving side: the ``"fed.event"`` aux handler every site has, and its event worker.

``FLComponent.fire_fed_event`` sends an event as a fire-and-forget aux request on topic ``"fed.event"``. Here
each request is checked (its type must start with ``"fed."``: a peer cannot fire ``_end_run`` or any other
local event at this site), deduplicated per (peer, ``_event_id``), queued, and fired again on one worker thread
with EVENT_DATA the received Shareable, EVENT_SCOPE ``"federation"`` and the peer context of the sender the
transport proved (never the ``_origin`` header the sender wrote).

A peer's events are fired in the order it fired them (its ``_timestamp``): aux requests are handled on several
threads and may overtake each other, so each event waits ``REORDER_WINDOW`` (50 ms) for earlier ones still being
decoded. Peers take turns (the one served least recently goes first), so a peer that floods delays an event of
another peer by one of its own at most, once that event is past the window. What one peer may have queued is bounded
(events and bytes); past that its events are dropped, with a warning naming it at most every 10 s. Each peer's last
event ids are remembered in a bounded LRU. At the end of the run the queue gets up to 2 s to drain before the
components see END_RUN (NVFlare's ``FedEventRunner`` waits its grace period even when nothing is queued).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .. import logsafe
from ..apis.fl_component import FED_EVENT_PREFIX, FED_EVENT_TOPIC
from ..apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReservedKey, ReturnCode
from ..apis.fl_context import FLContext, peer_context_from_props
from ..apis.shareable import ReservedHeaderKey, Shareable, make_reply
from .logs import bind_thread

if TYPE_CHECKING:
    from .site import SiteRuntime

MAX_QUEUED_PER_PEER = 256  # events of one peer waiting to be fired here
MAX_QUEUED_BYTES_PER_PEER = 64 << 20  # and their approximate size
MAX_SEEN_PER_PEER = 4096  # event ids remembered per peer to drop duplicates
END_RUN_GRACE = 2.0  # seconds queued events get to be handled at the end of the run
REORDER_WINDOW = 0.05  # seconds an event waits for a peer's earlier events that overtook it
_MAX_TYPE_LEN = 256
_MAX_ID_LEN = 128


def approx_nbytes(value: Any, limit: int) -> int:
    """Estimate the memory ``value`` holds (strings, bytes, arrays, containers); stops counting past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, (str, bytes, bytearray)):
            total += 48 + len(v)
        elif isinstance(v, dict):
            total += 64 + 16 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            total += 56 + 8 * len(v)
            stack.extend(v)
        else:
            nbytes = getattr(v, "nbytes", None)
            total += 32 + (nbytes if isinstance(nbytes, int) else 0)
    return total


def _bad(message: str) -> Shareable:
    return make_reply(ReturnCode.BAD_REQUEST_DATA, headers={ReservedHeaderKey.ERROR: message})


class FedEventReceiver:
    """One site's receiving end of federated events: the ``"fed.event"`` handler, the queue, the worker thread."""

    def __init__(
        self,
        site: SiteRuntime,
        max_queued_per_peer: int = MAX_QUEUED_PER_PEER,
        max_queued_bytes_per_peer: int = MAX_QUEUED_BYTES_PER_PEER,
        max_seen_per_peer: int = MAX_SEEN_PER_PEER,
        reorder_window: float = REORDER_WINDOW,
    ) -> None:
        self.site = site
        self.max_queued_per_peer = max_queued_per_peer
        self.max_queued_bytes_per_peer = max_queued_bytes_per_peer
        self.max_seen_per_peer = max_seen_per_peer
        self.reorder_window = reorder_window
        self._cv = threading.Condition()
        # peer -> heap of (its timestamp, arrival number, arrived at, event type, data, size); and its bytes
        self._heaps: dict[str, list[tuple[float, int, float, str, Shareable, int]]] = {}
        self._bytes: dict[str, int] = {}
        self._arrivals = itertools.count()
        self._turns = itertools.count()  # when each peer was last served: peers with events queued take turns
        self._served: dict[str, int] = {}
        self._flushing = False
        self._seen: dict[str, OrderedDict[str, None]] = {}  # peer -> its latest event ids
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._drop_log = logsafe.RateLimit()
        self._refuse_log = logsafe.RateLimit()
        self.fired = 0  # events fired here (for tests and logs)
        self.dropped = 0  # events refused because their peer had too many queued
        self.duplicates = 0

    def register(self) -> None:
        """Register the ``"fed.event"`` aux handler (the site does this before its components are built)."""
        self.site.register_aux_message_handler(FED_EVENT_TOPIC, self.receive)

    # the aux handler ----------------------------------------------------------------------------------
    def receive(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        """Check, deduplicate and queue one federated event; the reply says whether it was taken."""
        peer_ctx = fl_ctx.get_peer_context()
        peer = peer_ctx.get_identity_name() if peer_ctx is not None else None  # the transport's word (aux sets it)
        if not isinstance(peer, str) or not peer:
            return make_reply(ReturnCode.MISSING_PEER_CONTEXT)
        event_type = request.get_header(FedEventHeader.EVENT_TYPE)
        if (
            not isinstance(event_type, str)
            or not event_type.startswith(FED_EVENT_PREFIX)
            or len(event_type) > _MAX_TYPE_LEN
        ):
            self._refused(peer, f"its event type {str(event_type)[:80]!r} does not start with {FED_EVENT_PREFIX!r}")
            return _bad(f"{self.site.name} accepts only federated event types that start with {FED_EVENT_PREFIX!r}")
        event_id = request.get_header(FedEventHeader.EVENT_ID)
        if not isinstance(event_id, str) or not event_id or len(event_id) > _MAX_ID_LEN:
            self._refused(peer, f"its event {event_type!r} has no valid {FedEventHeader.EVENT_ID} header")
            return _bad(f"federated event {event_type!r} needs a {FedEventHeader.EVENT_ID} header (a str)")
        size = approx_nbytes(request, self.max_queued_bytes_per_peer)
        stamp = request.get_header(FedEventHeader.TIMESTAMP)
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
            stamp = math.inf  # no usable timestamp: after the peer's stamped events, in arrival order
        with self._cv:
            if self._closed:
                return make_reply(ReturnCode.SERVICE_UNAVAILABLE, {ReservedHeaderKey.ERROR: "the run is ending"})
            seen = self._seen.setdefault(peer, OrderedDict())
            if event_id in seen:
                seen.move_to_end(event_id)
                self.duplicates += 1
                duplicate = True
            else:
                duplicate = False
                heap = self._heaps.get(peer, [])
                queued_bytes = self._bytes.get(peer, 0)
                over = len(heap) >= self.max_queued_per_peer or queued_bytes + size > self.max_queued_bytes_per_peer
                if not over:
                    self._heaps[peer] = heap
                    seen[event_id] = None
                    if len(seen) > self.max_seen_per_peer:
                        seen.popitem(last=False)
                    self._bytes[peer] = queued_bytes + size
                    request.set_header(FedEventHeader.DIRECTION, "in")
                    item = (stamp, next(self._arrivals), time.monotonic(), event_type, request, size)
                    heapq.heappush(heap, item)
                    self._start_worker()
                    self._cv.notify_all()
                else:
                    self.dropped += 1
                    waiting = [len(heap), queued_bytes]
        if duplicate:
            self.site.log.debug("dropped a duplicate federated event %r (id %s) from %s", event_type, event_id, peer)
            return make_reply(ReturnCode.OK)
        if over:
            self._dropped(peer, event_type, waiting)
            return make_reply(ReturnCode.SERVICE_UNAVAILABLE, {ReservedHeaderKey.ERROR: "too many events queued"})
        return make_reply(ReturnCode.OK)

    def _refused(self, peer: str, why: str) -> None:
        allowed = self._refuse_log.check(peer)
        if allowed is not None:
            more = f" ({allowed[0]} more since the last line)" if allowed[0] else ""
            self.site.log.error("refused a federated event from %s: %s%s", peer, why, more)

    def _dropped(self, peer: str, event_type: str, waiting: list[int]) -> None:
        allowed = self._drop_log.check(peer)
        if allowed is not None:
            count = allowed[0] + 1
            self.site.log.warning(
                "dropped %d federated event(s) from %s (latest %r): %d events (about %d bytes) from it are already "
                "queued here, the most one peer may have",
                count,
                peer,
                event_type,
                waiting[0],
                waiting[1],
            )

    # the worker ---------------------------------------------------------------------------------------
    def _start_worker(self) -> None:
        """Start the worker thread on the first event (called with the lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"{self.site.name}-fed_events", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        bind_thread(self.site.name)
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        self._busy = False
                        self._cv.notify_all()
                        return
                    peer, wait = self._next_ripe()
                    if peer is not None:
                        break
                    self._cv.wait(wait)
                _, _, _, event_type, data, size = heapq.heappop(self._heaps[peer])
                self._bytes[peer] -= size
                if not self._heaps[peer]:
                    del self._heaps[peer], self._bytes[peer]
                self._busy = True
            try:
                self._fire(peer, event_type, data)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _next_ripe(self) -> tuple[str | None, float | None]:
        """The peer whose earliest event has waited out the reorder window, peers taking turns (the one served
        least recently first, so a flooding peer holds back each other peer by one event at most), or None and
        how long to wait for one (None: nothing is queued). Called with the lock held."""
        now = time.monotonic()
        window = 0.0 if self._flushing else self.reorder_window
        best: str | None = None
        best_key = (math.inf, math.inf)
        soonest: float | None = None
        for peer, heap in self._heaps.items():
            arrived = heap[0][2]
            ripe_at = arrived + window
            if ripe_at <= now:
                key = (self._served.get(peer, -1), arrived)
                if key < best_key:
                    best, best_key = peer, key
            elif soonest is None or ripe_at - now < soonest:
                soonest = ripe_at - now
        if best is not None:
            self._served[best] = next(self._turns)
            if len(self._served) > 2 * len(self._heaps) + 64:  # forget the peers with nothing queued
                self._served = {p: t for p, t in self._served.items() if p in self._heaps}
        return best, soonest

    def _fire(self, peer: str, event_type: str, data: Shareable) -> None:
        props = data.get_peer_props()
        props = dict(props) if isinstance(props, dict) else {}
        props[ReservedKey.IDENTITY_NAME] = peer  # who the transport says sent it, whatever the headers claim
        fl_ctx = self.site.new_context()
        fl_ctx.set_peer_context(peer_context_from_props(props))
        fl_ctx.set_prop(FLContextKey.EVENT_DATA, data, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.EVENT_SCOPE, EventScope.FEDERATION, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.EVENT_ORIGIN_SITE, peer, private=True, sticky=False)
        try:
            self.site.fire_event(event_type, fl_ctx)
        except Exception:  # the site logs each component's failure; this is for the runtime's own
            self.site.log.exception("firing federated event %r from %s failed", event_type, peer)
        self.fired += 1

    # the end of the run -------------------------------------------------------------------------------
    def close(self, grace: float = END_RUN_GRACE) -> None:
        """Give the queued events up to ``grace`` seconds to be fired, then stop taking events."""
        deadline = time.monotonic() + grace
        with self._cv:
            self._flushing = True  # no more waiting for overtaken events: fire what is queued now
            self._cv.notify_all()
            while (self._heaps or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            left_over = sum(len(h) for h in self._heaps.values())
            self._heaps.clear()
            self._bytes.clear()
            self._closed = True
            self._cv.notify_all()
        if left_over:
            self.site.log.warning(
                "%d federated event(s) were still queued %ss after the end of the run; they were dropped",
                left_over,
                grace,
            )
