"""Aux channels: the handler table, sending requests and collecting replies, dispatching incoming requests.

Incoming requests run on this site's worker pool, never on the thread that runs ``execute``; requests that
arrive before the site finished START_RUN are held until it has (``set_ready``).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .. import logsafe
from ..apis.fl_constant import ReservedKey, ReturnCode, SiteType
from ..apis.fl_context import FLContext, peer_context_from_props
from ..apis.shareable import ReservedHeaderKey, Shareable, make_reply
from ..communication.protocol import Frame
from ..errors import CodecError, TransportError, TransportTimeout
from .frames import Kind, frame_shareable, make_frame
from .workers import WorkerPool

if TYPE_CHECKING:
    from .site import SiteRuntime

_PRIMITIVES = (str, int, float, bool, type(None))
_SEND_INLINE_BYTES = 1 << 20  # with several targets, larger requests are sent side by side (each may wait)
MAX_WAITING_PER_PEER = 1024  # requests one peer may have waiting for this site's handlers
MAX_WAITING_BYTES_PER_PEER = 512 << 20  # and their bytes


def _error_reply(rc: str, message: str) -> Shareable:
    return make_reply(rc, headers={ReservedHeaderKey.ERROR: message})


class _Waiter:
    """Collects the reply frames of one send; ``done`` is set when every target has answered."""

    def __init__(self, targets: list[str]) -> None:
        self.remaining = set(targets)
        self.frames: dict[str, Frame] = {}
        self.errors: dict[str, Shareable] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        if not self.remaining:
            self.done.set()

    def settle(self, target: str, frame: Frame | None = None, error: Shareable | None = None) -> None:
        with self.lock:
            if target not in self.remaining:
                return
            self.remaining.discard(target)
            if frame is not None:
                self.frames[target] = frame
            else:
                self.errors[target] = error if error is not None else make_reply(ReturnCode.ERROR)
            if not self.remaining:
                self.done.set()


def new_message_id() -> str:
    """An unguessable request id (128 random bits): a peer cannot answer a request it was not sent."""
    return secrets.token_hex(16)


class AuxRunner:
    """One site's aux channel: handlers by topic, pending requests by (target, message id), the worker pool.

    A reply settles a pending request only when it comes from the site the request went to (the sender the
    transport authenticated) and carries that request's id, which is random: no other site can answer it.
    """

    def __init__(self, site: SiteRuntime, max_workers: int = 16) -> None:
        self.site = site
        self._handlers: dict[str, Callable[..., Shareable]] = {}
        self._pending: dict[tuple[str, str], _Waiter] = {}  # (target, msg_id) -> the send waiting for it
        self._lock = threading.Lock()
        self._ready = False
        self._held: list[Frame] = []
        self._stray = 0  # replies that matched no pending request (late, or forged): counted, logged sparingly
        self._waiting: dict[str, list[int]] = {}  # peer -> [requests, bytes] received and not yet handled
        self._drop_log = logsafe.RateLimit()  # one line per peer every 10 s about its dropped requests
        threads = site.threads
        self._pool = WorkerPool(site.name, max_workers) if threads is None else threads.aux_lane(site.name, max_workers)

    # handlers ----------------------------------------------------------------------------------------
    def register(self, topic: str, func: Callable[..., Shareable]) -> None:
        """Register ``func`` for ``topic``; a second registration of a topic is an error."""
        if not isinstance(topic, str) or not topic:
            raise ValueError(
                f"register_aux_message_handler at {self.site.name}: topic must be a non-empty str, got {topic!r}"
            )
        if not callable(func):
            raise ValueError(
                f"register_aux_message_handler at {self.site.name}: handler for topic {topic!r} must be callable, "
                f"got {type(func).__name__}"
            )
        with self._lock:
            if topic in self._handlers:
                raise ValueError(
                    f"handler already registered for topic {topic!r} at {self.site.name}; "
                    "register each topic once (e.g. only at START_RUN)"
                )
            self._handlers[topic] = func

    def set_ready(self) -> None:
        """Start dispatching requests; requests held until now are dispatched in arrival order."""
        with self._lock:
            self._ready = True
            held, self._held = self._held, []
        for frame in held:
            self._pool.submit(self._handle_request, frame)

    # sending -----------------------------------------------------------------------------------------
    def peer_props(self, fl_ctx: FLContext) -> dict:
        """Return the public props of ``fl_ctx`` that travel with a request (primitive values only)."""
        props = {k: v for k, v in fl_ctx.get_all_public_props().items() if isinstance(v, _PRIMITIVES)}
        props[ReservedKey.IDENTITY_NAME] = self.site.name
        props[ReservedKey.RUN_NUM] = self.site.job_id
        return props

    def send(
        self,
        target_requests: dict[str, Shareable],
        topic: str,
        timeout: float,
        fl_ctx: FLContext,
        optional: bool = False,
    ) -> dict[str, Shareable]:
        """Send each target its request; wait up to ``timeout`` seconds for the replies (``<= 0``: don't wait)."""
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"aux topic must be a non-empty str, got {topic!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"aux timeout must be a number of seconds, got {type(timeout).__name__}")
        props = self.peer_props(fl_ctx)
        wait = timeout > 0
        kind = Kind.AUX_REQUEST if wait else Kind.AUX_POST
        results: dict[str, Shareable] = {}
        frames: dict[str, Frame] = {}
        encoded_once: dict[int, Frame] = {}
        for target, request in target_requests.items():
            if not isinstance(request, Shareable):
                raise TypeError(
                    f"aux request to {target!r} on topic {topic!r} must be a Shareable, got {type(request).__name__}"
                )
            known = self.site.check_target(target)
            if known is not None:
                self._report(optional, "aux request on topic %r: %s", topic, known)
                results[target] = _error_reply(ReturnCode.ERROR, known)
                continue
            template = encoded_once.get(id(request))
            if template is None:
                request.set_header(ReservedHeaderKey.TOPIC, topic)
                request.set_peer_props(props)
                template = make_frame(kind, request, topic=topic, job_id=self.site.job_id)
                encoded_once[id(request)] = template
            frames[target] = template
        waiter = _Waiter(list(frames) if wait else [])
        deadline = time.monotonic() + timeout if wait else None
        # several targets: a frame that may have to wait (a large one, or one whose target has no room now) is
        # sent side by side with the others, so that a slow target costs only its own request its time
        side_by_side = wait and len(frames) > 1
        deferred: list[tuple[str, Frame, tuple[str, str]]] = []

        def failed(target: str, key: tuple[str, str], exc: TransportError) -> None:
            self._report(optional, "aux request on topic %r to %s could not be sent: %s", topic, target, exc)
            if wait:
                rc = ReturnCode.TIMEOUT if isinstance(exc, TransportTimeout) else ReturnCode.COMMUNICATION_ERROR
                with self._lock:
                    self._pending.pop(key, None)
                waiter.settle(target, error=_error_reply(rc, f"{target}: {exc}"))

        for target, template in frames.items():
            msg_id = new_message_id()
            frame = Frame(
                kind=kind,
                msg_id=msg_id,
                topic=topic,
                job_id=self.site.job_id,
                meta=template.meta,
                buffers=template.buffers,
            )
            key = (target, msg_id)
            if wait:
                with self._lock:
                    self._pending[key] = waiter
            if side_by_side and template.nbytes > _SEND_INLINE_BYTES:
                deferred.append((target, frame, key))
                continue
            try:
                if side_by_side:
                    self.site.send_frame(target, frame, timeout=0)  # now, if its target has room
                else:
                    self._send_by(target, frame, deadline, timeout)
            except TransportTimeout as exc:
                if side_by_side:
                    deferred.append((target, frame, key))
                else:
                    failed(target, key, exc)
            except TransportError as exc:
                failed(target, key, exc)
        if deferred:
            pool = self.site.sender_pool()
            sends = [(t, k, pool.submit(self._send_by, t, f, deadline, timeout)) for t, f, k in deferred]
            for target, key, future in sends:  # each ends by the deadline: sent, failed or cancelled
                try:
                    future.result()
                except TransportError as exc:
                    failed(target, key, exc)
        if not wait:
            return {}
        assert deadline is not None
        waiter.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for key in [k for k, w in self._pending.items() if w is waiter]:
                self._pending.pop(key, None)
        with waiter.lock:
            late = set(waiter.remaining)
            waiter.remaining.clear()
            replies = dict(waiter.frames)
            errors = dict(waiter.errors)
        for target in late:
            self._report(optional, "aux request on topic %r to %s timed out after %ss", topic, target, timeout)
            errors[target] = _error_reply(ReturnCode.TIMEOUT, f"no reply from {target} within {timeout}s")
        results.update(errors)
        for target, frame in replies.items():
            results[target] = self._reply_from_frame(target, frame, topic)
        return {t: results[t] for t in target_requests if t in results}

    def _send_by(self, target: str, frame: Frame, deadline: float | None, timeout: float) -> None:
        """Send ``frame`` to ``target`` within what is left until ``deadline`` (None: no limit)."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TransportTimeout(f"no time left to send to {target} within {timeout}s")
        self.site.send_frame(target, frame, timeout=left)

    def _reply_from_frame(self, target: str, frame: Frame, topic: str) -> Shareable:
        try:
            reply = frame_shareable(frame, self.site.tensor_device)
        except CodecError as exc:
            self.site.log.error("reply from %s on topic %r cannot be decoded: %s", target, topic, exc)
            return _error_reply(ReturnCode.COMMUNICATION_ERROR, f"undecodable reply from {target}: {exc}")
        props = reply.get_peer_props()
        props = dict(props) if isinstance(props, dict) else {}
        props[ReservedKey.IDENTITY_NAME] = frame.sender
        reply.set_peer_props(props)
        reply.set_peer_context(props)
        return reply

    def _report(self, optional: bool, msg: str, *args: Any) -> None:
        if optional:
            self.site.log.debug(msg, *args)
        else:
            self.site.log.error(msg, *args)

    # receiving ---------------------------------------------------------------------------------------
    def on_request(self, frame: Frame) -> None:
        """Called from the transport: hold the request until ready, else hand it to the worker pool.

        What one peer may have waiting here (held or queued, not yet handled) is bounded: past
        ``MAX_WAITING_PER_PEER`` requests or ``MAX_WAITING_BYTES_PER_PEER`` bytes its requests are dropped (they
        time out at the sender), logged once per peer every 10 s. A request is always taken when none of that
        peer's is waiting, however large (the transport's ``max_message_size`` bounds it).
        """
        size = frame.nbytes
        with self._lock:
            waiting = self._waiting.get(frame.sender)
            if waiting is None:
                waiting = self._waiting[frame.sender] = [0, 0]
            # one request is always taken when none of that peer's waits (its bytes are here already, and the
            # transport's max_message_size bounds them): a single large request is work, not a flood
            over = waiting[0] >= MAX_WAITING_PER_PEER or (
                waiting[0] > 0 and waiting[1] + size > MAX_WAITING_BYTES_PER_PEER
            )
            if not over:
                waiting[0] += 1
                waiting[1] += size
                if not self._ready:
                    self._held.append(frame)
                    return
        if over:
            self._dropped(frame, waiting)
            return
        try:
            self._pool.submit(self._handle_request, frame)
        except RuntimeError:  # pool shut down: the site is ending
            self._done_with(frame)
            self._reply(frame, _error_reply(ReturnCode.SERVICE_UNAVAILABLE, f"{self.site.name} is shutting down"))

    def _done_with(self, frame: Frame) -> None:
        with self._lock:
            waiting = self._waiting.get(frame.sender)
            if waiting is not None:
                waiting[0] -= 1
                waiting[1] -= frame.nbytes
                if waiting[0] <= 0:
                    del self._waiting[frame.sender]

    def _dropped(self, frame: Frame, waiting: list[int]) -> None:
        allowed = self._drop_log.check(frame.sender)
        if allowed is not None:
            count = allowed[0] + 1  # this one too
            self.site.log.warning(
                "dropped %d aux request(s) from %s (topic %r): %d requests (%d bytes) from it are already waiting "
                "here, the most one peer may have; they time out at %s",
                count,
                frame.sender,
                frame.topic,
                waiting[0],
                waiting[1],
                frame.sender,
            )

    def on_reply(self, frame: Frame) -> None:
        """Called from the transport: settle the request this reply answers, if it went to the reply's sender."""
        key = (frame.sender, frame.ref_id)
        with self._lock:
            waiter = self._pending.pop(key, None)
            if waiter is None:
                self._stray += 1
                stray = self._stray
        if waiter is None:
            # late (after its timeout), or not an answer to anything sent to that site: never accepted
            log = self.site.log.warning if stray & (stray - 1) == 0 else self.site.log.debug  # 1, 2, 4, 8...
            log(
                "dropped an aux reply from %s (topic %r) that answers no request pending to it (%d so far)",
                frame.sender,
                frame.topic,
                stray,
            )
            return
        waiter.settle(frame.sender, frame=frame)

    def peer_down(self, name: str) -> None:
        """Fail the pending requests to ``name`` at once (it left)."""
        if not self._pending:
            return
        with self._lock:
            gone = [(k, w) for k, w in self._pending.items() if k[0] == name]
            for k, _ in gone:
                self._pending.pop(k, None)
        for _, waiter in gone:
            waiter.settle(name, error=_error_reply(ReturnCode.COMMUNICATION_ERROR, f"{name} disconnected"))

    def _handle_request(self, frame: Frame) -> None:
        try:
            reply = self._process(frame)
        finally:
            self._done_with(frame)
        if frame.kind == Kind.AUX_REQUEST:
            self._reply(frame, reply)

    def _process(self, frame: Frame) -> Shareable:
        topic = frame.topic
        site = self.site
        refusal = site.refuse_peer(frame.sender)
        if refusal:
            site.log.warning("refused an aux request on topic %r from %s: %s", topic, frame.sender, refusal)
            return _error_reply(ReturnCode.UNAUTHENTICATED, refusal)
        if frame.job_id != site.job_id:
            site.log.error(
                "aux request on topic %r from %s is for run %r, not this run", topic, frame.sender, frame.job_id
            )
            return _error_reply(ReturnCode.RUN_MISMATCH, f"{site.name} runs {site.job_id!r}, not {frame.job_id!r}")
        try:
            request = frame_shareable(frame, site.tensor_device)
        except CodecError as exc:
            site.log.error("aux request on topic %r from %s cannot be decoded: %s", topic, frame.sender, exc)
            return _error_reply(ReturnCode.BAD_REQUEST_DATA, f"{site.name} cannot decode the request: {exc}")
        props = request.get_peer_props()
        if not isinstance(props, dict):
            return _error_reply(ReturnCode.MISSING_PEER_CONTEXT, "the request carries no peer props")
        props = dict(props)
        props[ReservedKey.IDENTITY_NAME] = frame.sender  # the transport's word, not the peer's claim
        request.set_peer_props(props)
        handler = self._handlers.get(topic)
        fl_ctx = site.new_context()
        fl_ctx.set_peer_context(peer_context_from_props(props))
        if handler is None:
            site.log.error(
                "no aux handler for topic %r (request from %s); register one with "
                "engine.register_aux_message_handler(topic, func), e.g. at EventType.START_RUN",
                topic,
                frame.sender,
            )
            return _error_reply(ReturnCode.TOPIC_UNKNOWN, f"no handler for topic {topic!r} at {site.name}")
        try:
            reply = handler(topic=topic, request=request, fl_ctx=fl_ctx)
        except Exception as exc:
            site.log.exception("aux handler for topic %r raised on a request from %s", topic, frame.sender)
            return _error_reply(ReturnCode.HANDLER_EXCEPTION, f"handler for {topic!r} at {site.name} raised {exc!r}")
        if not isinstance(reply, Shareable):
            site.log.error(
                "aux handler for topic %r returned %s, not a Shareable; return make_reply(ReturnCode.OK) or a "
                "DXO's to_shareable()",
                topic,
                type(reply).__name__,
            )
            return _error_reply(
                ReturnCode.ERROR,
                f"handler for {topic!r} at {site.name} returned {type(reply).__name__}, not a Shareable",
            )
        return reply

    def _reply(self, request: Frame, reply: Shareable) -> None:
        site = self.site
        reply.set_peer_props({ReservedKey.IDENTITY_NAME: site.name, ReservedKey.RUN_NUM: site.job_id})
        try:
            frame = make_frame(Kind.AUX_REPLY, reply, ref_id=request.msg_id, topic=request.topic, job_id=site.job_id)
        except CodecError as exc:
            site.log.error("reply to %s on topic %r cannot be encoded: %s", request.sender, request.topic, exc)
            frame = make_frame(
                Kind.AUX_REPLY,
                _error_reply(ReturnCode.ERROR, f"{site.name} could not encode its reply: {exc}"),
                ref_id=request.msg_id,
                topic=request.topic,
                job_id=site.job_id,
            )
        try:
            site.send_frame(request.sender, frame)
        except TransportError as exc:
            site.log.warning("reply to %s on topic %r not delivered: %s", request.sender, request.topic, exc)

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop taking requests; handle those already received first, for up to ``drain_timeout`` seconds.

        Sends still waiting for replies (an executor or a handler of this site blocked in one) return at once
        with an error reply: the run is over here, so no thread of it stays behind waiting.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
        for (target, _), waiter in pending.items():
            waiter.settle(
                target,
                error=_error_reply(
                    ReturnCode.SERVICE_UNAVAILABLE, f"{self.site.name} ended its run before {target} replied"
                ),
            )
        self.site.close_sender_pool()
        if not self._pool.shutdown(drain_timeout) and drain_timeout > 0:
            self.site.log.warning("aux handlers still running %ss after the end of the run", drain_timeout)


def resolve_targets(targets: Any, me: str, sites: list[str]) -> list[str]:
    """Turn ``targets`` (None, "@ALL", a name, or a list of names) into a list of names (duplicates removed)."""
    if targets is None or targets == SiteType.ALL:
        return [s for s in sites if s != me]
    if isinstance(targets, str):
        return [targets]
    if isinstance(targets, (list, tuple, set)):
        names: list[str] = []
        for t in targets:
            name = getattr(t, "name", t)
            if not isinstance(name, str):
                raise TypeError(f"aux targets must be site names (str), got {type(t).__name__}")
            if name == SiteType.ALL:
                names.extend(s for s in sites if s != me)
            else:
                names.append(name)
        return list(dict.fromkeys(names))
    raise TypeError(f"aux targets must be None, a site name or a list of site names, got {type(targets).__name__}")
