"""Build a tracking record's DXO and fire it as the analytix event (``analytix_log_stats``)."""

from __future__ import annotations

from typing import Any

from ..analytix import ANALYTIC_EVENT_TYPE, AnalyticsData, AnalyticsDataType, LogWriterName
from ..dxo import DXO
from ..fl_component import FLComponent
from ..fl_constant import FLContextKey
from ..fl_context import FLContext


def send_analytic_dxo(
    comp: FLComponent,
    dxo: DXO,
    fl_ctx: FLContext,
    event_type: str = ANALYTIC_EVENT_TYPE,
    fire_fed_event: bool = False,
) -> None:
    """Fire ``event_type`` with ``dxo.to_shareable()`` as fl_ctx's EVENT_DATA (a federated event if asked).

    Raises:
        TypeError: ``comp`` is not an FLComponent, ``dxo`` not a DXO or ``fl_ctx`` not an FLContext.
    """
    if not isinstance(comp, FLComponent):
        raise TypeError(f"send_analytic_dxo: expected comp to be an FLComponent, got {type(comp).__name__}")
    if not isinstance(dxo, DXO):
        raise TypeError(f"send_analytic_dxo: expected dxo to be a DXO, got {type(dxo).__name__}")
    if not isinstance(fl_ctx, FLContext):
        raise TypeError(f"send_analytic_dxo: expected fl_ctx to be an FLContext, got {type(fl_ctx).__name__}")
    shareable = dxo.to_shareable()
    fl_ctx.set_prop(FLContextKey.EVENT_DATA, shareable, private=True, sticky=False)
    if fire_fed_event:
        comp.fire_fed_event(event_type, shareable, fl_ctx)
    else:
        comp.fire_event(event_type, fl_ctx)


def create_analytic_dxo(
    tag: str,
    value: Any,
    data_type: AnalyticsDataType,
    writer: LogWriterName = LogWriterName.TORCH_TB,
    **kwargs: Any,
) -> DXO:
    """Return the ANALYTIC DXO of one record (``kwargs`` such as ``global_step`` and ``path`` go with it).

    Raises:
        TypeError, ValueError: the record is invalid (see ``AnalyticsData``).
    """
    return AnalyticsData(key=tag, value=value, data_type=data_type, sender=writer, **kwargs).to_dxo()
