"""Cyclic: cyclic weight transfer as a ModelController (the model visits each sampled client in turn)."""

from __future__ import annotations

import gc
from typing import Any

from ..abstract.fl_model import ParamsType
from ..aggregators.contribution_check import check_contribution
from .base_fedavg import set_round_args
from .model_controller import ModelController

_RESULT_ONLY_META = ("props", "client_name")  # added to each result by the controller, not part of the model


class Cyclic(ModelController):
    """Each round sends the model to each of ``num_clients`` sampled clients in turn; each result's params and
    meta become the model the next client gets. The model is saved after each round.

    A result is checked first (``contribution_check``; NVFlare 2.9.0 does not check): one with NaN, values that are
    not numbers or a shape other than the model's, or a DIFF, is not passed on (the model stays as it was); keys
    the model does not have are dropped.

    Parameters:
        num_clients: clients per round (all if more than there are).
        num_rounds, start_round: the rounds ``start_round .. start_round + num_rounds - 1``.
        memory_gc_rounds: ``gc.collect()`` every that many rounds (0: never).
    """

    def __init__(
        self,
        *args: Any,
        num_clients: int = 2,
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

    def run(self) -> None:
        """Pass the model around the sampled clients, round after round."""
        self.info("Start Cyclic.")
        model = self.load_model()
        model.start_round = self.start_round
        model.total_rounds = self.num_rounds
        for self.current_round in range(self.start_round, self.start_round + self.num_rounds):
            if self.is_aborted():
                return
            self.info(f"Round {self.current_round} started.")
            model.current_round = self.current_round
            for client in self.sample_clients(self.num_clients):
                results = self.send_model_and_wait(targets=[client], data=model)
                if self.is_aborted():
                    return
                if not results:
                    self.warning(f"No result from {client} in round {self.current_round}; the model is unchanged.")
                    continue
                params, note = check_contribution(results[0].params, model.params)
                if params is None or results[0].params_type == ParamsType.DIFF:
                    note = note if params is None else "it sent a DIFF; cyclic transfer passes on full weights"
                    self.warning(f"The model {client} returned in round {self.current_round} is not used: {note}.")
                    continue
                if note:
                    self.warning(f"The model {client} returned in round {self.current_round}: {note}.")
                model.params = params
                model.meta = {k: v for k, v in results[0].meta.items() if k not in _RESULT_ONLY_META}
            self.save_model(model)
            if self.memory_gc_rounds and (self.current_round - self.start_round + 1) % self.memory_gc_rounds == 0:
                gc.collect()
        self.info("Finished Cyclic.")
