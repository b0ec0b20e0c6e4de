"""FedAvgRecipe (unified): FedAvg on the server, a training script (ScriptRunner) on every client.

The server runs ``FedAvg(num_clients=min_clients, ...)``: each round samples ``min_clients`` clients, as in
NVFlare. The initial model comes from ``model_persistor``, else from the framework's default persistor for
``model`` / ``initial_ckpt`` (PyTorch: PTFileModelPersistor through PTModel; NumPy: NPModelPersistor), else a
plain dict ``model`` is given to FedAvg itself (``FrameworkType.RAW``). TensorFlow has no persistor in flarelite:
pass ``model_persistor``.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import Any

from ..apis.dxo import DataKind
from ..app_common.abstract.model_persistor import ModelPersistor
from ..app_common.aggregators.model_aggregator import ModelAggregator
from ..app_common.workflows.fedavg import FedAvg
from ..client.config import ExchangeFormat, TransferType
from ..job_config.base_fed_job import BaseFedJob
from ..job_config.script_runner import FrameworkType, ScriptRunner
from .spec import Recipe

_log = logging.getLogger("flarelite.recipe")

_STOP_COND = re.compile(r"^\s*(?P<key>[^\s<>=!]+)\s*(?P<op>>=|<=|==|>|<)\s*(?P<value>\S+)\s*$")


def resolve_key_metric_mode(key_metric: str, key_metric_mode: str | None, stop_cond: str | None) -> str:
    """``key_metric_mode``, or (None) the direction of ``stop_cond`` when it names ``key_metric``, else ``"max"``.

    Raises:
        ValueError: the mode is not min/max, or contradicts ``stop_cond`` (``"accuracy >= 0.9"`` is ``"max"``).
    """
    inferred = None
    if isinstance(stop_cond, str):
        match = _STOP_COND.match(stop_cond)
        if match and match.group("key") == key_metric:
            op = match.group("op")
            inferred = "max" if op in (">", ">=") else "min" if op in ("<", "<=") else None
    if key_metric_mode is None:
        return inferred or "max"
    if key_metric_mode not in ("min", "max"):
        raise ValueError(f"key_metric_mode must be 'min', 'max' or None, got {key_metric_mode!r}")
    if inferred is not None and inferred != key_metric_mode:
        raise ValueError(
            f"key_metric_mode={key_metric_mode!r} contradicts stop_cond={stop_cond!r}, which asks for "
            f"{'larger' if inferred == 'max' else 'smaller'} {key_metric!r}; drop key_metric_mode or use {inferred!r}"
        )
    return key_metric_mode


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _enum(kind: type, name: str, value: Any) -> Any:
    try:
        return kind(value)
    except ValueError as exc:
        allowed = [m.value for m in kind]  # type: ignore[attr-defined]
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from exc


def is_torch_module(value: Any) -> bool:
    """True for a ``torch.nn.Module`` (without importing torch: a module means torch is loaded already)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def class_spec(model: Any) -> dict[str, Any] | None:
    """``{"path", "args"}`` for a dict naming a class (``"path"`` or NVFlare's ``"class_path"``), else None."""
    if not isinstance(model, dict):
        return None
    path = model.get("path", model.get("class_path"))
    if not isinstance(path, str) or not (set(model) <= {"path", "class_path", "args"}):
        return None
    return {"path": path, "args": dict(model.get("args") or {})}


