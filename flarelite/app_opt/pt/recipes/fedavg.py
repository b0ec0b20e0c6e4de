"""PyTorch FedAvgRecipe: the unified FedAvgRecipe with framework PYTORCH, the model put on the server by PTModel."""

from __future__ import annotations

from typing import Any

from ....apis.dxo import DataKind
from ....app_common.abstract.model_locator import ModelLocator
from ....app_common.abstract.model_persistor import ModelPersistor
from ....app_common.utils.validation_utils import forward_args
from ....client.config import ExchangeFormat, TransferType
from ....job_config.base_fed_job import BaseFedJob
from ....job_config.script_runner import FrameworkType
from ....recipe.fedavg import FedAvgRecipe as _UnifiedFedAvgRecipe
from ....recipe.fedavg import class_spec
from ..job_config.model import PTModel


class FedAvgRecipe(_UnifiedFedAvgRecipe):
    """FedAvg for a PyTorch model: ``FedAvgRecipe(model=Net(), min_clients=2, train_script="client.py")``.

    ``model`` is an ``nn.Module`` or ``{"path"|"class_path": "pkg.mod.Class", "args": {...}}``; it goes through
    ``PTModel`` (``"persistor"`` and ``"locator"`` on the server), which hands the weights out as numpy arrays
    unless ``server_expected_format`` is PYTORCH.
    """

    def __init__(
        self,
        *,
        name: str = "fedavg",
        model: Any = None,
        initial_ckpt: str | None = None,
        min_clients: int,
        num_rounds: int = 2,
        train_script: str,
        train_args: str = "",
        aggregator: Any = None,
        aggregator_data_kind: str = DataKind.WEIGHTS,
        launch_external_process: bool = False,
        command: str = "python3 -u",
        server_expected_format: ExchangeFormat = ExchangeFormat.NUMPY,
        params_transfer_type: TransferType = TransferType.FULL,
        model_persistor: ModelPersistor | None = None,
        model_locator: ModelLocator | None = None,
        per_site_config: dict[str, dict] | None = None,
        launch_once: bool = True,
        launch_timeout: float | None = 300.0,
        shutdown_timeout: float = 0.0,
        key_metric: str = "accuracy",
        key_metric_mode: str | None = None,
        stop_cond: str | None = None,
        patience: int | None = None,
        best_model_filename: str | None = None,
        save_filename: str | None = None,
        exclude_vars: str | None = None,
        aggregation_weights: dict[str, float] | None = None,
        server_memory_gc_rounds: int = 0,
        enable_tensor_disk_offload: bool = False,
        client_memory_gc_rounds: int = 0,
        cuda_empty_cache: bool = False,
    ) -> None:
        """As the unified FedAvgRecipe, with the framework PYTORCH and ``model_locator`` for PTModel.

        Raises:
            ValueError: ``initial_ckpt`` without ``model``, or the unified recipe's errors.
            TypeError: ``model`` is neither an ``nn.Module`` nor a class dict, or ``model_locator`` is not a
                ModelLocator.
        """
        if initial_ckpt is not None and model is None:
            raise ValueError(
                "FedAvgRecipe: initial_ckpt needs model too (the architecture the checkpoint's weights belong to)"
            )
        if model_locator is not None and not isinstance(model_locator, ModelLocator):
            raise TypeError(f"model_locator must be a ModelLocator, got {type(model_locator).__name__}")
        self.model_locator = model_locator
        super().__init__(**forward_args(locals(), _UnifiedFedAvgRecipe.__init__, framework=FrameworkType.PYTORCH))

    def _setup_model_and_persistor(self, job: BaseFedJob) -> str:
        if self.model is None:  # a custom persistor only (checked by the unified recipe)
            persistor_id = job.to_server(self.model_persistor, id="persistor")
            if self.model_locator is not None:
                job.comp_ids["locator_id"] = job.to_server(self.model_locator, id="locator")
            job.comp_ids["persistor_id"] = persistor_id
            return persistor_id
        model = class_spec(self.model) if isinstance(self.model, dict) else self.model
        if isinstance(self.model, dict) and model is None:
            raise TypeError(
                f"FedAvgRecipe: a dict model must be {{'path' (or 'class_path'): 'pkg.mod.Class', 'args': {{...}}}}, "
                f"got {self.model!r}"
            )
        ids = job.to_server(
            PTModel(
                model,
                persistor=self.model_persistor,
                locator=self.model_locator,
                allow_numpy_conversion=self.server_expected_format != ExchangeFormat.PYTORCH,
                initial_ckpt=self.initial_ckpt,
                best_model_filename=self.best_model_filename,
            )
        )
        job.comp_ids.update(ids)
        return ids["persistor_id"]
