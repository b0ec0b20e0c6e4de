"""CrossSiteEval: cross-site evaluation as a ModelController (FLModels in and out).

Each client submits its best model (``FLModel(params={}, meta={"submit_model_name": "best_model"})`` as task
``submit_model``); each returned model, and each of the ``server_models``, is sent as a ``validate`` task to
all participants. The metrics come back as ``{data_client: {model_owner: metrics}}`` in
``<run dir>/<cross_val_dir>/cross_val_results.json``.

Server models come from the persistor's inventory (``get_model_inventory``/``get_model``); without a persistor
that has them, a file of that name in the run folder written by FedAvg (its ``save_filename``) is used.
Models are kept under ``model_shareables/`` in flarelite's safe codec (never pickle).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

from ...apis.dxo import from_file as dxo_from_file
from ..abstract.fl_model import FLModel
from ..abstract.model_persistor import ModelPersistor
from ..app_constant import AppConstants, DefaultCheckpointFileName, ModelName
from ..utils.fl_model_utils import FLModelUtils
from ..utils.validation_utils import check_int
from ..widgets.validation_json_generator import json_metrics, write_json_atomically
from .model_controller import ModelController

MODEL_NAME = "model_name"


class CrossSiteEval(ModelController):
    """Cross-site evaluation with FLModels (see the module docstring).

    Parameters:
        cross_val_dir: folder under the run folder for the models and the results.
        submit_model_timeout, validation_timeout: task timeouts in seconds (0: none).
        server_models: names of server models to validate too.
        participating_clients: the clients to involve (None: all).
    """

    def __init__(
        self,
        *args: Any,
        cross_val_dir: str = AppConstants.CROSS_VAL_DIR,
        submit_model_timeout: int = 600,
        validation_timeout: int = 6000,
        server_models: list[str] = [DefaultCheckpointFileName.GLOBAL_MODEL],  # noqa: B006 (NVFlare's default; copied)
        participating_clients: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_int("submit_model_timeout", submit_model_timeout)
        check_int("validation_timeout", validation_timeout)
        self._cross_val_dir = cross_val_dir
        self._submit_model_timeout = submit_model_timeout
        self._validation_timeout = validation_timeout
        self._server_models = list(server_models or [])
        self._participating_clients = participating_clients
        self._participants: list[str] = []
        self._val_results: dict[str, dict] = {}
        self._client_models: dict[str, str] = {}
        self._to_validate: deque[tuple[str, FLModel]] = deque()
        self._lock = threading.Lock()
        self._models_dir = ""

    def run(self) -> None:
        """Collect the clients' models, validate every model at every participant, write the results."""
        self.info("Start Cross-Site Evaluation.")
        self._participants = list(self._participating_clients or self.sample_clients())
        self._val_results = {name: {} for name in self._participants}
        self._models_dir = os.path.join(self.get_run_dir(), self._cross_val_dir, AppConstants.CROSS_VAL_MODEL_DIR_NAME)
        os.makedirs(self._models_dir, exist_ok=True)
        request = FLModel(params={}, meta={AppConstants.SUBMIT_MODEL_NAME: ModelName.BEST_MODEL})
        self.send_model(
            task_name=AppConstants.TASK_SUBMIT_MODEL,
            data=request,
            targets=self._participants,
            timeout=self._submit_model_timeout,
            callback=self._receive_local_model_cb,
        )
        for name in self._server_models:
            model = self._server_model(name)
            if model is not None:
                self._queue(name, model)
        while True:
            self._send_queued()
            standing = self.get_num_standing_tasks()  # first: a result callback queues before its task ends
            with self._lock:
                queued = bool(self._to_validate)
            if not queued and not standing:
                break
            if self.is_aborted():
                self.info("Abort signal triggered. Finishing cross-site evaluation.")
                return
            self._tasks_done.wait(self._task_check_period)
            self._tasks_done.clear()
        if self.is_aborted():
            return
        self.save_results()
        self.info("Finished Cross-Site Evaluation.")

    def _server_model(self, name: str) -> FLModel | None:
        if isinstance(self.persistor, ModelPersistor):
            inventory = self.persistor.get_model_inventory(self.fl_ctx) or {}
            if name in inventory:
                learnable = self.persistor.get_model(name, self.fl_ctx)
                return FLModelUtils.from_model_learnable(learnable)
        path = os.path.join(self.get_run_dir(), name)
        if os.path.isfile(path):
            try:
                return FLModelUtils.from_dxo(dxo_from_file(path))
            except ValueError as exc:
                self.error(f"server model {name!r} at {path} cannot be read: {exc}")
                return None
        self.warning(f"server model {name!r} not found (not in the persistor's inventory, no file {path})")
        return None

    def _queue(self, model_name: str, model: FLModel) -> None:
        with self._lock:
            self._to_validate.append((model_name, model))
        self._tasks_done.set()

    def _send_queued(self) -> None:
        while True:
            with self._lock:
                if not self._to_validate:
                    return
                model_name, model = self._to_validate.popleft()
            self.info(f"Sending the {model_name} model to {self._participants} for validation.")
            data = FLModel(params=model.params, params_type=model.params_type, meta={MODEL_NAME: model_name})
            data.meta[AppConstants.MODEL_OWNER] = model_name
            self.send_model(
                task_name=AppConstants.TASK_VALIDATION,
                data=data,
                targets=self._participants,
                timeout=self._validation_timeout,
                callback=self._receive_val_result_cb,
            )

    def _receive_local_model_cb(self, model: FLModel) -> None:
        client_name = model.meta["client_name"]
        if not model.params:
            self.warning(f"{client_name} submitted an empty model; it is not validated.")
            return
        if client_name in self._server_models:
            self.error(
                f"the model of {client_name} is not validated: a server model has that name (their results would "
                "be mixed up); rename the site or the server model"
            )
            return
        path = os.path.join(self._models_dir, client_name)
        FLModelUtils.to_dxo(model).to_file(path)
        self._client_models[client_name] = path
        self._queue(client_name, model)

    def _receive_val_result_cb(self, model: FLModel) -> None:
        client_name = model.meta["client_name"]
        owner = (model.meta.get("props") or {}).get(MODEL_NAME, "?")
        try:
            metrics = json_metrics(model.metrics)
        except (TypeError, RecursionError) as exc:  # what a client sends must not break the file of everyone
            self.error(f"the validation result of {client_name} for {owner} is not recorded: {exc}")
            return
        self._val_results.setdefault(client_name, {})[owner] = metrics
        self.info(f"Client {client_name} validated the {owner} model: {model.metrics}")

    def save_results(self) -> str:
        """Write ``{data_client: {model_owner: metrics}}`` to ``cross_val_results.json``; return its path."""
        folder = os.path.join(self.get_run_dir(), self._cross_val_dir)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "cross_val_results.json")
        write_json_atomically(path, self._val_results)
        self.info(f"Cross-site evaluation results saved to {path}")
        return path
