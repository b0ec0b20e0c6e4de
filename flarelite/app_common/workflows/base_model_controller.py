"""BaseModelController: a Controller that sends FLModels to clients and gets FLModels back.

It is built on the public Controller API only (Task, broadcast/broadcast_and_wait, task callbacks). Each
result is handled on the task's result thread (``result_received_cb``): its return code is judged by the
``ignore_result_error`` policy, it is converted with ``FLModelUtils.from_shareable``, and it goes to the caller's
callback or to the list ``broadcast_model`` returns. The events of NVFlare fire around it
(BEFORE_TRAIN_TASK, BEFORE_/AFTER_CONTRIBUTION_ACCEPT), with the result's own FLContext, whose props
``_training_result_`` (the Shareable) and ``_aggregation_accepted`` widgets read.

Difference from NVFlare 2.9.0: the run's ``self.fl_ctx`` is never replaced by a result's context (NVFlare
overwrites it from the result thread, so the workflow thread and late results can see each other's props).
"""

from __future__ import annotations

import os
import random
import threading
from abc import ABC, abstractmethod
from typing import Any, Callable

from ...apis.client import Client
from ...apis.controller_spec import ClientTask, OperatorMethod, Task, TaskOperatorKey
from ...apis.fl_constant import ReturnCode
from ...apis.fl_context import FLContext
from ...apis.impl.controller import Controller
from ...apis.shareable import Shareable
from ...apis.signal import Signal
from ..abstract.fl_model import FLModel, ParamsType
from ..abstract.learnable_persistor import LearnablePersistor
from ..abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from ..utils.error_handling_utils import get_error_handling_message, should_ignore_result_error
from ..utils.fl_component_wrapper import FLComponentWrapper
from ..utils.fl_model_utils import FLModelUtils
from ..utils.validation_utils import check_int, check_str

# task props of this controller (besides NVFlare's _task_callback_ and meta_data)
_RESULTS = "_fl_model_results_"
_FAILED = "_failed_clients_"
_NUM_TARGETS = "_num_targets_"
_MIN_RESPONSES = "_min_responses_"
_ROUND = "_round_"