class FedAvgRecipe(Recipe):
    """FedAvg with a Client API training script on every client (PyTorch, NumPy, or RAW dict params)."""

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
        framework: FrameworkType = FrameworkType.PYTORCH,
        server_expected_format: ExchangeFormat = ExchangeFormat.NUMPY,
        params_transfer_type: TransferType = TransferType.FULL,
        model_persistor: ModelPersistor | None = None,
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
        """Build the server side now; the clients' ScriptRunner(s) are added when the recipe is exported or run.

        Raises:
            ValueError: no ``model``, ``initial_ckpt`` or ``model_persistor``; a conflicting ``key_metric_mode``;
                ``save_filename`` and ``best_model_filename`` both given and different; an invalid value.
            TypeError: ``model_persistor`` is not a ModelPersistor.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        _check_int("min_clients", min_clients, 1)
        _check_int("num_rounds", num_rounds, 0)
        if not isinstance(train_script, str) or not train_script:
            raise ValueError(f"train_script must be the path of the clients' training script, got {train_script!r}")
        if model is None and initial_ckpt is None and model_persistor is None:
            raise ValueError(
                f"recipe {name!r} has no initial model: give model=..., initial_ckpt=... or model_persistor=..."
            )
        if model_persistor is not None and not isinstance(model_persistor, ModelPersistor):
            raise TypeError(f"model_persistor must be a ModelPersistor, got {type(model_persistor).__name__}")
        if aggregator_data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            raise ValueError(
                f"aggregator_data_kind must be DataKind.WEIGHTS or DataKind.WEIGHT_DIFF, got {aggregator_data_kind!r}"
            )
        if save_filename is not None:
            warnings.warn(
                "FedAvgRecipe(save_filename=...) is deprecated: use best_model_filename",
                DeprecationWarning,
                stacklevel=3,
            )
            if best_model_filename is not None and best_model_filename != save_filename:
                raise ValueError(
                    f"save_filename={save_filename!r} (deprecated alias) and best_model_filename="
                    f"{best_model_filename!r} disagree; give only best_model_filename"
                )
            best_model_filename = save_filename
        if aggregator is not None and not isinstance(aggregator, ModelAggregator):
            _log.warning(
                "FedAvgRecipe %s: aggregator %s is not a ModelAggregator and is ignored (FedAvg aggregates in time)",
                name,
                type(aggregator).__name__,
            )
            aggregator = None
        self.framework = _enum(FrameworkType, "framework", framework)
        server_expected_format = _enum(ExchangeFormat, "server_expected_format", server_expected_format)
        params_transfer_type = _enum(TransferType, "params_transfer_type", params_transfer_type)
        mode = resolve_key_metric_mode(key_metric, key_metric_mode, stop_cond)

        self.model = model
        self.initial_ckpt = initial_ckpt
        self.min_clients = min_clients
        self.num_rounds = num_rounds
        self.train_script = train_script
        self.train_args = train_args
        self.aggregator = aggregator
        self.aggregator_data_kind = aggregator_data_kind
        self.launch_external_process = launch_external_process
        self.command = command
        self.server_expected_format = server_expected_format
        self.params_transfer_type = params_transfer_type
        self.model_persistor = model_persistor
        self.launch_once = launch_once
        self.launch_timeout = launch_timeout
        self.shutdown_timeout = shutdown_timeout
        self.key_metric = key_metric
        self.key_metric_mode = mode
        self.stop_cond = stop_cond
        self.patience = patience
        self.best_model_filename = best_model_filename
        self.exclude_vars = exclude_vars
        self.aggregation_weights = aggregation_weights
        self.server_memory_gc_rounds = server_memory_gc_rounds
        self.enable_tensor_disk_offload = enable_tensor_disk_offload
        self.client_memory_gc_rounds = client_memory_gc_rounds
        self.cuda_empty_cache = cuda_empty_cache

        job = BaseFedJob(name=name, min_clients=min_clients, key_metric=key_metric, key_metric_mode=mode)
        self._fedavg_model: dict | None = None  # plain params for FedAvg when there is no persistor
        persistor_id = self._setup_model_and_persistor(job)
        fedavg_args: dict[str, Any] = dict(
            num_clients=min_clients,
            num_rounds=num_rounds,
            persistor_id=persistor_id,
            stop_cond=stop_cond,
            patience=patience,
            task_name="train",
            exclude_vars=exclude_vars,
            aggregation_weights=aggregation_weights,
            memory_gc_rounds=server_memory_gc_rounds,
            enable_tensor_disk_offload=enable_tensor_disk_offload,
        )
        if self._fedavg_model is not None:
            fedavg_args["model"] = self._fedavg_model
        if not persistor_id and best_model_filename:
            fedavg_args["save_filename"] = best_model_filename
        if aggregator is not None:
            fedavg_args["aggregator"] = aggregator
        job.to_server(FedAvg(**fedavg_args))
        super().__init__(job)
        self._client_defaults = {
            "train_script": train_script,
            "train_args": train_args,
            "launch_external_process": launch_external_process,
            "command": command,
            "framework": self._client_framework(),
            "server_expected_format": server_expected_format,
            "params_transfer_type": params_transfer_type,
            "launch_once": launch_once,
            "launch_timeout": launch_timeout,
            "shutdown_timeout": shutdown_timeout,
        }
        if per_site_config is not None:
            warnings.warn(
                "FedAvgRecipe(per_site_config=...) is deprecated: use flarelite.recipe.set_per_site_config",
                DeprecationWarning,
                stacklevel=3,
            )
            self._set_per_site_config(per_site_config)

    # --- hooks for the framework recipes --------------------------------------------------------------
    def _client_framework(self) -> FrameworkType:
        """The framework the clients' ScriptRunner gets (the recipe's, unless a subclass says otherwise)."""
        return self.framework

    def _setup_model_and_persistor(self, job: BaseFedJob) -> str:
        """Put the initial model on the server; return the persistor id ("" when FedAvg holds the model itself)."""
        spec = class_spec(self.model)
        if self.framework == FrameworkType.PYTORCH and (
            is_torch_module(self.model) or spec is not None or (self.model is None and self.initial_ckpt)
        ):
            return self._setup_pytorch(job, spec)
        if self.model_persistor is not None:
            return job.to_server(self.model_persistor, id="persistor")
        if self.framework in (FrameworkType.NUMPY, FrameworkType.RAW) and _is_array_like(self.model):
            return self._setup_numpy(job)
        if self.framework == FrameworkType.TENSORFLOW:
            raise ValueError(
                "FedAvgRecipe(framework=TENSORFLOW): flarelite has no TensorFlow persistor; pass model_persistor=..."
            )
        if isinstance(self.model, dict) and self.initial_ckpt is None:
            self._fedavg_model = dict(self.model)
            return ""
        raise ValueError(
            f"FedAvgRecipe(framework={self.framework.value!r}): cannot use model of type {type(self.model).__name__}"
            f"{' with initial_ckpt' if self.initial_ckpt else ''}; give a dict of params, or model_persistor=..."
        )

    def _setup_pytorch(self, job: BaseFedJob, spec: dict[str, Any] | None) -> str:
        from ..app_opt.pt.file_model_persistor import PTFileModelPersistor
        from ..app_opt.pt.job_config.model import PTModel

        model = spec if spec is not None else self.model
        if model is None:  # only a checkpoint
            persistor = self.model_persistor or PTFileModelPersistor(
                source_ckpt_file_full_name=self.initial_ckpt,
                allow_numpy_conversion=self.server_expected_format != ExchangeFormat.PYTORCH,
            )
            return job.to_server(persistor, id="persistor")
        ids = job.to_server(
            PTModel(
                model,
                persistor=self.model_persistor,
                allow_numpy_conversion=self.server_expected_format != ExchangeFormat.PYTORCH,
                initial_ckpt=self.initial_ckpt,
                best_model_filename=self.best_model_filename,
            )
        )
        job.comp_ids.update(ids)
        return ids["persistor_id"]

    def _setup_numpy(self, job: BaseFedJob) -> str:
        from ..app_common.np.np_model_persistor import NPModelPersistor

        model = self.model.tolist() if hasattr(self.model, "tolist") else self.model
        persistor = NPModelPersistor(model=model, source_ckpt_file_full_name=self.initial_ckpt)
        return job.to_server(persistor, id="persistor")

    def _make_client_runner(self, config: dict[str, Any]) -> ScriptRunner:
        return ScriptRunner(
            script=config["train_script"],
            script_args=config["train_args"],
            launch_external_process=config["launch_external_process"],
            command=config["command"],
            framework=config["framework"],
            server_expected_format=config["server_expected_format"],
            params_transfer_type=config["params_transfer_type"],
            launch_once=config["launch_once"],
            launch_timeout=config["launch_timeout"],
            shutdown_timeout=config["shutdown_timeout"],
            memory_gc_rounds=self.client_memory_gc_rounds,
            cuda_empty_cache=self.cuda_empty_cache,
        )


def _is_array_like(value: Any) -> bool:
    return isinstance(value, list) or (hasattr(value, "tolist") and hasattr(value, "dtype"))
