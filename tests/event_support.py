"""Shared by the event, analytics and tracking tests: the fixture-module importer, a recording engine, a watcher,
and the context a site's federated-event worker builds for an event received from a peer."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from flarelite.apis.fl_component import FLComponent
from flarelite.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReservedKey
from flarelite.apis.fl_context import FLContext, FLContextManager, peer_context_from_props
from flarelite.apis.shareable import Shareable

FIXTURES = str(Path(__file__).parent / "fedjob_fixtures")


def fixture_module(name: str) -> Iterator[ModuleType]:
    """Import ``tests/fedjob_fixtures/<name>.py`` as top-level module ``name`` (as a job's custom code is).

    For a module-scoped fixture: ``yield from fixture_module("filter_modules")``.
    """
    added = FIXTURES not in sys.path
    if added:
        sys.path.insert(0, FIXTURES)
    yield importlib.import_module(name)
    if added and FIXTURES in sys.path:
        sys.path.remove(FIXTURES)


class RecordingEngine:
    """Just enough of a site's engine: fires events to its components, records the aux requests it sends."""

    def __init__(self, name: str = "site-1", **stickers: Any) -> None:
        self.components: dict[str, Any] = {}
        self.sent: list[tuple[Any, str, Shareable, float]] = []
        self.manager = FLContextManager(engine=self, identity_name=name, job_id="job", private_stickers=stickers)

    def new_context(self) -> FLContext:
        return self.manager.new_context()

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        for comp in list(self.components.values()):
            comp._dispatch_event(event_type, fl_ctx)

    def get_component(self, cid: str) -> Any:
        return self.components.get(cid)

    def send_aux_request(self, targets, topic, request, timeout, fl_ctx, optional=False, secure=False):
        self.sent.append((targets, topic, request, timeout))
        return {}


class Watcher(FLComponent):
    """Records ``(event type, EVENT_SCOPE, EVENT_DATA)`` of every event but the runtime's own (``_start_run``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any, Any]] = []

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if not event_type.startswith("_"):
            self.seen.append(
                (event_type, fl_ctx.get_prop(FLContextKey.EVENT_SCOPE), fl_ctx.get_prop(FLContextKey.EVENT_DATA))
            )


def received_ctx(engine: RecordingEngine, peer: str, data: Shareable) -> FLContext:
    """A context as the federated-event worker builds it for ``data`` received from ``peer`` (the proved name)."""
    data.set_header(FedEventHeader.DIRECTION, "in")
    ctx = engine.new_context()
    ctx.set_peer_context(peer_context_from_props({ReservedKey.IDENTITY_NAME: peer}))
    ctx.set_prop(FLContextKey.EVENT_DATA, data, private=True, sticky=False)
    ctx.set_prop(FLContextKey.EVENT_SCOPE, EventScope.FEDERATION, private=True, sticky=False)
    return ctx
