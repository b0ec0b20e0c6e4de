"""FLComponent: the base of every component (events, logging with the site context, system_panic)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

from .engine_spec import ServerEngineSpec
from .event_type import EventType
from .fl_constant import EventScope, FedEventHeader, FLContextKey, ReservedKey, SiteType
from .fl_context import FLContext
from .shareable import ReservedHeaderKey, Shareable

_log_event_guard = threading.local()

FED_EVENT_TOPIC = "fed.event"  # the aux topic federated events travel on
FED_EVENT_PREFIX = "fed."  # receivers accept only federated event types that start with it
_UNSET = object()


def generate_log_prefix(fl_ctx: FLContext | None) -> str:
    """Return ``[identity=..., run=..., peer=..., peer_run=..., task_name=..., task_id=...]`` for ``fl_ctx``."""
    if fl_ctx is None:
        return ""
    parts = [f"identity={fl_ctx.get_identity_name()}", f"run={fl_ctx.get_job_id() or '?'}"]
    peer = fl_ctx.get_peer_context()
    if peer is not None:
        parts.append(f"peer={peer.get_identity_name() or '?'}")
        parts.append(f"peer_run={peer.get_job_id() or '?'}")
    task_name = fl_ctx.get_prop(FLContextKey.TASK_NAME)
    if task_name:
        parts.append(f"task_name={task_name}")
        task_id = fl_ctx.get_prop(FLContextKey.TASK_ID)
        if task_id:
            parts.append(f"task_id={task_id}")
    return "[" + ", ".join(parts) + "]"


@contextlib.contextmanager
def _event_props(fl_ctx: FLContext, props: dict[str, Any]) -> Iterator[None]:
    """Set private, non-sticky ``props`` on ``fl_ctx`` for the duration of an event, then put back what was there."""
    previous = {k: fl_ctx.get_prop(k, _UNSET) for k in props}
    for k, v in props.items():
        fl_ctx.set_prop(k, v, private=True, sticky=False)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is _UNSET:
                fl_ctx.remove_prop(k, force_removal=True)
            else:
                fl_ctx.set_prop(k, v, private=True, sticky=False)


def _target_names(targets: Any) -> Any:
    """``targets`` as the ``_targets`` header holds it: None, a name, or a list of names (Client objects by name)."""
    if isinstance(targets, (list, tuple, set)):
        return [getattr(t, "name", t) for t in targets]
    return getattr(targets, "name", targets)


class FLComponent:
    """Base class of controllers, executors and other components: event handling and contextual logging."""

    def __init__(self) -> None:
        self._name = type(self).__name__
        self.logger = logging.getLogger(self._name)
        self._event_handlers: dict[str, list[tuple[Callable, dict]]] = {}

    def _ensure_base(self) -> None:
        # Subclasses that forget super().__init__() still get a name, a logger and a handler table.
        if "_event_handlers" not in self.__dict__:
            self._name = type(self).__name__
            self.logger = logging.getLogger(self._name)
            self._event_handlers = {}

    @property
    def name(self) -> str:
        """The component's name: its class name."""
        self._ensure_base()
        return self._name

    # events ------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Handle an event fired at this site; override to react (e.g. register aux handlers at START_RUN)."""

    def register_event_handler(self, event_types: str | list[str], handler: Callable, **kwargs: Any) -> None:
        """Call ``handler(event_type, fl_ctx, **kwargs)`` for the given event type(s), besides handle_event."""
        self._ensure_base()
        if isinstance(event_types, str):
            event_types = [event_types]
        if not callable(handler):
            raise ValueError(
                f"{self.name}.register_event_handler: handler must be callable, got {type(handler).__name__}"
            )
        for et in event_types:
            self._event_handlers.setdefault(et, []).append((handler, kwargs))

    def get_event_handlers(self) -> dict:
        """Return the handlers registered with register_event_handler."""
        self._ensure_base()
        return self._event_handlers

    def _dispatch_event(self, event_type: str, fl_ctx: FLContext) -> None:
        self.handle_event(event_type, fl_ctx)
        self._ensure_base()
        for handler, kwargs in self._event_handlers.get(event_type, ()):
            handler(event_type, fl_ctx, **kwargs)

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Fire ``event_type`` to every component of this site."""
        engine = fl_ctx.get_engine()
        if engine is None:
            raise RuntimeError(f"{self.name}.fire_event({event_type}): the FLContext has no engine")
        fl_ctx.set_prop(FLContextKey.EVENT_ORIGIN, self.name, private=True, sticky=False)
        with _event_props(fl_ctx, {FLContextKey.EVENT_SCOPE: EventScope.LOCAL}):
            engine.fire_event(event_type, fl_ctx)

    def fire_fed_event(self, event_type: str, event_data: Shareable, fl_ctx: FLContext, targets: Any = None) -> None:
        """Fire ``event_type`` here as a federated event, then send it to ``targets`` without waiting.

        The local handlers see EVENT_SCOPE ``"federation"`` and EVENT_DATA ``event_data``; then the event goes to
        the other sites as a fire-and-forget aux request on topic ``"fed.event"``, whose receivers fire it again
        with EVENT_SCOPE ``"federation"`` and the sender as the peer context. ``targets``: site names; None sends
        a client's event to the server and the server's to every client. Only event types that start with
        ``"fed."`` are accepted by receivers; other types are fired here only (logged as an error). An event
        received from another site (header ``_direction`` ``"in"``) is fired here only, never sent on.

        flarelite differences: ``targets`` is honoured at clients too (NVFlare sends a client's event to the
        server only); the fl_ctx's EVENT_DATA and EVENT_SCOPE are restored after the local handlers ran.

        Raises:
            TypeError: ``event_type`` is not a non-empty str, ``event_data`` not a Shareable, ``fl_ctx`` not an
                FLContext, or ``targets`` is not None, a site name or a list of site names.
            RuntimeError: the FLContext has no engine.
        """
        if not isinstance(event_type, str) or not event_type:
            raise TypeError(f"{self.name}.fire_fed_event: event_type must be a non-empty str, got {event_type!r}")
        if not isinstance(event_data, Shareable):
            raise TypeError(
                f"{self.name}.fire_fed_event({event_type}): event_data must be a Shareable, "
                f"got {type(event_data).__name__}"
            )
        if not isinstance(fl_ctx, FLContext):
            raise TypeError(f"{self.name}.fire_fed_event({event_type}): expected an FLContext, got {type(fl_ctx)}")
        engine = fl_ctx.get_engine()
        if engine is None:
            raise RuntimeError(f"{self.name}.fire_fed_event({event_type}): the FLContext has no engine")
        incoming = event_data.get_header(FedEventHeader.DIRECTION) == "in"
        if not incoming:
            event_data.set_header(FedEventHeader.EVENT_TYPE, event_type)
            event_data.set_header(FedEventHeader.ORIGIN, fl_ctx.get_identity_name())
            event_data.set_header(FedEventHeader.TIMESTAMP, time.time())
            event_data.set_header(FedEventHeader.EVENT_ID, secrets.token_hex(16))
            event_data.set_header(FedEventHeader.DIRECTION, "out")
            event_data.set_header(FedEventHeader.TARGETS, _target_names(targets))
        fl_ctx.set_prop(FLContextKey.EVENT_ORIGIN, self.name, private=True, sticky=False)
        fed_props = {FLContextKey.EVENT_DATA: event_data, FLContextKey.EVENT_SCOPE: EventScope.FEDERATION}
        with _event_props(fl_ctx, fed_props):
            engine.fire_event(event_type, fl_ctx)
        if incoming:
            return
        if not event_type.startswith(FED_EVENT_PREFIX):
            self.log_error(
                fl_ctx,
                f"federated event {event_type!r} was fired here only: other sites accept only event types that "
                f"start with {FED_EVENT_PREFIX!r}; name it {FED_EVENT_PREFIX + event_type!r}",
                fire_event=False,
            )
            return
        at_server = isinstance(engine, ServerEngineSpec) or fl_ctx.get_identity_name() == SiteType.SERVER
        if targets is None and not at_server:
            targets = SiteType.SERVER
        request = Shareable({k: v for k, v in event_data.items() if k != ReservedHeaderKey.HEADERS})
        request[ReservedHeaderKey.HEADERS] = dict(event_data.get(ReservedHeaderKey.HEADERS) or {})
        engine.send_aux_request(targets, FED_EVENT_TOPIC, request, 0, fl_ctx)

    def fire_event_with_data(self, event_type: str, fl_ctx: FLContext, data_key: str, data: Any) -> None:
        """Set ``data_key`` in ``fl_ctx`` then fire ``event_type``."""
        fl_ctx.set_prop(data_key, data, private=True, sticky=False)
        self.fire_event(event_type, fl_ctx)

    def system_panic(self, reason: str, fl_ctx: FLContext) -> None:
        """End the run at once because of ``reason`` (logged, and reported as the run's failure)."""
        self.log_critical(fl_ctx, f"system panic: {reason}", fire_event=False)
        fl_ctx.set_prop(FLContextKey.EVENT_DATA, reason, private=True, sticky=False)
        fl_ctx.set_prop(ReservedKey.FATAL_SYSTEM_ERROR, reason, private=True, sticky=False)
        engine = fl_ctx.get_engine()
        if engine is not None:
            engine.fire_event(EventType.FATAL_SYSTEM_ERROR, fl_ctx)
            engine.abort_run(f"{self.name}: {reason}", fl_ctx)

    # logging -----------------------------------------------------------------------------------------
    def _log(
        self, level: int, fl_ctx: FLContext | None, msg: str, event: str | None = None, exc_info: bool = False
    ) -> None:
        self._ensure_base()
        prefix = generate_log_prefix(fl_ctx)
        site = fl_ctx.get_identity_name() if fl_ctx is not None else None
        text = f"{prefix} - {msg}" if prefix else msg
        self.logger.log(level, text, exc_info=exc_info, extra={"site": site} if site else None, stacklevel=3)
        if event is not None and fl_ctx is not None and fl_ctx.get_engine() is not None:
            self._fire_log_event(event, text, fl_ctx)

    def _fire_log_event(self, event: str, text: str, fl_ctx: FLContext) -> None:
        if getattr(_log_event_guard, "active", False):  # a log call made while handling a log event
            return
        from .dxo import DXO, DataKind

        _log_event_guard.active = True
        try:
            data = DXO(DataKind.ANALYTIC, {"message": text, "component": self.name}).to_shareable()
            self.fire_event_with_data(event, fl_ctx, FLContextKey.EVENT_DATA, data)
        finally:
            _log_event_guard.active = False

    def log_debug(self, fl_ctx: FLContext | None, msg: str, fire_event: bool = False) -> None:
        """Log at DEBUG with the site context prefix; ``fire_event`` also fires DEBUG_LOG_AVAILABLE."""
        self._log(logging.DEBUG, fl_ctx, msg, EventType.DEBUG_LOG_AVAILABLE if fire_event else None)

    def log_info(self, fl_ctx: FLContext | None, msg: str, fire_event: bool = False) -> None:
        """Log at INFO with the site context prefix; ``fire_event`` also fires INFO_LOG_AVAILABLE."""
        self._log(logging.INFO, fl_ctx, msg, EventType.INFO_LOG_AVAILABLE if fire_event else None)

    def log_warning(self, fl_ctx: FLContext | None, msg: str, fire_event: bool = True) -> None:
        """Log at WARNING with the site context prefix; ``fire_event`` also fires WARNING_LOG_AVAILABLE."""
        self._log(logging.WARNING, fl_ctx, msg, EventType.WARNING_LOG_AVAILABLE if fire_event else None)

    def log_error(self, fl_ctx: FLContext | None, msg: str, fire_event: bool = True) -> None:
        """Log at ERROR with the site context prefix; ``fire_event`` also fires ERROR_LOG_AVAILABLE."""
        self._log(logging.ERROR, fl_ctx, msg, EventType.ERROR_LOG_AVAILABLE if fire_event else None)

    def log_critical(self, fl_ctx: FLContext | None, msg: str, fire_event: bool = True) -> None:
        """Log at CRITICAL with the site context prefix; ``fire_event`` also fires CRITICAL_LOG_AVAILABLE."""
        self._log(logging.CRITICAL, fl_ctx, msg, EventType.CRITICAL_LOG_AVAILABLE if fire_event else None)

    def log_exception(self, fl_ctx: FLContext | None, msg: str, fire_event: bool = False) -> None:
        """Log at ERROR with the traceback; ``fire_event`` also fires EXCEPTION_LOG_AVAILABLE."""
        self._log(logging.ERROR, fl_ctx, msg, EventType.EXCEPTION_LOG_AVAILABLE if fire_event else None, True)
