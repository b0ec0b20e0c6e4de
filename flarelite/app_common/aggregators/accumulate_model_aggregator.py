"""AccumulateWeightedAggregator: NVFlare's deprecated name of InTimeAccumulateWeightedAggregator."""

from __future__ import annotations

import warnings
from typing import Any

from ...apis.dxo import DataKind
from .intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator


class AccumulateWeightedAggregator(InTimeAccumulateWeightedAggregator):
    """Deprecated: use InTimeAccumulateWeightedAggregator (same arguments, same behaviour)."""

    def __init__(
        self,
        exclude_vars: str | dict[str, str] | None = None,
        aggregation_weights: dict[str, Any] | None = None,
        expected_data_kind: DataKind | dict[str, DataKind] = DataKind.WEIGHT_DIFF,
        weigh_by_local_iter: bool = True,
    ) -> None:
        warnings.warn(
            "AccumulateWeightedAggregator is deprecated; use InTimeAccumulateWeightedAggregator",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(exclude_vars, aggregation_weights, expected_data_kind, weigh_by_local_iter)
