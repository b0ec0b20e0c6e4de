"""IntimeModelSelector: tells the persistor when the global model of a round is the best so far.

Each training result carries the client's evaluation of the global model it received (DXO meta
``initial_metrics``, a number or a dict indexed by ``key_metric``). The selector averages them per round and,
when the average beats the best so far, fires GLOBAL_BEST_MODEL_AVAILABLE before aggregation, so the persistor
saves the model that was sent in that round as the best one. Round 0 is skipped (its model is the initial one).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ...apis.dxo import DataKind, MetaKey, from_shareable
from ...apis.event_type import EventType
from ...apis.fl_constant import FLContextKey, ReturnCode
from ...apis.fl_context import FLContext
from ..aggregators.contribution_check import num_steps_weight
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from .widget import Widget

METRICS_SELECTION_INFO = "metrics_selection_info"
_LOWER_IS_BETTER_SUBSTRINGS = ("loss", "err")
_LOWER_IS_BETTER_TOKENS = {"bce", "ce", "cer", "mae", "mse", "nll", "perplexity", "ppl", "rmse", "wer"}


def looks_lower_is_better(metric_name: str) -> bool:
    """Guess whether ``metric_name`` is a lower-is-better metric (a loss or an error); ``neg_...`` is not."""
    name = metric_name.lower()
    tokens = re.split(r"[^a-z0-9]+", name)
    if "neg" in tokens:
        return False
    if any(hint in name for hint in _LOWER_IS_BETTER_SUBSTRINGS):
        return True
    return any(token in _LOWER_IS_BETTER_TOKENS for token in tokens)


class IntimeModelSelector(Widget):
    """Fires GLOBAL_BEST_MODEL_AVAILABLE when a round's averaged client metric is the best so far.

    Parameters:
        weigh_by_local_iter: weight each client's metric by its NUM_STEPS_CURRENT_ROUND.
        aggregation_weights: ``{client: weight}`` (1.0 for clients not named).
        validation_metric_name: the DXO meta key of the metric.
        key_metric: the entry to use when the metric is a dict.
        negate_key_metric: set for lower-is-better metrics (losses).
    """

    def __init__(
        self,
        weigh_by_local_iter: bool = False,
        aggregation_weights: dict[str, float] | None = None,
        validation_metric_name: str = MetaKey.INITIAL_METRICS,
        key_metric: str = "val_accuracy",
        negate_key_metric: bool = False,
    ) -> None:
        super().__init__()
        self.weigh_by_local_iter = weigh_by_local_iter
        self.aggregation_weights = aggregation_weights
        self.validation_metric_name = validation_metric_name
        self.key_metric = key_metric
        self.negate_key_metric = negate_key_metric
        self.val_metric = self.best_val_metric = -math.inf
        self.raw_val_metric: float | None = None
        self.best_raw_val_metric: float | None = None
        if not negate_key_metric and looks_lower_is_better(key_metric):
            self.logger.warning(
                "key_metric %r looks like a lower-is-better metric, but model selection treats higher values as "
                "better; set negate_key_metric=True (or report 'neg_%s' from the clients), otherwise the worst "
                "global model is selected as the best",
                key_metric,
                key_metric,
            )
        self._reset_stats()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """React to START_RUN, ROUND_STARTED, BEFORE_CONTRIBUTION_ACCEPT and BEFORE_AGGREGATION."""
        if event_type in (EventType.START_RUN, AppEventType.ROUND_STARTED):
            self._reset_stats()
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            self._before_accept(fl_ctx)
        elif event_type == AppEventType.BEFORE_AGGREGATION:
            self._before_aggregate(fl_ctx)

    def _reset_stats(self) -> None:
        self.validation_metric_weighted_sum = 0.0
        self.raw_validation_metric_weighted_sum = 0.0
        self.validation_metric_sum_of_weights = 0.0

    @staticmethod
    def _result_of(fl_ctx: FLContext) -> Any:
        for key in (AppConstants.TRAINING_RESULT, FLContextKey.TASK_RESULT):
            value = fl_ctx.get_prop(key)
            if value is not None:
                return value
        peer = fl_ctx.get_peer_context()
        return peer.get_prop(FLContextKey.SHAREABLE) if peer is not None else None

    def _before_accept(self, fl_ctx: FLContext) -> bool:
        shareable = self._result_of(fl_ctx)
        if shareable is None or shareable.get_return_code() != ReturnCode.OK:
            return False
        try:
            dxo = from_shareable(shareable)
        except ValueError as exc:
            self.log_debug(fl_ctx, f"the result holds no DXO: {exc}")
            return False
        if dxo.data_kind not in (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS, DataKind.COLLECTION) or dxo.data is None:
            return False
        peer = fl_ctx.get_peer_context()
        client_name = peer.get_identity_name("?") if peer is not None else "?"
        contribution_round = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if current_round == 0:
            self.log_debug(fl_ctx, "skipping round 0")
            return False
        if contribution_round != current_round:
            self.log_warning(
                fl_ctx,
                f"discarding the result of {client_name} for round {contribution_round}; "
                f"the current round is {current_round}",
            )
            return False
        metric = dxo.get_meta_prop(self.validation_metric_name)
        if metric is None:
            self.log_warning(fl_ctx, f"validation metric {self.validation_metric_name!r} missing from {client_name}")
            return False
        if isinstance(metric, dict):
            if self.key_metric not in metric:
                self.log_warning(
                    fl_ctx, f"validation metric {self.key_metric!r} not in the metrics of {client_name}: {list(metric)}"
                )
                return False
            metric = metric[self.key_metric]
        try:
            raw = float(metric)
        except (TypeError, ValueError):
            raw = math.nan
        if not math.isfinite(raw):  # one NaN would make the round's average NaN: never selected, whatever the others
            self.log_warning(fl_ctx, f"validation metric of {client_name} is not a finite number: {metric!r}")
            return False
        value = -raw if self.negate_key_metric else raw
        n_iter = num_steps_weight(dxo.meta) if self.weigh_by_local_iter else 1.0
        weight = n_iter * float((self.aggregation_weights or {}).get(client_name, 1.0))
        self.log_info(fl_ctx, f"validation metric {value} from client {client_name}")
        self.validation_metric_weighted_sum += value * weight
        self.raw_validation_metric_weighted_sum += raw * weight
        self.validation_metric_sum_of_weights += weight
        return True

    def _before_aggregate(self, fl_ctx: FLContext) -> bool:
        if self.validation_metric_sum_of_weights == 0:
            self.log_debug(fl_ctx, "nothing accumulated")
            return False
        self.val_metric = self.validation_metric_weighted_sum / self.validation_metric_sum_of_weights
        self.raw_val_metric = self.raw_validation_metric_weighted_sum / self.validation_metric_sum_of_weights
        if self.val_metric > self.best_val_metric:
            self.best_val_metric = self.val_metric
            self.best_raw_val_metric = self.raw_val_metric
            current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            self.log_info(fl_ctx, f"new best validation metric at round {current_round}: {self.best_val_metric}")
            fl_ctx.set_prop(AppConstants.VALIDATION_RESULT, self.best_val_metric, private=True, sticky=False)
            fl_ctx.set_prop(METRICS_SELECTION_INFO, self._selection_info(current_round), private=True, sticky=False)
            self.fire_event(AppEventType.GLOBAL_BEST_MODEL_AVAILABLE, fl_ctx)
        self._reset_stats()
        return True

    def _selection_info(self, current_round: Any) -> dict:
        return {
            "source": type(self).__name__,
            "metric_source": self.validation_metric_name,
            "key_metric": {
                "name": self.key_metric,
                "mode": "min" if self.negate_key_metric else "max",
                "mode_source": f"{type(self).__name__}.negate_key_metric",
            },
            "best_round": current_round,
            "best_metrics": {self.key_metric: self.best_raw_val_metric},
        }
