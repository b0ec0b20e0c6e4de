"""Experiment tracking widgets: AnalyticsSender fires tracking records as events, AnalyticsReceiver records them.

A record is fired as the local event ``analytix_log_stats``; ``ConvertToFedEvent`` on a client sends it to the
server as ``fed.analytix_log_stats``, where a receiver (TensorBoard, MLflow...) saves it under the client's name.

flarelite differences: a record that reaches one receiver twice as the same object (the local event, then its
federated copy fired by ``ConvertToFedEvent`` on the same site) is saved once; a receiver whose ``initialize``
failed drops the records it gets (logged once) instead of failing on each of them; records that ``save`` refuses
are logged once per sending site every 10 s (with the count of the others), since a peer can send them again and
again; the stock receivers refuse a record that holds more than ``MAX_RECORD_ENTRIES`` (1000, MLflow's batch
limit) entries (see ``check_record_size``).
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

from flarelite import logsafe
from flarelite.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsData, AnalyticsDataType, LogWriterName
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReservedKey
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo

from .widget import Widget

MAX_RECORD_ENTRIES = 1000  # entries (metrics, parameters, tags) one record may hold at the stock receivers


def check_record_size(data: AnalyticsData) -> None:
    """Refuse a record whose value holds more than ``MAX_RECORD_ENTRIES`` entries (what one record may cost).

    Raises:
        ValueError: the record's dict value is larger than that.
    """
    if isinstance(data.value, dict) and len(data.value) > MAX_RECORD_ENTRIES:
        raise ValueError(
            f"record {data.tag!r} ({data.data_type.value}) holds {len(data.value)} entries, more than "
            f"{MAX_RECORD_ENTRIES} entries a record may hold; it is not written (split it into smaller records)"
        )


class AnalyticsSender(Widget):
    """Fires tracking records as ``event_type`` events at its site (add it to the job next to the code using it)."""

    def __init__(self, event_type: str = ANALYTIC_EVENT_TYPE, writer_name: LogWriterName = LogWriterName.TORCH_TB):
        """Fire records as ``event_type`` events, in the syntax of ``writer_name``."""
        super().__init__()
        self.engine: Any = None
        self.event_type = event_type
        self.writer_name = LogWriterName(writer_name)  # a job config holds the str value

    @property
    def writer(self) -> LogWriterName:
        """The writer syntax the records follow (NVFlare's attribute name)."""
        return self.writer_name

    @writer.setter
    def writer(self, value: LogWriterName) -> None:
        self.writer_name = LogWriterName(value)

    def get_writer_name(self) -> LogWriterName:
        """Return the writer syntax the records follow."""
        return self.writer_name

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Take the site's engine at ABOUT_TO_START_RUN / START_RUN."""
        if event_type in (EventType.ABOUT_TO_START_RUN, EventType.START_RUN):
            self.engine = fl_ctx.get_engine()

    def add(
        self, tag: str, value: Any, data_type: AnalyticsDataType, global_step: int | None = None, **kwargs: Any
    ) -> None:
        """Fire one record (``global_step`` and ``kwargs`` travel with it).

        Raises:
            TypeError: ``global_step`` is not an int, or the record is invalid (see ``AnalyticsData``).
            ValueError: ``global_step`` is negative.
            RuntimeError: the sender has no engine yet (it is not a component of a running job).
        """
        if global_step is not None:
            if isinstance(global_step, bool) or not isinstance(global_step, int):
                raise TypeError(
                    f"{self.name}.add({tag!r}): global_step must be an int, got {type(global_step).__name__}"
                )
            kwargs["global_step"] = global_step
        dxo = create_analytic_dxo(tag, value, data_type, writer=self.get_writer_name(), **kwargs)
        if self.engine is None:
            raise RuntimeError(
                f"{self.name}.add({tag!r}): the sender has no engine: add it to the job as a component "
                "(job.to(sender, site)) so that it gets START_RUN, and use it only while the job runs"
            )
        with self.engine.new_context() as fl_ctx:
            send_analytic_dxo(self, dxo=dxo, fl_ctx=fl_ctx, event_type=self.event_type)

    def close(self) -> None:
        """Forget the engine (later records raise RuntimeError)."""
        self.engine = None


class AnalyticsReceiver(Widget, ABC):
    """Records the tracking events it listens to: ``initialize`` at START_RUN, ``save`` per record, ``finalize``.

    The record's origin is the sending site (the identity its connection proved) for a federated event received
    from another site, and this site's name otherwise. Exceptions in the three methods are logged, never raised;
    records that arrive after END_RUN are dropped; ``save`` calls never overlap.
    """

    def __init__(self, events: list[str] | None = None):
        """Listen to ``events`` (default: ``["analytix_log_stats", "fed.analytix_log_stats"]``)."""
        super().__init__()
        if events is None:
            events = [ANALYTIC_EVENT_TYPE, f"fed.{ANALYTIC_EVENT_TYPE}"]
        if not isinstance(events, (list, tuple)) or not all(isinstance(e, str) for e in events):
            raise TypeError(f"{type(self).__name__}: events must be a list of event types, got {events!r}")
        self.events = list(events)
        self._save_lock = threading.Lock()
        self._end = False
        self._ready = False
        self._told_inactive = False
        self._recent: deque[weakref.ref] = deque(maxlen=16)  # the last records saved (same-object duplicates)
        self._save_log = logsafe.RateLimit()  # save failures: one line per sending site every 10 s

    @abstractmethod
    def initialize(self, fl_ctx: FLContext) -> None:
        """Prepare the receiver (called at START_RUN)."""

    @abstractmethod
    def save(self, fl_ctx: FLContext, shareable: Shareable, record_origin: str) -> None:
        """Save one record (a DXO's Shareable) that ``record_origin`` (a site name) produced."""

    @abstractmethod
    def finalize(self, fl_ctx: FLContext) -> None:
        """Flush and close (called at END_RUN)."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Run initialize at START_RUN, save for each record event, finalize at END_RUN."""
        if event_type == EventType.START_RUN:
            try:
                self.initialize(fl_ctx)
                self._ready = True
            except Exception as exc:
                self.log_exception(fl_ctx, f"{self.name}.initialize failed; it records nothing in this run: {exc}")
        elif event_type == EventType.END_RUN:
            with self._save_lock:
                self._end = True
            if self._ready:
                try:
                    self.finalize(fl_ctx)
                except Exception as exc:
                    self.log_exception(fl_ctx, f"{self.name}.finalize failed: {exc}")
        elif event_type in self.events:
            self._receive(event_type, fl_ctx)

    def _receive(self, event_type: str, fl_ctx: FLContext) -> None:
        if self._end:
            self.log_debug(fl_ctx, f"the run has ended; dropped event {event_type}")
            return
        if not self._ready:
            if not self._told_inactive:
                self._told_inactive = True
                self.log_warning(fl_ctx, f"{self.name} is not initialized; dropped event {event_type}", False)
            return
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        if not isinstance(data, Shareable):
            self.log_error(
                fl_ctx, f"event {event_type}: expected a Shareable as event data, got {type(data).__name__}", False
            )
            return
        origin = self._record_origin(fl_ctx, data)
        if not origin:
            self.log_error(fl_ctx, f"event {event_type}: the record's origin is unknown; dropped", False)
            return
        with self._save_lock:
            if self._end:
                return
            if any(ref() is data for ref in self._recent):
                return  # the same record again (its local event and its federated copy)
            self._recent.append(weakref.ref(data))
            try:
                self.save(fl_ctx=fl_ctx, shareable=data, record_origin=origin)
            except Exception as exc:
                self._save_failed(fl_ctx, origin, exc)

    def _save_failed(self, fl_ctx: FLContext, origin: str, exc: Exception) -> None:
        """Log a failed save once per origin every 10 s: a bad record (TypeError, ValueError) without a traceback."""
        allowed = self._save_log.check(origin)
        if allowed is None:
            return
        more = f" ({allowed[0]} more since the last line)" if allowed[0] else ""
        text = f"{self.name}.save failed on a record from {origin}: {exc}{more}"
        if isinstance(exc, (TypeError, ValueError)):
            self.log_error(fl_ctx, text, fire_event=False)
        else:
            self.log_exception(fl_ctx, text)

    @staticmethod
    def _record_origin(fl_ctx: FLContext, data: Shareable) -> str | None:
        """The sending site for a federated event received from another site, else this site."""
        received = (
            fl_ctx.get_prop(FLContextKey.EVENT_SCOPE) == EventScope.FEDERATION
            and data.get_header(FedEventHeader.DIRECTION) == "in"
        )
        if not received:
            return fl_ctx.get_identity_name() or None
        peer = fl_ctx.get_peer_context()
        name = peer.get_identity_name() if peer is not None else None
        return name or data.get_peer_prop(ReservedKey.IDENTITY_NAME, None)


def site_run_dir(fl_ctx: FLContext) -> str:
    """Return this site's run folder (where receivers write): the APP_ROOT prop, else the workspace's run dir.

    A flarelite helper for receivers.

    Raises:
        RuntimeError: the context names no run folder (the component does not run in a site).
    """
    run_dir = fl_ctx.get_prop(ReservedKey.APP_ROOT)
    if not run_dir:
        workspace = fl_ctx.get_workspace()
        get = getattr(workspace, "get_run_dir", None)
        run_dir = get(fl_ctx.get_job_id()) if callable(get) else None
    if not isinstance(run_dir, str) or not run_dir:
        raise RuntimeError(f"site {fl_ctx.get_identity_name()!r}: the FLContext names no run folder to write into")
    return run_dir
