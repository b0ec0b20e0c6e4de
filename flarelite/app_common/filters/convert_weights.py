"""ConvertWeights: turn WEIGHTS into WEIGHT_DIFF (or back) against the task's WEIGHTS."""

from __future__ import annotations

from typing import Any

from ...apis.dxo import DXO, DataKind, MetaKey, from_shareable
from ...apis.dxo_filter import DXOFilter
from ...apis.fl_constant import FLContextKey
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable


class ConvertWeights(DXOFilter):
    """Convert WEIGHTS to WEIGHT_DIFF (``"weights_to_diff"``) or back (``"diff_to_weights"``).

    The base is the WEIGHTS DXO of the task's data (fl_ctx ``TASK_DATA``); a task without one, or data
    already processed by an algorithm (meta ``PROCESSED_ALGORITHM``), is left unchanged. Keys missing from
    the base are left as they are. New arrays are made; the ones given are not written to.

    Raises:
        ValueError: ``direction`` is neither ``"weights_to_diff"`` nor ``"diff_to_weights"``.
    """

    WEIGHTS_TO_DIFF = "weights_to_diff"
    DIFF_TO_WEIGHTS = "diff_to_weights"

    def __init__(self, direction: str) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHT_DIFF, DataKind.WEIGHTS], data_kinds_to_filter=None)
        if direction not in (self.WEIGHTS_TO_DIFF, self.DIFF_TO_WEIGHTS):
            raise ValueError(
                f"ConvertWeights: invalid direction {direction!r}: use {self.WEIGHTS_TO_DIFF!r} or "
                f"{self.DIFF_TO_WEIGHTS!r}"
            )
        self.direction = direction

    def _get_base_weights(self, fl_ctx: FLContext) -> dict[str, Any] | None:
        task_data = fl_ctx.get_prop(FLContextKey.TASK_DATA, None)
        if not isinstance(task_data, Shareable):
            self.log_error(fl_ctx, f"no task data to convert against: expected a Shareable, got {type(task_data)}")
            return None
        try:
            dxo = from_shareable(task_data)
        except ValueError:
            self.log_error(fl_ctx, "the task data holds no DXO: nothing to convert against")
            return None
        if dxo.data_kind != DataKind.WEIGHTS:
            self.log_info(fl_ctx, f"task ignored: its data is {dxo.data_kind}, not WEIGHTS")
            return None
        processed = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM, None)
        if processed:
            self.log_info(fl_ctx, f"task ignored: its data was processed by {processed}")
            return None
        return dxo.data

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Return ``dxo`` converted against the task's WEIGHTS, or None when it cannot be converted."""
        base = self._get_base_weights(fl_ctx)
        if not base:
            return None
        processed = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM, None)
        if processed:
            self.log_info(fl_ctx, f"cannot convert the result: it was processed by {processed}")
            return None
        if self.direction == self.WEIGHTS_TO_DIFF:
            if dxo.data_kind != DataKind.WEIGHTS:
                self.log_warning(fl_ctx, f"cannot convert the result: expected WEIGHTS, got {dxo.data_kind}")
                return None
            dxo.data = {k: (v - base[k] if k in base else v) for k, v in dxo.data.items()}
            dxo.data_kind = DataKind.WEIGHT_DIFF
        else:
            if dxo.data_kind != DataKind.WEIGHT_DIFF:
                self.log_warning(fl_ctx, f"cannot convert the result: expected WEIGHT_DIFF, got {dxo.data_kind}")
                return None
            dxo.data = {k: (v + base[k] if k in base else v) for k, v in dxo.data.items()}
            dxo.data_kind = DataKind.WEIGHTS
        return dxo
