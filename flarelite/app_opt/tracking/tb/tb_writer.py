"""TBWriter: a component with TensorBoard's ``add_scalar``/``add_scalars`` that fires the analytix event.

Add it to a site (``job.to(TBWriter(), "site-1", id="tb_writer")``) and call it from that site's code; the
records go where the site's receivers, or ``ConvertToFedEvent`` and the server's receivers, take them. It needs
no tensorboard package: nothing is written here.

NVFlare derives it from ``app_common.tracking.log_writer.LogWriter``; flarelite has no LogWriter class (yet), so
TBWriter holds its ``AnalyticsSender`` itself, with the same methods.
"""

from __future__ import annotations

from typing import Any

from flarelite.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsDataType, LogWriterName
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_component import FLComponent
from flarelite.apis.fl_context import FLContext
from flarelite.app_common.widgets.streaming import AnalyticsSender


class TBWriter(FLComponent):
    """Sends TensorBoard-style records (writer ``LogWriterName.TORCH_TB``) as ``event_type`` events."""

    def __init__(self, event_type: str = ANALYTIC_EVENT_TYPE):
        """Fire records as ``event_type`` events (default ``"analytix_log_stats"``)."""
        super().__init__()
        self.event_type = event_type
        self.sender = AnalyticsSender(event_type, self.get_writer_name())
        self.engine: Any = None

    def get_writer_name(self) -> LogWriterName:
        """Return ``LogWriterName.TORCH_TB``."""
        return LogWriterName.TORCH_TB

    def get_default_metric_data_type(self) -> AnalyticsDataType:
        """Return the data type of a dict of metrics: ``SCALARS``."""
        return AnalyticsDataType.SCALARS

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Give the sender the site's engine when the run starts."""
        if event_type in (EventType.ABOUT_TO_START_RUN, EventType.START_RUN):
            self.engine = fl_ctx.get_engine()
            self.sender.engine = self.engine

    def write(
        self, tag: str, value: Any, data_type: AnalyticsDataType, global_step: int | None = None, **kwargs: Any
    ) -> None:
        """Send one record (see ``AnalyticsSender.add``)."""
        self.sender.add(tag=tag, value=value, data_type=data_type, global_step=global_step, **kwargs)

    def add_scalar(self, tag: str, scalar: float, global_step: int | None = None, **kwargs: Any) -> None:
        """Send a scalar."""
        self.write(tag=tag, value=scalar, data_type=AnalyticsDataType.SCALAR, global_step=global_step, **kwargs)

    def add_scalars(self, tag: str, scalars: dict, global_step: int | None = None, **kwargs: Any) -> None:
        """Send a group of scalars under the parent tag ``tag``."""
        self.write(tag=tag, value=scalars, data_type=AnalyticsDataType.SCALARS, global_step=global_step, **kwargs)

    def flush(self) -> None:
        """Do nothing (records are sent at once); here to mimic torch's SummaryWriter."""
