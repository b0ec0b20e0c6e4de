"""NumpyFedAvgRecipe: FedAvg over a NumPy model (NPModelPersistor on the server, a NUMPY ScriptRunner on clients)."""

from __future__ import annotations

import warnings
from typing import Any

from ....apis.dxo import DataKind
from ....client.config import ExchangeFormat, TransferType
from ....job_config.base_fed_job import BaseFedJob
from ....job_config.script_runner import FrameworkType
from ....recipe.fedavg import FedAvgRecipe
from ...utils.validation_utils import forward_args
from ..np_model_persistor import NPModelPersistor


class NumpyFedAvgRecipe(FedAvgRecipe):
    """FedAvg for a NumPy model: ``NumpyFedAvgRecipe(model=[[1, 2], [3, 4]], min_clients=2, train_script=...)``.

    The server keeps the model as ``{"numpy_key": array}`` in ``NPModelPersistor(model=<list>)`` (id
    ``"persistor"``), which saves it to ``<server run dir>/models/server.npy``. The clients' ScriptRunner runs
    with ``framework=NUMPY``; afterwards ``recipe.framework`` reads RAW (NVFlare's value, so cross-site
    evaluation picks the numpy locator and validator).
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
        per_site_config: dict[str, dict] | None = None,
        launch_once: bool = True,
        shutdown_timeout: float = 0.0,
        key_metric: str = "accuracy",
        key_metric_mode: str | None = None,
        stop_cond: str | None = None,
        patience: int | None = None,
        best_model_filename: str | None = None,
        save_filename: str | None = None,
        exclude_vars: str | None = None,
        aggregation_weights: dict[str, float] | None = None,
        client_memory_gc_rounds: int = 0,
        cuda_empty_cache: bool = False,
        initial_model: Any = None,
    ) -> None:
        """As the unified FedAvgRecipe for NumPy; ``initial_model`` is a deprecated alias of ``model``.

        Raises:
            TypeError: ``model`` is not a list or a numpy array.
            ValueError: ``model`` and ``initial_model`` both given, or the unified recipe's errors.
        """
        if initial_model is not None:
            warnings.warn("NumpyFedAvgRecipe(initial_model=...) is deprecated: use model", DeprecationWarning, 2)
            if model is not None:
                raise ValueError("give model or initial_model (its deprecated alias), not both")
            model = initial_model
        if (
            model is not None
            and not isinstance(model, list)
            and not (hasattr(model, "tolist") and hasattr(model, "dtype"))
        ):
            raise TypeError(f"NumpyFedAvgRecipe: model must be a list or a numpy array, got {type(model).__name__}")
        if hasattr(model, "tolist"):
            model = model.tolist()
        super().__init__(**forward_args(locals(), FedAvgRecipe.__init__, framework=FrameworkType.NUMPY))
        self._client_defaults["framework"] = FrameworkType.NUMPY  # type: ignore[index]
        self.framework = FrameworkType.RAW

    def _setup_model_and_persistor(self, job: BaseFedJob) -> str:
        persistor = NPModelPersistor(model=self.model, source_ckpt_file_full_name=self.initial_ckpt)
        return job.to_server(persistor, id="persistor")
