"""CrossSiteModelEval: every participating client validates every client's best model and the server's models.

Flow: a ``submit_model`` task asks each client for its model (header ``submit_model_name="best_model"``, no
DXO); each model that comes back is saved under ``<run dir>/<cross_val_dir>/model_shareables/<client>`` and
sent as a ``validate`` task to all participants. The models of the ModelLocator (if one is configured) are
saved as ``SRV_<name>`` and validated the same way. Each validation result is saved under
``result_shareables/<client>_<owner>`` and announced with VALIDATION_RESULT_RECEIVED (props ``_model_owner_``,
``_data_client_``, ``_validation_result_``), which ValidationJsonGenerator collects.

Models and results are written with flarelite's safe codec (``DXO.to_file`` / ``from_file``), never pickle.
Validation tasks are sent from the workflow thread, not from the result callbacks.

Differences from NVFlare 2.9.0 (what a client sends is not trusted to name files or models):

- the owner of a validation result is the model the server sent in that task, not the result's
  ``_model_owner_`` cookie (a client could otherwise file its metrics under another model); a late result counts
  only if its cookie names a model of this run, and only from a participant;
- a client whose name starts with ``SRV_`` gets no model validated (its file would replace the server model of
  that name), and only a client's first submitted model is validated;
- two (client, owner) pairs that would share a result file name (``a_b`` + ``c``, ``a`` + ``b_c``) get distinct
  files (the second one ``a_b_c.2``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from typing import Any

from ...apis.client import Client
from ...apis.controller_spec import ClientTask, Task
from ...apis.dxo import DXO, from_file, from_shareable
from ...apis.fl_constant import ReturnCode
from ...apis.fl_context import FLContext
from ...apis.impl.controller import Controller
from ...apis.shareable import Shareable
from ...apis.signal import Signal
from ..abstract.model_locator import ModelLocator
from ..app_constant import AppConstants, ModelName
from ..app_event_type import AppEventType
from ..utils.validation_utils import check_int, check_str

SERVER_MODEL_PREFIX = "SRV_"


class CrossSiteModelEval(Controller):
    """Cross-site model validation (see the module docstring).

    Parameters:
        task_check_period: seconds between checks of the standing tasks (a float).
        cross_val_dir: folder under the run folder for the saved models and results.
        submit_model_timeout, validation_timeout: task timeouts in seconds (0: none).
        model_locator_id: id of a ModelLocator whose models are validated too ("": none).
        formatter_id: id of a component with ``format(fl_ctx) -> str`` that prints the results at the end.
        submit_model_task_name: "" skips collecting the clients' models (only server models are validated).
        validation_task_name: the task the clients validate with.
        cleanup_models: remove the saved models when the workflow ends.
        participating_clients: the clients to involve (None: all clients of the job).
        wait_for_clients_timeout: seconds to wait for clients to be known before giving up.
    """

    def __init__(
        self,
        task_check_period: float = 0.5,
        cross_val_dir: str = AppConstants.CROSS_VAL_DIR,
        submit_model_timeout: int = 600,
        validation_timeout: int = 6000,
        model_locator_id: str = "",
        formatter_id: str = "",
        submit_model_task_name: str = AppConstants.TASK_SUBMIT_MODEL,
        validation_task_name: str = AppConstants.TASK_VALIDATION,
        cleanup_models: bool = False,
        participating_clients: list[str] | None = None,
        wait_for_clients_timeout: int = 300,
    ) -> None:
        super().__init__(task_check_period=task_check_period)
        if not isinstance(task_check_period, float):
            raise TypeError(f"task_check_period must be a float, got {type(task_check_period).__name__}")
        check_str("cross_val_dir", cross_val_dir)
        check_str("model_locator_id", model_locator_id)
        check_str("formatter_id", formatter_id)
        check_str("submit_model_task_name", submit_model_task_name)
        check_str("validation_task_name", validation_task_name)
        if not isinstance(cleanup_models, bool):
            raise TypeError(f"cleanup_models must be a bool, got {type(cleanup_models).__name__}")
        check_int("submit_model_timeout", submit_model_timeout)
        check_int("validation_timeout", validation_timeout)
        check_int("wait_for_clients_timeout", wait_for_clients_timeout)
        if participating_clients is not None and (
            not isinstance(participating_clients, list) or not all(isinstance(c, str) for c in participating_clients)
        ):
            raise TypeError(f"participating_clients must be a list of site names, got {participating_clients!r}")
        self._task_check_period = task_check_period
        self._cross_val_dir = cross_val_dir
        self._submit_model_timeout = submit_model_timeout
        self._validation_timeout = validation_timeout
        self._model_locator_id = model_locator_id
        self._formatter_id = formatter_id
        self._submit_model_task_name = submit_model_task_name
        self._validation_task_name = validation_task_name
        self._cleanup_models = cleanup_models
        self._participating_clients = participating_clients
        self._wait_for_clients_timeout = wait_for_clients_timeout
        self._participants: list[str] = []
        self._val_results: dict[str, dict] = {}
        self._server_models: dict[str, str] = {}
        self._client_models: dict[str, str | None] = {}
        self._to_validate: deque[str] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._formatter: Any = None
        self._model_locator: ModelLocator | None = None
        self._cross_val_models_dir = ""
        self._cross_val_results_dir = ""
        self._result_files: dict[str, tuple[str, str]] = {}

    # lifecycle ---------------------------------------------------------------------------------------
    def start_controller(self, fl_ctx: FLContext) -> None:
        """Create the model and result folders and look up the locator and the formatter."""
        engine = fl_ctx.get_engine()
        run_dir = fl_ctx.get_workspace().get_run_dir(fl_ctx.get_job_id())
        cross_val_path = os.path.join(run_dir, self._cross_val_dir)
        self._cross_val_models_dir = os.path.join(cross_val_path, AppConstants.CROSS_VAL_MODEL_DIR_NAME)
        self._cross_val_results_dir = os.path.join(cross_val_path, AppConstants.CROSS_VAL_RESULTS_DIR_NAME)
        fl_ctx.set_prop(AppConstants.CROSS_VAL_MODEL_PATH, self._cross_val_models_dir, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.CROSS_VAL_RESULTS_PATH, self._cross_val_results_dir, private=True, sticky=False)
        for folder in (self._cross_val_models_dir, self._cross_val_results_dir):
            if os.path.exists(folder):
                shutil.rmtree(folder)
            os.makedirs(folder)
        if self._model_locator_id:
            self._model_locator = engine.get_component(self._model_locator_id)
            if not isinstance(self._model_locator, ModelLocator):
                self.system_panic(
                    f"bad model locator {self._model_locator_id!r}: expected a ModelLocator but got "
                    f"{type(self._model_locator).__name__}",
                    fl_ctx,
                )
                return
        if self._formatter_id:
            self._formatter = engine.get_component(self._formatter_id)
            if not callable(getattr(self._formatter, "format", None)):
                self.system_panic(
                    f"formatter {self._formatter_id!r} must be a component with format(fl_ctx), got "
                    f"{type(self._formatter).__name__}",
                    fl_ctx,
                )
                return

    def _resolve_participants(self, fl_ctx: FLContext, abort_signal: Signal) -> bool:
        if self._participating_clients:
            self._participants = list(self._participating_clients)
        deadline = time.monotonic() + self._wait_for_clients_timeout
        while not self._participants:
            self._participants = [c.name for c in fl_ctx.get_engine().get_clients()]
            if self._participants:
                break
            if time.monotonic() > deadline:
                self.log_info(fl_ctx, "No clients available - quit model validation.")
                return False
            self.log_info(fl_ctx, "No clients available - waiting ...")
            if abort_signal.wait(1.0):
                return False
        for name in self._participants:
            self._client_models.setdefault(name, None)
            self._val_results.setdefault(name, {})
        return True

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Collect the models, send them out for validation and wait until every task is done."""
        try:
            if not self._resolve_participants(fl_ctx, abort_signal):
                return
            self.log_info(fl_ctx, f"Beginning model validation with clients: {self._participants}.")
            if self._submit_model_task_name:
                request = Shareable()
                request.set_header(AppConstants.SUBMIT_MODEL_NAME, ModelName.BEST_MODEL)
                task = Task(
                    name=self._submit_model_task_name,
                    data=request,
                    result_received_cb=self._receive_local_model_cb,
                    task_done_cb=self._task_done_cb,
                    timeout=self._submit_model_timeout,
                )
                self.broadcast(task=task, fl_ctx=fl_ctx, targets=self._participants, min_responses=0)
            if abort_signal.triggered:
                return
            if self._model_locator:
                if not self._locate_server_models(fl_ctx):
                    return
            else:
                self.log_info(fl_ctx, "ModelLocator not present. No server models will be included.")
            while True:
                self._wake.clear()
                self._send_queued(fl_ctx)
                if abort_signal.triggered:
                    self.log_info(fl_ctx, "Abort signal triggered. Finishing cross site validation.")
                    return
                standing = self.get_num_standing_tasks()  # first: a result callback queues before its task ends
                with self._lock:
                    queued = bool(self._to_validate)
                if not queued and not standing:
                    break
                self._wake.wait(self._task_check_period)
            self.log_info(fl_ctx, "Cross site validation finished.")
        except Exception as exc:
            message = f"Exception in cross site validator control_flow: {type(exc).__name__}: {exc}"
            self.log_exception(fl_ctx, message)
            self.system_panic(message, fl_ctx)

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Cancel what is left, print the results with the formatter, and remove the models if asked."""
        self.cancel_all_tasks(fl_ctx=fl_ctx)
        if self._formatter is not None:
            fl_ctx.set_prop(AppConstants.VALIDATION_RESULT, self._val_results, private=True, sticky=False)
            self.log_info(fl_ctx, f"Validation results:\n{self._formatter.format(fl_ctx)}")
        if self._cleanup_models:
            self.log_info(fl_ctx, "Removing local models kept for validation.")
            for path in [*self._server_models.values(), *self._client_models.values()]:
                if path and os.path.isfile(path):
                    os.remove(path)

    # models to validate -------------------------------------------------------------------------------
    def _locate_server_models(self, fl_ctx: FLContext) -> bool:
        self.log_info(fl_ctx, "Locating server models.")
        names = []
        for name in self._model_locator.get_model_names(fl_ctx):
            dxo = self._model_locator.locate_model(name, fl_ctx)
            if not isinstance(dxo, DXO):
                self.system_panic(
                    f"ModelLocator produced invalid data for {name!r}: expected a DXO but got {type(dxo).__name__}",
                    fl_ctx,
                )
                return False
            unique_name = SERVER_MODEL_PREFIX + name
            self._server_models[unique_name] = self._save_validation_content(
                unique_name, self._cross_val_models_dir, dxo
            )
            self._val_results[unique_name] = {}
            names.append(unique_name)
            self._queue(unique_name)
        self.log_info(fl_ctx, f"Server models loaded: {names}." if names else "no server models to validate!")
        return True

    def _queue(self, model_name: str) -> None:
        with self._lock:
            self._to_validate.append(model_name)
        self._wake.set()

    def _task_done_cb(self, task: Task, fl_ctx: FLContext) -> None:
        self._wake.set()

    def _send_queued(self, fl_ctx: FLContext) -> None:
        while True:
            with self._lock:
                if not self._to_validate:
                    return
                model_name = self._to_validate.popleft()
            self._send_validation_task(model_name, fl_ctx)

    def _send_validation_task(self, model_name: str, fl_ctx: FLContext) -> None:
        self.log_info(fl_ctx, f"Sending {model_name} model to all participating clients for validation.")
        model_dxo = self._load_validation_content(model_name, self._cross_val_models_dir)
        data = model_dxo.to_shareable()
        data.set_header(AppConstants.MODEL_OWNER, model_name)
        data.add_cookie(AppConstants.MODEL_OWNER, model_name)
        task = Task(
            name=self._validation_task_name,
            data=data,
            before_task_sent_cb=self._before_send_validate_task_cb,
            result_received_cb=self._receive_val_result_cb,
            task_done_cb=self._task_done_cb,
            timeout=self._validation_timeout,
            props={AppConstants.MODEL_OWNER: model_name},
        )
        self.broadcast(task=task, fl_ctx=fl_ctx, targets=self._participants, min_responses=0)

    def _before_send_validate_task_cb(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        task = client_task.task
        fl_ctx.set_prop(AppConstants.DATA_CLIENT, client_task.client, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.MODEL_OWNER, task.props[AppConstants.MODEL_OWNER], private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.MODEL_TO_VALIDATE, task.data, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.PARTICIPATING_CLIENTS, self._participants, private=True, sticky=False)
        self.fire_event(AppEventType.SEND_MODEL_FOR_VALIDATION, fl_ctx)

    # results --------------------------------------------------------------------------------------------
    def _receive_local_model_cb(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        self._accept_local_model(client_task.client.name, client_task.result, fl_ctx)
        client_task.result = None

    def _accept_local_model(self, client_name: str, result: Shareable, fl_ctx: FLContext) -> None:
        fl_ctx.set_prop(AppConstants.RECEIVED_MODEL, result, private=False, sticky=False)
        fl_ctx.set_prop(AppConstants.RECEIVED_MODEL_OWNER, client_name, private=False, sticky=False)
        fl_ctx.set_prop(AppConstants.CROSS_VAL_DIR, self._cross_val_dir, private=False, sticky=False)
        self.fire_event(AppEventType.RECEIVE_BEST_MODEL, fl_ctx)
        rc = result.get_return_code()
        if rc and rc != ReturnCode.OK:
            self.log_error(fl_ctx, f"{client_name} submitted no model (return code {rc}); its model is not validated.")
            return
        if client_name.startswith(SERVER_MODEL_PREFIX):
            self.log_error(
                fl_ctx,
                f"the model of {client_name} is not validated: names starting with {SERVER_MODEL_PREFIX!r} are the "
                "server's models (its file would replace theirs); rename the site",
            )
            return
        if self._client_models.get(client_name):
            self.log_warning(fl_ctx, f"{client_name} submitted a second model; only its first one is validated.")
            return
        try:
            dxo = from_shareable(result)
            path = self._save_validation_content(client_name, self._cross_val_models_dir, dxo)
        except (ValueError, OSError) as exc:
            self.log_error(fl_ctx, f"Unable to save the model of {client_name}: {exc}; ignoring it.")
            return
        self.log_info(fl_ctx, f"Received local model from client {client_name}.")
        self._client_models[client_name] = path
        self._queue(client_name)

    def _receive_val_result_cb(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        # the model's name is the one this server put on the task, whatever cookie the result carries
        owner = client_task.task.props[AppConstants.MODEL_OWNER]
        self._accept_val_result(client_task.client.name, client_task.result, fl_ctx, owner)
        client_task.result = None

    def _accept_val_result(
        self, client_name: str, result: Shareable, fl_ctx: FLContext, model_owner: str | None = None
    ) -> None:
        if model_owner is None:  # a late result: its cookie must name a model this run sent out
            model_owner = result.get_cookie(AppConstants.MODEL_OWNER, "")
            known = set(self._server_models) | {name for name, path in self._client_models.items() if path}
            if model_owner not in known:
                self.log_error(
                    fl_ctx, f"Ignoring a late validation result of {client_name} for an unknown model {model_owner!r}."
                )
                return
        fl_ctx.set_prop(AppConstants.MODEL_OWNER, model_owner, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.DATA_CLIENT, client_name, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.VALIDATION_RESULT, result, private=True, sticky=False)
        self.fire_event(AppEventType.VALIDATION_RESULT_RECEIVED, fl_ctx)
        results = self._val_results.setdefault(client_name, {})
        rc = result.get_return_code()
        if rc and rc != ReturnCode.OK:
            self.log_error(
                fl_ctx,
                f"Client {client_name} sent results for validating the {model_owner} model with return code {rc}; "
                "logging empty results.",
            )
            results[model_owner] = {}
            return
        save_name = self._result_file_name(client_name, model_owner)
        try:
            dxo = from_shareable(result)
            results[model_owner] = self._save_validation_content(save_name, self._cross_val_results_dir, dxo)
            self.log_info(fl_ctx, f"Client {client_name} sent results for validating the {model_owner} model.")
        except (ValueError, OSError) as exc:
            self.log_exception(
                fl_ctx, f"Unable to save the validation result of {client_name} for {model_owner}'s model: {exc}"
            )

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """A late submitted model or validation result of a participant is still used."""
        if client.name not in self._participants:
            self.log_error(fl_ctx, f"Ignoring the result of task {task_name} from {client.name}: not a participant.")
        elif task_name == self._submit_model_task_name:
            self._accept_local_model(client.name, result, fl_ctx)
        elif task_name == self._validation_task_name:
            self._accept_val_result(client.name, result, fl_ctx)
        else:
            self.log_error(fl_ctx, f"Ignoring the result of unknown task {task_name} from {client.name}.")

    # files --------------------------------------------------------------------------------------------
    def _result_file_name(self, client_name: str, model_owner: str) -> str:
        """``<client>_<owner>``, unless another (client, owner) pair has that name already (``a_b`` + ``c`` and
        ``a`` + ``b_c``): then a numbered variant, so no result file replaces another's."""
        base = name = f"{client_name}_{model_owner}"
        n = 1
        with self._lock:
            while self._result_files.setdefault(name, (client_name, model_owner)) != (client_name, model_owner):
                n += 1
                name = f"{base}.{n}"
        return name

    @staticmethod
    def _safe_name(name: str) -> str:
        if not name or os.path.basename(name) != name or name in (".", ".."):
            raise ValueError(f"{name!r} cannot be used as a file name")
        return name

    def _save_validation_content(self, name: str, save_dir: str, dxo: DXO) -> str:
        path = os.path.join(save_dir, self._safe_name(name))
        try:
            dxo.to_file(path)
        except Exception as exc:
            raise ValueError(f"Unable to save the contents of {name} to {path}: {exc}") from exc
        return path

    def _load_validation_content(self, name: str, load_dir: str) -> DXO:
        path = os.path.join(load_dir, self._safe_name(name))
        try:
            return from_file(path)
        except Exception as exc:
            raise ValueError(f"Unable to load the contents of {name} from {path}: {exc}") from exc
