"""ConvertToFedEvent: fire chosen local events again as federated events (``"fed."`` + their type)."""

from __future__ import annotations

from flarelite.apis.fl_constant import EventScope, FLContextKey
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable

from .widget import Widget

FED_EVENT_PREFIX = "fed."


class ConvertToFedEvent(Widget):
    """Re-fires each local event of ``events_to_convert`` as federated event ``fed_event_prefix + type``.

    On a client this sends e.g. ``analytix_log_stats`` to the server as ``fed.analytix_log_stats``, where an
    AnalyticsReceiver records it under the client's name. Events that already are federated are left alone.
    """

    def __init__(self, events_to_convert: list[str], fed_event_prefix: str = FED_EVENT_PREFIX) -> None:
        """Convert the local events named in ``events_to_convert``; the new type is ``fed_event_prefix + type``.

        Raises:
            TypeError: ``events_to_convert`` is not a list of str, or ``fed_event_prefix`` not a str.
        """
        super().__init__()
        if not isinstance(events_to_convert, (list, tuple)) or not all(isinstance(e, str) for e in events_to_convert):
            raise TypeError(
                f"ConvertToFedEvent: events_to_convert must be a list of event types, got {events_to_convert!r}"
            )
        if not isinstance(fed_event_prefix, str):
            raise TypeError(f"ConvertToFedEvent: fed_event_prefix must be a str, got {type(fed_event_prefix).__name__}")
        self.events_to_convert = list(events_to_convert)
        self.fed_event_prefix = fed_event_prefix

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Fire a local event of ``events_to_convert`` again as a federated event with the same data."""
        if event_type not in self.events_to_convert:
            return
        if fl_ctx.get_prop(FLContextKey.EVENT_SCOPE, EventScope.LOCAL) == EventScope.FEDERATION:
            return  # already a federated event
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        if data is None:
            self.log_error(fl_ctx, f"event {event_type!r} has no event data to convert", fire_event=False)
            return
        if not isinstance(data, Shareable):
            self.log_error(
                fl_ctx,
                f"event {event_type!r}: expected its data to be a Shareable, got {type(data).__name__}",
                fire_event=False,
            )
            return
        self.fire_fed_event(self.fed_event_prefix + event_type, data, fl_ctx)
