"""BaseFedAvg: the rounds and the aggregation helpers FedAvg-style ModelControllers share."""

from __future__ import annotations

import gc
import math
from typing import Any, Callable

from ...apis.fl_constant import FLMetaKey
from ..abstract.fl_model import FLModel
from ..abstract.model import make_model_learnable
from ..aggregators.weighted_aggregation_helper import WeightedAggregationHelper
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from ..utils.fl_model_utils import FLModelUtils
from .model_controller import ModelController

METRICS_AGGREGATION_INFO = "metrics_aggregation_info"
CLIENT_UNKNOWN = "unknown"
_WEIGHT_KEY = "effective_fedavg_metric_weight"


def num_steps_weight(meta: dict | None) -> float:
    """Return meta ``NUM_STEPS_CURRENT_ROUND`` as a float when it is a finite number > 0, else 1.0."""
    value = (meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
    if isinstance(value, bool) or value is None:
        return 1.0
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 1.0
    return value if math.isfinite(value) and value > 0 else 1.0


def numeric_metrics(metrics: dict | None) -> tuple[dict[str, float], list[str]]:
    """Split ``metrics`` into its finite numeric values (as floats) and the names of the others."""
    good: dict[str, float] = {}
    bad: list[str] = []
    for key, value in (metrics or {}).items():
        if isinstance(value, bool):
            bad.append(key)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            bad.append(key)
            continue
        if math.isfinite(number):
            good[key] = number
        else:
            bad.append(key)
    return good, bad


def metrics_aggregation_info(site_weights: list[dict]) -> dict:
    """Describe how the metrics of a round were aggregated (meta ``metrics_aggregation_info``)."""
    return {
        "metric_source": "client_reported_flmodel_metrics",
        "aggregation": {
            "method": "weighted_average",
            "weight_key": _WEIGHT_KEY,
            "metric_policy": "finite_numeric_metrics_only_per_key_denominator",
            "weight_formula": "aggregation_weight * NUM_STEPS_CURRENT_ROUND",
        },
        "site_weights": site_weights,
    }


class BaseFedAvg(ModelController):
    """Rounds ``start_round .. start_round + num_rounds - 1`` over ``num_clients`` sampled clients.

    Parameters:
        num_clients: clients sampled per round (all if more than there are; the default 3).
        num_rounds: rounds to run.
        start_round: the first round's number.
        memory_gc_rounds: run ``gc.collect()`` every that many rounds (0: never).
    """

    def __init__(
        self,
        *args: Any,
        num_clients: int = 3,
        num_rounds: int = 5,
        start_round: int = 0,
        memory_gc_rounds: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for name, value, low in (
            ("num_clients", num_clients, 1),
            ("num_rounds", num_rounds, 0),
            ("start_round", start_round, 0),
            ("memory_gc_rounds", memory_gc_rounds, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.num_clients = num_clients
        self.num_rounds = num_rounds
        self.start_round = start_round
        self.memory_gc_rounds = memory_gc_rounds
        self.current_round: int | None = None

    @staticmethod
    def _check_results(results: list[FLModel]) -> list[str]:
        return [r.meta.get("client_name", CLIENT_UNKNOWN) for r in results if not r.params]

    @staticmethod
    def aggregate_fn(results: list[FLModel]) -> FLModel:
        """Return the weighted average of the results' params and of their finite numeric metrics.

        The weight of a result is its meta ``NUM_STEPS_CURRENT_ROUND`` when that is a finite number > 0, else 1.0.
        Params are averaged per key over the results that have it.
        """
        params_helper = WeightedAggregationHelper()
        metrics_helper = WeightedAggregationHelper()
        site_weights = []
        all_metrics = True
        for result in results:
            name = result.meta.get("client_name", CLIENT_UNKNOWN)
            weight = num_steps_weight(result.meta)
            params_helper.add(result.params, weight, name, result.current_round)
            site_weights.append({"name": name, "weight": weight, "weight_key": _WEIGHT_KEY})
            if not result.metrics:
                all_metrics = False
            elif all_metrics:
                good, _ = numeric_metrics(result.metrics)
                metrics_helper.add(good, weight, name, result.current_round)
        metrics = metrics_helper.get_result() if all_metrics and results else None
        return FLModel(
            params=params_helper.get_result(),
            params_type=results[0].params_type if results else None,
            metrics=metrics or None,
            meta={
                "nr_aggregated": len(results),
                "current_round": results[0].current_round if results else None,
                METRICS_AGGREGATION_INFO: metrics_aggregation_info(site_weights),
            },
        )

    def aggregate(
        self, results: list[FLModel], aggregate_fn: Callable[[list[FLModel]], FLModel] | None = None
    ) -> FLModel:
        """Aggregate ``results`` (default ``aggregate_fn``) between BEFORE_/AFTER_AGGREGATION.

        Raises:
            ValueError: a result has empty params.
        """
        self.event(AppEventType.BEFORE_AGGREGATION)
        empty = self._check_results(results)
        if empty:
            raise ValueError(f"Result from client(s) {empty} is empty!")
        fn = aggregate_fn or self.aggregate_fn
        try:
            aggr_result = fn(results)
        except Exception as exc:
            message = f"Exception in aggregate call: {type(exc).__name__}: {exc}"
            self.exception(message)
            self.panic(message)
            return FLModel(params={})
        self.fl_ctx.set_prop(AppConstants.AGGREGATION_RESULT, aggr_result, private=True, sticky=False)
        self.event(AppEventType.AFTER_AGGREGATION)
        return aggr_result

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        """Apply the aggregate to ``model`` (``FLModelUtils.update_model``) and store it as fl_ctx ``global_model``."""
        self.event(AppEventType.BEFORE_SHAREABLE_TO_LEARNABLE)
        model = FLModelUtils.update_model(model, aggr_result)
        self.fl_ctx.set_prop(
            AppConstants.GLOBAL_MODEL,
            make_model_learnable(weights=model.params, meta_props=model.meta),
            private=True,
            sticky=True,
        )
        self.event(AppEventType.AFTER_SHAREABLE_TO_LEARNABLE)
        return model

    def _maybe_cleanup_memory(self) -> None:
        """Run ``gc.collect()`` every ``memory_gc_rounds`` rounds."""
        if self.memory_gc_rounds and self.current_round is not None:
            if (self.current_round - self.start_round + 1) % self.memory_gc_rounds == 0:
                gc.collect()
