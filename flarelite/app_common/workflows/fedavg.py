"""FedAvg: federated averaging with in-time (streaming) aggregation, optional early stopping and model saving.

Each round the model goes to the sampled clients with ``send_model``; every result is added to a running
weighted mean as it arrives (``aggregation_weights[client] * NUM_STEPS_CURRENT_ROUND``, each 1.0 when missing
or not a finite number > 0), per key, so a key that only some clients send is averaged over those.

Without a persistor the model is kept in ``<run dir>/<save_filename>`` in flarelite's safe codec (an FL_MODEL
DXO file; never pickle). Override ``save_model_file``/``load_model_file`` for a framework format.

Differences from NVFlare 2.9.0:

- a round in which no result could be aggregated leaves the global model as it was (NVFlare replaces it with
  the empty aggregate);
- each result is checked against the model sent in the round before it is averaged
  (``flarelite.app_common.aggregators.contribution_check``): a value that is not a number, array or tensor, a
  NaN or infinity, or a shape other than the global model's rejects the result (a warning names the client and
  the key); keys the global model does not have are dropped; a DIFF when there is no global model, or results
  mixing FULL and DIFF params in one round, are rejected too. NVFlare averages whatever arrives, so one odd
  client can change the global model's shape, make it NaN, or make the honest clients' results fail;
- ``enable_tensor_disk_offload`` is accepted and ignored (flarelite keeps received tensors in memory).
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from typing import Any

from ...apis.dxo import from_file as dxo_from_file
from ..abstract.fl_model import FLModel, ParamsType
from ..aggregators.contribution_check import check_contribution, num_steps_weight
from ..aggregators.model_aggregator import ModelAggregator
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from ..utils.fl_model_utils import FLModelUtils
from ..utils.math_utils import parse_compare_criteria
from .base_fedavg import CLIENT_UNKNOWN, BaseFedAvg, RoundAggregate

FEDPROX_MU = "fedprox_mu"


class FedAvg(BaseFedAvg):
    """FedAvg over ``num_rounds`` rounds of ``num_clients`` sampled clients (see the module docstring).

    Parameters:
        model: the initial model (a dict of params, or an FLModel); None loads it (persistor or file).
        save_filename: file in the run folder used when there is no persistor (None: nothing is saved).
        aggregator: a ModelAggregator to use instead of the built-in weighted mean.
        stop_cond: ``"<metric> <op> <value>"`` (e.g. ``"accuracy >= 80"``): stop when the aggregated metrics
            meet it, and save only models better than the best so far.
        patience: with ``stop_cond``, stop after that many rounds without improvement.
        task_name: the task the clients train on.
        exclude_vars: a regex of param names not to aggregate (built-in aggregation).
        aggregation_weights: ``{client: weight}`` (built-in aggregation; 1.0 for clients not named).
        enable_tensor_disk_offload: accepted for NVFlare compatibility; no effect in flarelite.
        fedprox_mu: a value > 0 is put in the sent model's meta as ``"fedprox_mu"`` for FedProx clients.
    """

    def __init__(
        self,
        *args: Any,
        model: dict | FLModel | None = None,
        save_filename: str | None = AppConstants.DEFAULT_MODEL_NAME,
        aggregator: ModelAggregator | None = None,
        stop_cond: str | None = None,
        patience: int | None = None,
        task_name: str | None = AppConstants.TASK_TRAIN,
        exclude_vars: str | None = None,
        aggregation_weights: dict[str, float] | None = None,
        enable_tensor_disk_offload: bool = False,
        fedprox_mu: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if model is not None and not isinstance(model, (dict, FLModel)):
            raise TypeError(f"model must be a dict of params, an FLModel or None, got {type(model).__name__}")
        if aggregator is not None and not isinstance(aggregator, ModelAggregator):
            raise TypeError(f"aggregator must be a ModelAggregator or None, got {type(aggregator).__name__}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 0):
            raise ValueError(f"patience must be an int >= 0 or None, got {patience!r}")
        if aggregation_weights is not None and not isinstance(aggregation_weights, dict):
            raise TypeError(f"aggregation_weights must be a dict or None, got {type(aggregation_weights).__name__}")
        bad_weights = {
            k: v
            for k, v in (aggregation_weights or {}).items()
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0
        }
        if bad_weights:
            raise ValueError(f"aggregation_weights must map client names to finite numbers >= 0, got {bad_weights}")
        if fedprox_mu is not None and (isinstance(fedprox_mu, bool) or not isinstance(fedprox_mu, (int, float))):
            raise TypeError(f"fedprox_mu must be a number or None, got {type(fedprox_mu).__name__}")
        if fedprox_mu is not None and fedprox_mu < 0:
            raise ValueError(f"fedprox_mu must be >= 0, got {fedprox_mu}")
        self.model = model
        self.save_filename = save_filename
        self.aggregator = aggregator
        self.stop_cond = stop_cond
        self.patience = patience
        self.task_name = task_name or AppConstants.TASK_TRAIN
        self.exclude_vars = exclude_vars
        self.aggregation_weights = aggregation_weights
        self.enable_tensor_disk_offload = enable_tensor_disk_offload
        self.fedprox_mu = fedprox_mu
        self.stop_condition = parse_compare_criteria(stop_cond) if stop_cond else None
        self.num_fl_rounds_without_improvement = 0
        self.best_target_metric_value: Any = None
        self._round: RoundAggregate | None = None
        self._global_params: Any = None  # the params sent this round: what results are checked against
        self._warned_metric_keys: set[str] = set()
        self._received_count = 0
        self._expected_count = 0
        self._count_lock = threading.Lock()

    # the workflow -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the rounds (see the module docstring)."""
        self.info("Start FedAvg.")
        self.fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self.num_rounds, private=True, sticky=True)
        if self.model is not None:
            model = self.model if isinstance(self.model, FLModel) else FLModel(params=self.model)
            self.info("Using the model given to FedAvg")
        else:
            model = self.load_model()
        model.start_round = self.start_round
        model.total_rounds = self.num_rounds
        if self.fedprox_mu:
            model.meta[FEDPROX_MU] = self.fedprox_mu

        for self.current_round in range(self.start_round, self.start_round + self.num_rounds):
            self.info(f"Round {self.current_round} started.")
            model.current_round = self.current_round
            self.fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self.current_round, private=True, sticky=True)
            self.event(AppEventType.ROUND_STARTED)
            clients = self.sample_clients(self.num_clients)
            self._reset_round(len(clients), model.params)
            self.send_model(task_name=self.task_name, targets=clients, data=model, callback=self._aggregate_one_result)
            if not self.wait_for_standing_tasks():
                self.info("Abort signal triggered. Finishing FedAvg.")
                return

            self.event(AppEventType.BEFORE_AGGREGATION)
            aggregate = self._get_aggregated_result()
            self.fl_ctx.set_prop(AppConstants.AGGREGATION_RESULT, aggregate, private=True, sticky=False)
            self.event(AppEventType.AFTER_AGGREGATION)
            if self._received_count == 0:
                self.warning(f"Round {self.current_round}: no result was aggregated; the global model is unchanged.")
                continue
            model = self.update_model(model, aggregate)
            if self.fedprox_mu:
                model.meta[FEDPROX_MU] = self.fedprox_mu

            if self.stop_condition:
                self.info(f"Round {self.current_round} global metrics: {model.metrics}")
                if self.is_curr_model_better(model):
                    self.info("New best model found.")
                    self.save_model(model)
                elif self.patience:
                    self.info(
                        "No metric improvement, num of FL rounds without improvement: "
                        f"{self.num_fl_rounds_without_improvement}"
                    )
                if self.should_stop(model.metrics):
                    self.info(f"Stopping at round={self.current_round} out of total_rounds={self.num_rounds}.")
                    break
            else:
                self.save_model(model)
            self._maybe_cleanup_memory()
        self.info("Finished FedAvg.")

    def _reset_round(self, expected: int, global_params: Any = None) -> None:
        if self.aggregator:
            self.aggregator.reset_stats()
        else:
            self._round = RoundAggregate(exclude_vars=self.exclude_vars)
        self._global_params = global_params
        self._received_count = 0
        self._expected_count = expected

    def _aggregate_one_result(self, result: FLModel) -> bool:
        """Add one client's result to the round's aggregate (the ``send_model`` callback); False: skipped.

        With the built-in aggregation a result is checked first (``contribution_check``): bad values or shapes
        reject it, keys the global model lacks are dropped, a DIFF needs a global model to apply to.
        """
        client_name = result.meta.get("client_name", CLIENT_UNKNOWN)
        if not result.params:
            self.warning(f"Empty result from client {client_name}, skipping.")
            return False
        if self.aggregator:
            self.aggregator.accept_model(result)
        else:
            if result.params_type == ParamsType.DIFF and not self._global_params:
                self.warning(f"{client_name} sent a DIFF, but there is no global model to apply it to; skipping.")
                return False
            params, note = check_contribution(result.params, self._global_params, self.exclude_vars)
            if params is None:
                self.warning(f"The result of {client_name} in round {self.current_round} is not aggregated: {note}.")
                return False
            if note:
                self.warning(f"The result of {client_name} in round {self.current_round}: {note}.")
                result.params = params
            weight = (self.aggregation_weights or {}).get(client_name, 1.0) * num_steps_weight(result.meta)
            try:
                bad = self._round.add(result, weight, client_name, self.current_round)
            except (TypeError, ValueError) as exc:
                self.warning(f"The result of {client_name} in round {self.current_round} is not aggregated: {exc}")
                return False
            for key in bad:
                if key not in self._warned_metric_keys:
                    self._warned_metric_keys.add(key)
                    self.warning(f"Metric {key!r} from {client_name} is not a finite number; it is not aggregated.")
        with self._count_lock:
            self._received_count += 1
            count = self._received_count
        self.info(f"Aggregated {count}/{self._expected_count} results")
        return True

    def _get_aggregated_result(self) -> FLModel:
        """Return the round's aggregate (with meta ``nr_aggregated`` and ``current_round``)."""
        if self.aggregator:
            result = self.aggregator.aggregate_model()
            result.meta = result.meta or {}
            result.meta["nr_aggregated"] = self._received_count
            result.meta["current_round"] = self.current_round
            return result
        return self._round.result(self.current_round)

    # early stopping -----------------------------------------------------------------------------------
    def should_stop(self, metrics: dict | None = None) -> bool:
        """True when ``patience`` rounds passed without improvement or ``metrics`` meet ``stop_cond``."""
        if self.stop_condition is None or metrics is None:
            return False
        if self.patience and self.patience <= self.num_fl_rounds_without_improvement:
            self.info(f"Exceeded the number of FL rounds ({self.patience}) without improvements")
            return True
        key, target, op_fn = self.stop_condition
        value = metrics.get(key)
        if value is None:
            self.warning(f"Stop criteria key {key!r} doesn't exist in metrics: {list(metrics)}")
            return False
        if op_fn(value, target):
            self.info(f"Early stop condition satisfied: {self.stop_cond}")
            return True
        return False

    def is_curr_model_better(self, curr_model: FLModel) -> bool:
        """True when ``curr_model``'s key metric beats the best so far (by ``stop_cond``'s operator)."""
        if self.stop_condition is None:
            return True
        metrics = curr_model.metrics
        if metrics is None:
            return False
        key, _, op_fn = self.stop_condition
        value = metrics.get(key)
        if value is None:
            return False
        if self.best_target_metric_value is None or op_fn(value, self.best_target_metric_value):
            if self.patience and self.best_target_metric_value == value:
                self.num_fl_rounds_without_improvement += 1
                return False
            self.best_target_metric_value = value
            self.num_fl_rounds_without_improvement = 0
            return True
        self.num_fl_rounds_without_improvement += 1
        return False

    # persistence ---------------------------------------------------------------------------------------
    def load_model(self) -> FLModel:
        """With a persistor, its model; else ``<run dir>/<save_filename>`` if it exists; else empty params."""
        if self.persistor:
            return super().load_model()
        if self.save_filename:
            path = os.path.join(self.get_run_dir(), self.save_filename)
            if os.path.exists(path):
                self.info(f"Loading model from {path}")
                return self.load_model_file(path)
            self.info(f"No saved model found at {path}, starting fresh")
        else:
            self.warning("No persistor or save_filename configured")
        return FLModel(params={})

    def save_model(self, model: FLModel) -> None:
        """With a persistor, save through it; else write ``<run dir>/<save_filename>`` with ``save_model_file``."""
        if self.persistor:
            super().save_model(model)
            return
        if not self.save_filename:
            self.warning("No persistor or save_filename configured: the model is not saved")
            return
        path = os.path.join(self.get_run_dir(), self.save_filename)
        self.event(AppEventType.BEFORE_LEARNABLE_PERSIST)
        self.save_model_file(model, path)
        self.event(AppEventType.AFTER_LEARNABLE_PERSIST)
        self.info(f"Saved the global model to {path}")

    def save_model_file(self, model: FLModel, path: str) -> None:
        """Write ``model`` to ``path`` as an FL_MODEL DXO in flarelite's safe codec (override for other formats)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        FLModelUtils.to_dxo(model).to_file(tmp)
        os.replace(tmp, path)

    def load_model_file(self, path: str) -> FLModel:
        """Read a model written by ``save_model_file`` (override for other formats)."""
        return FLModelUtils.from_dxo(dxo_from_file(path))