class BaseModelController(Controller, FLComponentWrapper, ABC):
    """The base of FLModel workflows: implement ``run()``; use ``broadcast_model``, ``load_model``, ``save_model``.

    Parameters:
        persistor_id: id of a LearnablePersistor component; missing or of another type: a warning, no persistor.
        ignore_result_error: what a result with a return code other than OK does: True ignores it, False ends
            the run, None (default) ignores it while the task's other targets can still give ``min_responses``.
        allow_empty_global_weights: let ``load_model`` return empty weights instead of ending the run.
        task_check_period: seconds between checks of the standing tasks (> 0).
    """

    def __init__(
        self,
        persistor_id: str = AppConstants.DEFAULT_PERSISTOR_ID,
        ignore_result_error: bool | None = None,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
    ) -> None:
        if isinstance(task_check_period, bool) or not isinstance(task_check_period, (int, float)):
            raise TypeError(f"task_check_period must be an int or float, got {type(task_check_period).__name__}")
        if task_check_period <= 0:
            raise ValueError(f"task_check_period must be greater than 0, got {task_check_period}")
        check_str("persistor_id", persistor_id)
        if ignore_result_error is not None and not isinstance(ignore_result_error, bool):
            raise TypeError(f"ignore_result_error must be True, False or None, got {ignore_result_error!r}")
        super().__init__(task_check_period=task_check_period)
        self._task_check_period = task_check_period
        self._persistor_id = persistor_id
        self._ignore_result_error = ignore_result_error
        self._allow_empty_global_weights = allow_empty_global_weights
        self.persistor: LearnablePersistor | None = None
        self._tasks_done = threading.Event()

    # lifecycle ---------------------------------------------------------------------------------------
    def start_controller(self, fl_ctx: FLContext) -> None:
        """Keep ``fl_ctx`` and the engine, look up the persistor, then call ``initialize()``."""
        self.fl_ctx = fl_ctx
        self.engine = fl_ctx.get_engine()
        self.info(f"Initializing {type(self).__name__} workflow.")
        self.persistor = None
        if self._persistor_id:
            persistor = self.engine.get_component(self._persistor_id) if self.engine is not None else None
            if isinstance(persistor, LearnablePersistor):
                self.persistor = persistor
            else:
                self.warning(
                    f"Persistor {self._persistor_id!r} must be a LearnablePersistor, but got "
                    f"{type(persistor).__name__}; the workflow runs without a persistor"
                )
        self.initialize()

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Fire TRAINING_STARTED and call ``run()``; an exception is logged and ends the run (panic)."""
        self.fl_ctx = fl_ctx
        self.abort_signal = abort_signal
        try:
            self.info("Beginning model controller run.")
            self.event(AppEventType.TRAINING_STARTED)
            self.run()
        except Exception as exc:
            message = f"Exception in model controller run: {type(exc).__name__}: {exc}"
            self.exception(message)
            self.panic(message)

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Call ``finalize()``."""
        self.finalize()

    @abstractmethod
    def run(self) -> None:
        """The workflow: called by ``control_flow``."""

    # sending models ----------------------------------------------------------------------------------
    def _client_names(self) -> list[str]:
        return [c.name for c in self.engine.get_clients()]

    def set_fl_context(self, data: FLModel) -> None:
        """Put the model's ``current_round`` and ``total_rounds`` in fl_ctx (``current_round``, ``num_rounds``)."""
        if data.current_round is not None:
            self.fl_ctx.set_prop(AppConstants.CURRENT_ROUND, data.current_round, private=True, sticky=True)
        if data.total_rounds is not None:
            self.fl_ctx.set_prop(AppConstants.NUM_ROUNDS, data.total_rounds, private=True, sticky=True)

    def _build_shareable(self, data: FLModel) -> Shareable:
        shareable = FLModelUtils.to_shareable(data)
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, shareable.get_header(AppConstants.CURRENT_ROUND))
        return shareable

    def broadcast_model(
        self,
        data: FLModel,
        task_name: str = AppConstants.TASK_TRAIN,
        targets: list[str] | list[Client] | None = None,
        min_responses: int | None = None,
        timeout: int = 0,
        wait_time_after_min_received: int = 0,
        blocking: bool = True,
        callback: Callable[[FLModel], Any] | None = None,
    ) -> list[FLModel] | None:
        """Send ``data`` as task ``task_name`` to ``targets`` (None: all clients).

        Blocking: wait and return the results as FLModels. Non-blocking: return None at once; ``callback(model)``
        runs for each result on the result thread (returning False marks the result as not accepted).

        Raises:
            TypeError: ``task_name`` is not a str, ``data`` is not an FLModel, an int argument is not an int,
                or non-blocking without a callable ``callback``.
            ValueError: a negative int argument.
        """
        if not isinstance(task_name, str):
            raise TypeError(f"task_name must be a str, got {type(task_name).__name__}")
        if not isinstance(data, FLModel):
            raise TypeError(f"data must be an FLModel, got {type(data).__name__}")
        if min_responses is None:
            min_responses = 0  # the broadcast's "all targets"
        check_int("min_responses", min_responses)
        check_int("timeout", timeout)
        check_int("wait_time_after_min_received", wait_time_after_min_received)
        if not blocking and not callable(callback):
            raise TypeError(f"callback must be callable when blocking is False, got {type(callback).__name__}")
        if targets:
            names = [t.name if isinstance(t, Client) else t for t in targets]
            self.info(f"Sending task {task_name} to {names}")
        else:
            names = self._client_names()
            self.info(f"Sending task {task_name} to all clients {names}")
        self.set_fl_context(data)
        task = self._prepare_task(data, task_name, timeout, callback, names, min_responses)
        how = dict(
            task=task,
            fl_ctx=self.fl_ctx,
            targets=names,
            min_responses=min_responses,
            wait_time_after_min_received=wait_time_after_min_received,
        )
        if not blocking:
            self.broadcast(**how)
            return None
        self.broadcast_and_wait(**how, abort_signal=self.abort_signal)
        results: list[FLModel] = task.props.pop(_RESULTS, [])
        expected = min_responses if min_responses else len(names)
        if len(results) != expected:
            self.warning(f"Number of results ({len(results)}) is different from the expected number ({expected}).")
        return results

    def _prepare_task(
        self,
        data: FLModel,
        task_name: str,
        timeout: int,
        callback: Callable | None,
        targets: list[str],
        min_responses: int,
    ) -> Task:
        operator = {
            TaskOperatorKey.OP_ID: task_name,
            TaskOperatorKey.METHOD: OperatorMethod.BROADCAST,
            TaskOperatorKey.TIMEOUT: timeout,
        }
        props = {
            AppConstants.TASK_PROP_CALLBACK: callback,
            AppConstants.META_DATA: data.meta,
            _RESULTS: [],
            _FAILED: set(),
            _NUM_TARGETS: len(targets),
            _MIN_RESPONSES: min_responses,
            _ROUND: data.current_round,
        }
        return Task(
            name=task_name,
            data=self._build_shareable(data),
            operator=operator,
            props=props,
            timeout=timeout,
            before_task_sent_cb=self._prepare_task_data,
            result_received_cb=self._process_result,
            task_done_cb=self._task_done,
        )

    def _prepare_task_data(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        fl_ctx.set_prop(AppConstants.TRAIN_SHAREABLE, client_task.task.data, private=True, sticky=False)
        self.fire_event(AppEventType.BEFORE_TRAIN_TASK, fl_ctx)

    def _task_done(self, task: Task, fl_ctx: FLContext) -> None:
        self._tasks_done.set()

    def wait_for_standing_tasks(self) -> bool:
        """Block until no task is standing; return False if the run was aborted first.

        Checks every ``task_check_period`` seconds, and as soon as one of this controller's tasks ends.
        """
        while True:
            self._tasks_done.clear()
            if self.is_aborted():  # checked first: an abort also ends the standing tasks
                return False
            if not self.get_num_standing_tasks():
                return not self.is_aborted()  # a panic in a result callback ends the tasks as it aborts
            self._tasks_done.wait(self._task_check_period)

    # results ------------------------------------------------------------------------------------------
    def _process_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        task = client_task.task
        result = client_task.result
        client_name = client_task.client.name
        current_round = task.get_prop(_ROUND)
        if current_round is not None:
            fl_ctx.set_prop(AppConstants.CURRENT_ROUND, current_round, private=True, sticky=True)
        fl_ctx.set_prop(AppConstants.TRAINING_RESULT, result, private=True, sticky=False)
        self.fire_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)
        accepted = self._accept_train_result(client_name, result, fl_ctx, task=task)
        if accepted:
            try:
                model = FLModelUtils.from_shareable(result)
            except (TypeError, ValueError) as exc:  # no DXO, or headers (rounds) of the wrong type or range
                self.log_error(
                    fl_ctx, f"the result of {client_name} for task {task.name} is not a valid FLModel: {exc}"
                )
                accepted = False
        if accepted:
            model.meta["props"] = task.get_prop(AppConstants.META_DATA)
            model.meta["client_name"] = client_name
            callback = task.get_prop(AppConstants.TASK_PROP_CALLBACK)
            if callback:
                try:
                    if callback(model) is False:
                        accepted = False
                except Exception as exc:
                    self.log_exception(
                        fl_ctx,
                        f"callback {getattr(callback, '__qualname__', callback)} for task {task.name} failed: {exc}",
                    )
                    accepted = False
            else:
                task.props[_RESULTS].append(model)
        fl_ctx.set_prop(AppConstants.AGGREGATION_ACCEPTED, accepted, private=True, sticky=False)
        self.fire_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, fl_ctx)
        client_task.result = None  # the FLModel holds what is needed; drop the Shareable

    def _accept_train_result(
        self, client_name: str, result: Shareable, fl_ctx: FLContext, task: Task | None = None
    ) -> bool:
        """Apply the ``ignore_result_error`` policy; return True when the result may be used."""
        rc = result.get_return_code()
        if not rc or rc == ReturnCode.OK:
            return True
        current_round = result.get_header(AppConstants.CURRENT_ROUND, task.get_prop(_ROUND) if task else None)
        if task is None:  # a late or unknown result: always tolerated
            policy: bool | None = True
            failed: set[str] = set()
            num_targets = min_responses = 0
        else:
            policy = self._ignore_result_error
            failed = task.props[_FAILED]
            num_targets, min_responses = task.get_prop(_NUM_TARGETS), task.get_prop(_MIN_RESPONSES)
        ignore = should_ignore_result_error(policy, client_name, failed, num_targets, min_responses)
        message = get_error_handling_message(
            policy, client_name, rc, current_round, type(self).__name__, failed, num_targets, min_responses
        )
        if ignore:
            self.log_warning(fl_ctx, message)
        else:
            self.system_panic(message, fl_ctx)
        return False

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """A late result (its task had ended): logged and not used; an error code never ends the run."""
        if self._accept_train_result(client.name, result, fl_ctx):
            self.log_warning(fl_ctx, f"Ignoring the late result of task {task_name} from {client.name}.")

    # models --------------------------------------------------------------------------------------------
    def load_model(self) -> FLModel:
        """Return the initial model: the persistor's, else fl_ctx ``global_model``, else empty params.

        With a persistor, weights that are empty end the run unless ``allow_empty_global_weights``. Stores the
        model as fl_ctx ``global_model`` and fires INITIAL_MODEL_LOADED.
        """
        model: FLModel | None = None
        if self.persistor:
            self.info("loading initial model from persistor")
            global_weights = self.persistor.load(self.fl_ctx)
            if not isinstance(global_weights, ModelLearnable):
                self.panic(f"Expected the persistor to load a ModelLearnable, got {type(global_weights).__name__}")
                return FLModel(params_type=ParamsType.FULL, params={})
            if global_weights.is_empty() and not self._allow_empty_global_weights:
                from_ctx = self.fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
                if isinstance(from_ctx, ModelLearnable):
                    global_weights = from_ctx
            if not global_weights.is_empty():
                model = FLModel(
                    params_type=ParamsType.FULL,
                    params=global_weights[ModelLearnableKey.WEIGHTS],
                    meta=global_weights.get(ModelLearnableKey.META) or {},
                )
            elif self._allow_empty_global_weights:
                model = FLModel(params_type=ParamsType.FULL, params={})
            else:
                self.panic(
                    f"Neither the persistor {self._persistor_id!r} nor fl_ctx returned a global model; if that is "
                    "intended, set allow_empty_global_weights=True"
                )
                return FLModel(params_type=ParamsType.FULL, params={})
        else:
            self.info("persistor not configured, creating empty initial FLModel")
            model = FLModel(params_type=ParamsType.FULL, params={})
        ml = make_model_learnable(weights=model.params, meta_props=model.meta)
        self.fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, ml, private=True, sticky=True)
        self.event(AppEventType.INITIAL_MODEL_LOADED)
        return model

    def save_model(self, model: FLModel) -> None:
        """Save ``model`` with the persistor (between BEFORE_/AFTER_LEARNABLE_PERSIST); without one, an error log."""
        if self.persistor:
            self.info("Start persist model on server.")
            self.event(AppEventType.BEFORE_LEARNABLE_PERSIST)
            self.persistor.save(make_model_learnable(weights=model.params, meta_props=model.meta), self.fl_ctx)
            self.event(AppEventType.AFTER_LEARNABLE_PERSIST)
            self.info("End persist model on server.")
        else:
            self.error("persistor not configured, model will not be saved")

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        """Return all client names, or a random ``num_clients`` of them (more than there are: an error log, all).

        Raises:
            TypeError, ValueError: ``num_clients`` is not a positive int.
        """
        clients = self._client_names()
        if num_clients:
            if isinstance(num_clients, bool) or not isinstance(num_clients, int):
                raise TypeError(f"num_clients must be an int, got {type(num_clients).__name__}")
            if num_clients < 0:
                raise ValueError(f"num_clients must be > 0, got {num_clients}")
            if num_clients < len(clients):
                random.shuffle(clients)
                clients = clients[:num_clients]
                self.info(f"num_clients ({num_clients}) is less than the available clients: using {clients}")
            elif num_clients > len(clients):
                self.error(
                    f"num_clients ({num_clients}) is greater than the number of available clients "
                    f"({len(clients)}); using all of them: {clients}"
                )
        return clients

    def get_run_dir(self) -> str:
        """Return this site's run folder."""
        return self._workspace().get_run_dir(self.fl_ctx.get_job_id())

    def get_app_dir(self) -> str:
        """Return this site's app folder."""
        return self._workspace().get_app_dir(self.fl_ctx.get_job_id())

    def _workspace(self) -> Any:
        workspace = self.fl_ctx.get_workspace() if self.fl_ctx is not None else None
        if workspace is None and self.engine is not None:
            workspace = self.engine.get_workspace()
        if workspace is None:
            raise RuntimeError(f"{self.name}: no workspace (the controller has not started)")
        return workspace

    def _run_path(self, file_name: str) -> str:
        return os.path.join(self.get_run_dir(), file_name)
