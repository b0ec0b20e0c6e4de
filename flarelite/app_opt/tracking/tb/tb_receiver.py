"""TBAnalyticsReceiver: saves tracking records as TensorBoard event files, one folder per site that sent them.

Records land in ``<run dir>/<tb_folder>/<record origin>/`` (on the server of a simulation:
``WS/server/tb_events/site-1/events.out.tfevents.*``); view them with ``tensorboard --logdir <that folder>``.
It needs the ``tensorboard`` package (``pip install tensorboard`` or ``flarelite[tensorboard]``), imported when
the run starts, so that this module imports without it. No torch or TensorFlow is needed.

flarelite differences: a record's origin and an ``add_scalars`` series name become folder names with path
separators replaced by ``_`` and long names cut (``safe_folder_name``: a peer cannot write outside the tb
folder); at most 256 series per site; a record of more than 1000 entries is refused (``check_record_size``).
"""

from __future__ import annotations

import os
from typing import Any

from flarelite.apis.analytix import AnalyticsData, AnalyticsDataType
from flarelite.apis.dxo import from_shareable
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.app_common.widgets.streaming import AnalyticsReceiver, check_record_size, site_run_dir

FUNCTION_MAPPING = {
    AnalyticsDataType.SCALAR: "add_scalar",
    AnalyticsDataType.TEXT: "add_text",
    AnalyticsDataType.IMAGE: "add_image",
    AnalyticsDataType.SCALARS: "add_scalars",
    AnalyticsDataType.METRIC: "add_scalar",
    AnalyticsDataType.METRICS: "add_scalars",
}

_INSTALL_HINT = "pip install tensorboard (or pip install 'flarelite[tensorboard]')"


def _split_entry(key: str, value: Any, sender: Any) -> AnalyticsData | None:
    """A parameter as a record TensorBoard can show: numbers as scalars, strings as texts, others None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return AnalyticsData(key=key, value=value, data_type=AnalyticsDataType.SCALAR, sender=sender)
    if isinstance(value, str):
        return AnalyticsData(key=key, value=value, data_type=AnalyticsDataType.TEXT, sender=sender)
    return None


class TBAnalyticsReceiver(AnalyticsReceiver):
    """Writes the records it receives to TensorBoard event files under ``<run dir>/<tb_folder>/<site>/``."""

    def __init__(self, tb_folder: str = "tb_events", events: list[str] | None = None):
        """Write into ``<run dir>/<tb_folder>``; listen to ``events`` (default: the local and fed analytix events)."""
        super().__init__(events=events)
        if not isinstance(tb_folder, str) or not tb_folder:
            raise ValueError(f"TBAnalyticsReceiver: tb_folder must be a non-empty folder name, got {tb_folder!r}")
        self.tb_folder = tb_folder
        self.writers_table: dict[str, Any] = {}
        self.root_log_dir: str | None = None
        self._writer_class: Any = None

    def initialize(self, fl_ctx: FLContext) -> None:
        """Import tensorboard and make ``<run dir>/<tb_folder>``.

        Raises:
            RuntimeError: tensorboard is not installed (logged by AnalyticsReceiver; nothing is recorded).
        """
        try:
            from .tb_event_writer import TensorBoardEventWriter
        except ImportError as exc:
            raise RuntimeError(
                f"TBAnalyticsReceiver at {fl_ctx.get_identity_name()} needs the tensorboard package, which cannot "
                f"be imported ({exc}); install it: {_INSTALL_HINT}"
            ) from exc
        self._writer_class = TensorBoardEventWriter
        self.root_log_dir = os.path.join(site_run_dir(fl_ctx), self.tb_folder)
        os.makedirs(self.root_log_dir, exist_ok=True)
        self.log_info(
            fl_ctx,
            f"TensorBoard records go to {self.root_log_dir}; view them with `tensorboard --logdir={self.root_log_dir}`",
        )

    def _records(self, data: AnalyticsData, fl_ctx: FLContext) -> list[AnalyticsData]:
        """Split PARAMETER(S) records into scalars and texts; other records as they are."""
        if data.data_type not in (AnalyticsDataType.PARAMETER, AnalyticsDataType.PARAMETERS):
            return [data]
        items = data.value.items() if data.data_type == AnalyticsDataType.PARAMETERS else [(data.tag, data.value)]
        records = []
        for key, value in items:
            record = _split_entry(str(key), value, data.sender)
            if record is None:
                self.log_warning(fl_ctx, f"parameter {key!r} of type {type(value).__name__} is not written", False)
            else:
                if data.step is not None:
                    record.step = data.step
                records.append(record)
        return records

    def save(self, fl_ctx: FLContext, shareable: Shareable, record_origin: str) -> None:
        """Write one record into the folder of ``record_origin``."""
        data = AnalyticsData.from_dxo(from_shareable(shareable))
        check_record_size(data)
        writer = self.writers_table.get(record_origin)
        if writer is None:
            from .tb_event_writer import safe_folder_name

            assert self.root_log_dir is not None and self._writer_class is not None  # initialize ran
            writer = self._writer_class(os.path.join(self.root_log_dir, safe_folder_name(record_origin)))
            self.writers_table[record_origin] = writer
        for record in self._records(data, fl_ctx):
            func_name = FUNCTION_MAPPING.get(record.data_type)
            if func_name is None:
                self.log_warning(
                    fl_ctx, f"records of type {record.data_type.value} are not written to TensorBoard; dropped", False
                )
                continue
            getattr(writer, func_name)(record.tag, record.value, record.step)

    def finalize(self, fl_ctx: FLContext) -> None:
        """Flush and close every writer."""
        for origin, writer in list(self.writers_table.items()):
            try:
                writer.flush()
                writer.close()
            except Exception as exc:
                self.log_error(fl_ctx, f"closing the TensorBoard writer of {origin} failed: {exc}", False)
