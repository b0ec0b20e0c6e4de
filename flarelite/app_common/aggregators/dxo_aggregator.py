"""DXOAggregator: weighted in-time aggregation of one kind of DXO (InTimeAccumulateWeightedAggregator's worker)."""

from __future__ import annotations

import logging
from typing import Any

from ...apis.dxo import DXO, DataKind, MetaKey
from ...apis.fl_component import FLComponent
from ...apis.fl_context import FLContext
from ..abstract.model import ModelLearnable, ModelLearnableKey
from ..app_constant import AppConstants
from .contribution_check import check_contribution, num_steps_weight
from .weighted_aggregation_helper import WeightedAggregationHelper

_AGGREGATABLE_KINDS = (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS, DataKind.METRICS)


def _global_weights(fl_ctx: FLContext) -> dict | None:
    """The weights of fl_ctx ``global_model`` (what ScatterAndGather sent this round), or None."""
    model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    weights = model.get(ModelLearnableKey.WEIGHTS) if isinstance(model, ModelLearnable) else None
    return weights if isinstance(weights, dict) else None


class DXOAggregator(FLComponent):
    """Accepts DXOs of ``expected_data_kind``, one per contributor and round, weighted by
    ``aggregation_weights[contributor] * NUM_STEPS_CURRENT_ROUND`` (each 1.0 when missing; NUM_STEPS also when it
    is not a finite number > 0).

    WEIGHTS and WEIGHT_DIFF contributions are checked against fl_ctx ``global_model`` first (see
    ``contribution_check``; NVFlare 2.9.0 does not check): bad values or shapes reject them, keys the global
    model lacks are dropped (a diff of such a key would end the run in the shareable generator).
    """

    def __init__(
        self,
        exclude_vars: str | None = None,
        aggregation_weights: dict[str, Any] | None = None,
        expected_data_kind: DataKind = DataKind.WEIGHT_DIFF,
        name_postfix: str = "",
        weigh_by_local_iter: bool = True,
    ) -> None:
        super().__init__()
        self.exclude_vars = exclude_vars
        self.expected_data_kind = expected_data_kind
        self.aggregation_weights = aggregation_weights or {}
        self.name_postfix = name_postfix
        self.weigh_by_local_iter = weigh_by_local_iter
        self.aggregation_helper = WeightedAggregationHelper(
            exclude_vars=exclude_vars, weigh_by_local_iter=weigh_by_local_iter
        )
        self.warning_count: dict[str, int] = {}
        self.warning_limit = 10
        self.processed_algorithm: Any = None
        if name_postfix:
            self._name = f"{type(self).__name__}{name_postfix}"
            self.logger = logging.getLogger(self._name)

    def reset_aggregation_helper(self) -> None:
        """Forget the accepted contributions."""
        if self.aggregation_helper:
            self.aggregation_helper.reset_stats()
        self.processed_algorithm = None

    def _warn_limited(self, fl_ctx: FLContext, contributor_name: str, msg: str) -> None:
        count = self.warning_count.get(contributor_name, 0)
        if count < self.warning_limit:
            self.log_warning(fl_ctx, f"{msg} This kind of message will show {self.warning_limit} times at most.")
            self.warning_count[contributor_name] = count + 1

    def accept(self, dxo: DXO, contributor_name: str, contribution_round: int | None, fl_ctx: FLContext) -> bool:
        """Add ``dxo`` to the aggregate; return False (with a log line) when it is rejected."""
        if not isinstance(dxo, DXO):
            self.log_error(fl_ctx, f"Expected DXO but got {type(dxo).__name__} from {contributor_name}")
            return False
        if dxo.data_kind not in _AGGREGATABLE_KINDS:
            self.log_error(fl_ctx, f"cannot handle data kind {dxo.data_kind} from {contributor_name}")
            return False
        if dxo.data_kind != self.expected_data_kind:
            self.log_error(
                fl_ctx,
                f"expected {self.expected_data_kind} but got {dxo.data_kind} from {contributor_name}; configure "
                f"expected_data_kind={str(dxo.data_kind)!r} if clients send that kind",
            )
            return False
        processed_algorithm = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM)
        if processed_algorithm is not None:
            if self.processed_algorithm is None:
                self.processed_algorithm = processed_algorithm
            elif self.processed_algorithm != processed_algorithm:
                self.log_error(
                    fl_ctx,
                    f"Only supports aggregation of data processed with the same algorithm ({self.processed_algorithm}) "
                    f"but got algorithm {processed_algorithm} from {contributor_name}",
                )
                return False
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if contribution_round != current_round:
            self.log_warning(
                fl_ctx,
                f"discarding DXO from {contributor_name} at round {contribution_round}: "
                f"the current round is {current_round}",
            )
            return False
        if dxo.data is None:
            self.log_error(fl_ctx, f"no data to aggregate from {contributor_name}")
            return False
        for item in self.aggregation_helper.get_history():
            if item["contributor_name"] == contributor_name:
                self.log_warning(
                    fl_ctx,
                    f"discarding DXO from {contributor_name} at round {contribution_round}: "
                    f"its contribution of round {item['round']} was accepted already",
                )
                return False
        data = dxo.data
        if dxo.data_kind in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            data, note = check_contribution(data, _global_weights(fl_ctx), self.exclude_vars)
            if data is None:
                self.log_error(fl_ctx, f"discarding DXO from {contributor_name} at round {contribution_round}: {note}")
                return False
            if note:
                self.log_warning(fl_ctx, f"DXO from {contributor_name} at round {contribution_round}: {note}")
        n_iter = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        float_n_iter = num_steps_weight(dxo.meta)
        if n_iter is None:
            self._warn_limited(
                fl_ctx,
                contributor_name,
                f"NUM_STEPS_CURRENT_ROUND missing in meta of DXO from {contributor_name}; using 1.0.",
            )
        elif float_n_iter != n_iter:
            self._warn_limited(
                fl_ctx,
                contributor_name,
                f"NUM_STEPS_CURRENT_ROUND from {contributor_name} is {n_iter!r}; using {float_n_iter}.",
            )
        aggregation_weight = self.aggregation_weights.get(contributor_name)
        if aggregation_weight is None:
            self._warn_limited(
                fl_ctx, contributor_name, f"Aggregation weight missing for {contributor_name}; using 1.0."
            )
            aggregation_weight = 1.0
        try:
            self.aggregation_helper.add(data, aggregation_weight * float_n_iter, contributor_name, contribution_round)
        except TypeError as exc:
            self.log_error(fl_ctx, f"discarding DXO from {contributor_name} at round {contribution_round}: {exc}")
            return False
        return True

    def aggregate(self, fl_ctx: FLContext) -> DXO:
        """Return a DXO of ``expected_data_kind`` holding the weighted mean, and start over."""
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        self.log_info(fl_ctx, f"aggregating {self.aggregation_helper.get_len()} update(s) at round {current_round}")
        dxo = DXO(data_kind=self.expected_data_kind, data=self.aggregation_helper.get_result())
        if self.processed_algorithm is not None:
            dxo.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, self.processed_algorithm)
            self.processed_algorithm = None
        return dxo
