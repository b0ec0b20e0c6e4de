"""BaseFedAvg: the rounds and the aggregation helpers FedAvg-style ModelControllers share."""

from __future__ import annotations

import gc
import math
import threading
from typing import Any, Callable

from ..abstract.fl_model import FLModel, ParamsType
from ..abstract.model import make_model_learnable
from ..aggregators.contribution_check import num_steps_weight
from ..aggregators.weighted_aggregation_helper import WeightedAggregationHelper
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from ..utils.fl_model_utils import FLModelUtils
from ..utils.validation_utils import check_int
from .model_controller import ModelController

METRICS_AGGREGATION_INFO = "metrics_aggregation_info"
CLIENT_UNKNOWN = "unknown"
_WEIGHT_KEY = "effective_fedavg_metric_weight"


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


class RoundAggregate:
    """The running FedAvg aggregate of one round: a weighted mean of params per key and of finite numeric metrics.

    ``add`` is thread-safe (results arrive on their own threads). Metrics are averaged only while every result
    has them: a result with ``metrics=None`` (or, with ``empty_metrics_disable``, empty metrics) stops it for the
    round. Results must agree on the params type: FULL weights and DIFFs are never averaged together.
    """

    def __init__(self, exclude_vars: str | None = None, empty_metrics_disable: bool = False) -> None:
        self._params = WeightedAggregationHelper(exclude_vars=exclude_vars)
        self._metrics = WeightedAggregationHelper()
        self._empty_metrics_disable = empty_metrics_disable
        self._lock = threading.Lock()
        self.all_metrics = True
        self.site_weights: list[dict] = []
        self.count = 0
        self.params_type: Any = None

    def add(self, result: FLModel, weight: float, name: str, contribution_round: int | None) -> list[str]:
        """Add ``result`` with ``weight``; return the names of its metrics that are not finite numbers.

        Raises:
            ValueError: its params type differs from the round's (FULL vs DIFF).
            TypeError: a param cannot be weighted or does not match the earlier contributions.
        """
        params_type = ParamsType(result.params_type) if result.params_type is not None else ParamsType.FULL
        with self._lock:
            if self.params_type is not None and params_type != self.params_type:
                raise ValueError(
                    f"{name} sent {params_type.value} params, but this round's results are "
                    f"{self.params_type.value}; FULL weights and DIFFs cannot be averaged together"
                )
            self.params_type = params_type
        self._params.add(result.params, weight, name, contribution_round)
        bad: list[str] = []
        with self._lock:
            self.count += 1
            self.site_weights.append({"name": name, "weight": weight, "weight_key": _WEIGHT_KEY})
            if result.metrics is None or (self._empty_metrics_disable and not result.metrics):
                self.all_metrics = False
            if self.all_metrics:
                good, bad = numeric_metrics(result.metrics)
                if good:
                    self._metrics.add(good, weight, name, contribution_round)
        return bad

    def result(self, current_round: int | None) -> FLModel:
        """Return the aggregate (meta ``nr_aggregated``, ``current_round``, ``metrics_aggregation_info``)."""
        metrics = self._metrics.get_result() if self.all_metrics and self.count else None
        return FLModel(
            params=self._params.get_result(),
            params_type=self.params_type,
            metrics=metrics or None,
            current_round=current_round,
            meta={
                "nr_aggregated": self.count,
                "current_round": current_round,
                METRICS_AGGREGATION_INFO: metrics_aggregation_info(self.site_weights),
            },
        )


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
        set_round_args(
            self,
            num_clients=num_clients,
            num_rounds=num_rounds,
            start_round=start_round,
            memory_gc_rounds=memory_gc_rounds,
        )
        self.current_round: int | None = None

    @staticmethod
    def _check_results(results: list[FLModel]) -> list[str]:
        return [r.meta.get("client_name", CLIENT_UNKNOWN) for r in results if not r.params]

    @staticmethod
    def aggregate_fn(results: list[FLModel]) -> FLModel:
        """Return the weighted average of the results' params and of their finite numeric metrics.

        The weight of a result is its meta ``NUM_STEPS_CURRENT_ROUND`` when that is a finite number > 0, else 1.0.
        Params are averaged per key over the results that have it; metrics only when every result has some.

        Raises:
            ValueError: the results mix FULL and DIFF params.
        """
        aggregate = RoundAggregate(empty_metrics_disable=True)
        for result in results:
            name = result.meta.get("client_name", CLIENT_UNKNOWN)
            aggregate.add(result, num_steps_weight(result.meta), name, result.current_round)
        out = aggregate.result(results[0].current_round if results else None)
        out.current_round = None  # as NVFlare: the aggregate of aggregate_fn carries the round in its meta only
        return out

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


def set_round_args(controller: ModelController, **values: int) -> None:
    """Check the round arguments of the FedAvg and Cyclic workflows (``num_clients`` >= 1, the others >= 0) and set
    them as the controller's attributes of the same names.

    Raises:
        TypeError, ValueError: an argument is not an int, or out of range.
    """
    for name, value in values.items():
        check_int(name, value, 1 if name == "num_clients" else 0)
    for name, value in values.items():
        setattr(controller, name, value)
