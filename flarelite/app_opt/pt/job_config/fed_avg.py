"""FedAvgJob: a PyTorch BaseFedJob with a FedAvg workflow on the server; the user adds the client executors."""

from __future__ import annotations

import torch

from ....app_common.utils.validation_utils import forward_args
from ....app_common.workflows.fedavg import FedAvg
from .base_fed_job import BaseFedJob


class FedAvgJob(BaseFedJob):
    """``FedAvgJob(net, n_clients, num_rounds)`` then ``job.to(ScriptRunner("train.py"), "site-1")`` per site."""

    def __init__(
        self,
        initial_model: torch.nn.Module,
        n_clients: int,
        num_rounds: int,
        name: str = "fed_job",
        min_clients: int = 1,
        mandatory_clients: list[str] | None = None,
        key_metric: str = "accuracy",
        key_metric_mode: str = "max",
    ) -> None:
        """Add the BaseFedJob pieces, the model (``"persistor"``, ``"locator"``) and
        ``FedAvg(num_clients=n_clients, num_rounds=num_rounds, persistor_id="persistor")``.

        Raises:
            ValueError: ``initial_model`` is not a ``torch.nn.Module`` (and BaseFedJob's checks).
        """
        if not isinstance(initial_model, torch.nn.Module):
            raise ValueError(f"FedAvgJob: initial_model must be a torch.nn.Module, got {type(initial_model).__name__}")
        super().__init__(**forward_args(locals(), BaseFedJob.__init__))
        self.n_clients = n_clients
        self.num_rounds = num_rounds
        controller = FedAvg(
            num_clients=n_clients, num_rounds=num_rounds, persistor_id=self.comp_ids.get("persistor_id", "persistor")
        )
        self.to_server(controller)
