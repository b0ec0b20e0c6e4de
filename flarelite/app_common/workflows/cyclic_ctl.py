"""CyclicController: cyclic weight transfer with ``relay_and_wait`` (Shareable components, as NVFlare's).

Each round relays one task through the clients in the round's order; each client's result becomes, through the
shareable generator, the task data the next client gets. The last result of a round is the global model.

A result whose return code is not OK ends the workflow (logged); EARLY_TERMINATION ends it quietly when
``allow_early_termination`` is set and is otherwise skipped (the next client gets the model unchanged). A result
that holds no WEIGHTS/WEIGHT_DIFF DXO, or whose values are NaN, not numbers, or shaped unlike the model's, is
skipped the same way (``contribution_check``; NVFlare 2.9.0 passes it on); keys the model lacks are dropped.
``snapshot_every_n_rounds`` is accepted and has no effect (flarelite has no job snapshots).
"""

from __future__ import annotations

import gc
import random

from ...apis.client import Client
from ...apis.controller_spec import ClientTask, Task
from ...apis.dxo import DataKind, from_shareable
from ...apis.fl_constant import ReturnCode
from ...apis.fl_context import FLContext
from ...apis.impl.controller import Controller
from ...apis.shareable import Shareable
from ...apis.signal import Signal
from ..abstract.learnable_persistor import LearnablePersistor
from ..abstract.model import ModelLearnableKey
from ..abstract.shareable_generator import ShareableGenerator
from ..aggregators.contribution_check import check_contribution
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from ..utils.validation_utils import check_int, check_str


class RelayOrder:
    """How the clients are ordered in each round (or pass an explicit list of names)."""

    FIXED = "FIXED"
    RANDOM = "RANDOM"
    RANDOM_WITHOUT_SAME_IN_A_ROW = "RANDOM_WITHOUT_SAME_IN_A_ROW"


SUPPORTED_ORDERS = (RelayOrder.FIXED, RelayOrder.RANDOM, RelayOrder.RANDOM_WITHOUT_SAME_IN_A_ROW)


class CyclicController(Controller):
    """Relays the model through the clients for ``num_rounds`` rounds (see the module docstring).

    Parameters:
        num_rounds: rounds to run.
        task_assignment_timeout: seconds a client may take to pick up its task.
        persistor_id, shareable_generator_id: component ids.
        task_name: the task the clients train on.
        persist_every_n_rounds: save every n rounds (and after the last; 0: only after the last).
        order: FIXED, RANDOM, RANDOM_WITHOUT_SAME_IN_A_ROW, or a list of client names.
        allow_early_termination: let a client end the workflow with EARLY_TERMINATION.
        memory_gc_rounds: ``gc.collect()`` every n rounds (0: never).
    """

    def __init__(
        self,
        num_rounds: int = 5,
        task_assignment_timeout: int = 10,
        persistor_id: str = AppConstants.DEFAULT_PERSISTOR_ID,
        shareable_generator_id: str = AppConstants.DEFAULT_SHAREABLE_GENERATOR_ID,
        task_name: str = AppConstants.TASK_TRAIN,
        task_check_period: float = 0.5,
        persist_every_n_rounds: int = 1,
        snapshot_every_n_rounds: int = 1,
        order: str | list[str] = RelayOrder.FIXED,
        allow_early_termination: bool = False,
        memory_gc_rounds: int = 1,
    ) -> None:
        super().__init__(task_check_period=task_check_period)
        check_int("num_rounds", num_rounds)
        check_int("task_assignment_timeout", task_assignment_timeout)
        check_int("persist_every_n_rounds", persist_every_n_rounds)
        check_int("snapshot_every_n_rounds", snapshot_every_n_rounds)
        check_int("memory_gc_rounds", memory_gc_rounds)
        check_str("persistor_id", persistor_id)
        check_str("shareable_generator_id", shareable_generator_id)
        check_str("task_name", task_name)
        if isinstance(order, list):
            if not order or not all(isinstance(n, str) for n in order):
                raise ValueError(f"order as a list must hold client names, got {order!r}")
        elif order not in SUPPORTED_ORDERS:
            raise ValueError(f"order must be one of {SUPPORTED_ORDERS} or a list of client names, got {order!r}")
        self._num_rounds = num_rounds
        self._start_round = 0
        self._current_round = 0
        self.task_assignment_timeout = task_assignment_timeout
        self.persistor_id = persistor_id
        self.shareable_generator_id = shareable_generator_id
        self.task_name = task_name
        self._persist_every_n_rounds = persist_every_n_rounds
        self._snapshot_every_n_rounds = snapshot_every_n_rounds
        self._order = order
        self._allow_early_termination = allow_early_termination
        self._memory_gc_rounds = memory_gc_rounds
        self.persistor: LearnablePersistor | None = None
        self.shareable_generator: ShareableGenerator | None = None
        self._last_learnable = None
        self._last_client: str | None = None
        self._is_done = False

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Look up the persistor and the generator (wrong types end the run) and load the initial model."""
        engine = fl_ctx.get_engine()
        self.persistor = engine.get_component(self.persistor_id)
        if not isinstance(self.persistor, LearnablePersistor):
            self.system_panic(
                f"persistor {self.persistor_id!r} must be a LearnablePersistor, got {type(self.persistor).__name__}",
                fl_ctx,
            )
            return
        self.shareable_generator = engine.get_component(self.shareable_generator_id)
        if not isinstance(self.shareable_generator, ShareableGenerator):
            self.system_panic(
                f"shareable generator {self.shareable_generator_id!r} must be a ShareableGenerator, got "
                f"{type(self.shareable_generator).__name__}",
                fl_ctx,
            )
            return
        self._last_learnable = self.persistor.load(fl_ctx)
        fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._last_learnable, private=True, sticky=True)
        self.fire_event(AppEventType.INITIAL_MODEL_LOADED, fl_ctx)

    def _get_relay_orders(self, fl_ctx: FLContext) -> list[str] | None:
        clients = [c.name for c in fl_ctx.get_engine().get_clients()]
        if len(clients) <= 1:
            self.system_panic(f"CyclicController needs at least 2 clients, the job has {clients}", fl_ctx)
            return None
        if isinstance(self._order, list):
            unknown = [n for n in self._order if n not in clients]
            if unknown:
                self.system_panic(f"order names unknown clients {unknown}; the job's clients are {clients}", fl_ctx)
                return None
            return list(self._order)
        if self._order == RelayOrder.RANDOM:
            random.shuffle(clients)
        elif self._order == RelayOrder.RANDOM_WITHOUT_SAME_IN_A_ROW:
            random.shuffle(clients)
            if self._last_client is not None and clients[0] == self._last_client:
                swap = random.randrange(1, len(clients))
                clients[0], clients[swap] = clients[swap], clients[0]
        return clients

    def _stop_workflow(self, task: Task) -> None:
        self._is_done = True
        self.cancel_task(task)

    def _make_task_data(self, fl_ctx: FLContext) -> Shareable:
        data = self.shareable_generator.learnable_to_shareable(self._last_learnable, fl_ctx)
        data.set_header(AppConstants.CURRENT_ROUND, self._current_round)
        data.set_header(AppConstants.NUM_ROUNDS, self._num_rounds)
        data.add_cookie(AppConstants.CONTRIBUTION_ROUND, self._current_round)
        return data

    def _process_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        task = client_task.task
        result = client_task.result
        client_name = client_task.client.name
        rc = result.get_return_code()
        if rc == ReturnCode.EARLY_TERMINATION:
            if self._allow_early_termination:
                self.log_info(fl_ctx, f"{client_name} asked for early termination; the workflow stops.")
                self._stop_workflow(task)
            else:
                self.log_warning(fl_ctx, f"{client_name} asked for early termination, which is not allowed; skipped.")
            return
        if rc != ReturnCode.OK:
            self.log_error(fl_ctx, f"{client_name} returned {rc} for task {task.name}; the workflow stops.")
            self._stop_workflow(task)
            return
        problem = self._result_problem(result)
        if problem:
            self.log_warning(fl_ctx, f"the result of {client_name} is not passed on ({problem}); the model stays.")
            client_task.result = None
            return
        self._last_client = client_name
        self._last_learnable = self.shareable_generator.shareable_to_learnable(result, fl_ctx)
        fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._last_learnable, private=True, sticky=True)
        task.data = self._make_task_data(fl_ctx)
        client_task.result = None

    def _result_problem(self, result: Shareable) -> str:
        """Why a client's result cannot become the next model ("" when it can): see ``contribution_check``."""
        try:
            dxo = from_shareable(result)
        except ValueError as exc:
            return str(exc)
        if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            return f"it is a {dxo.data_kind} DXO, not WEIGHTS or WEIGHT_DIFF"
        last = self._last_learnable
        weights = last.get(ModelLearnableKey.WEIGHTS) if isinstance(last, dict) else None
        params, note = check_contribution(dxo.data, weights)
        if params is None:
            return note
        if note:  # keys the model lacks: dropped, as FedAvg drops them
            dxo.data = params
            dxo.update_shareable(result)
        return ""

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Run the rounds; an exception is logged and ends the run."""
        try:
            self.log_info(fl_ctx, "Cyclic starting.")
            self.fire_event(AppEventType.TRAINING_STARTED, fl_ctx)
            fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self._num_rounds, private=True, sticky=True)
            last_round = self._start_round + self._num_rounds - 1
            for self._current_round in range(self._start_round, self._start_round + self._num_rounds):
                if abort_signal.triggered or self._is_done:
                    return
                targets = self._get_relay_orders(fl_ctx)
                if targets is None:
                    return
                self.log_info(fl_ctx, f"Round {self._current_round}: relay on {targets}")
                fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self._current_round, private=True, sticky=True)
                self.fire_event(AppEventType.ROUND_STARTED, fl_ctx)
                task = Task(
                    name=self.task_name, data=self._make_task_data(fl_ctx), result_received_cb=self._process_result
                )
                self.relay_and_wait(
                    task=task,
                    fl_ctx=fl_ctx,
                    targets=targets,
                    task_assignment_timeout=self.task_assignment_timeout,
                    dynamic_targets=False,
                    abort_signal=abort_signal,
                )
                if abort_signal.triggered:
                    return
                fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._last_learnable, private=True, sticky=True)
                n = self._persist_every_n_rounds
                if self._is_done or self._current_round == last_round or (n and (self._current_round + 1) % n == 0):
                    self.fire_event(AppEventType.BEFORE_LEARNABLE_PERSIST, fl_ctx)
                    self.persistor.save(self._last_learnable, fl_ctx)
                    self.fire_event(AppEventType.AFTER_LEARNABLE_PERSIST, fl_ctx)
                self.fire_event(AppEventType.ROUND_DONE, fl_ctx)
                if self._memory_gc_rounds and (self._current_round + 1) % self._memory_gc_rounds == 0:
                    gc.collect()
                if self._is_done:
                    self.log_info(fl_ctx, f"The workflow stopped at round {self._current_round}.")
                    return
            self.log_info(fl_ctx, "Cyclic ended.")
        except Exception as exc:
            message = f"Cyclic control_flow exception: {type(exc).__name__}: {exc}"
            self.log_exception(fl_ctx, message)
            self.system_panic(message, fl_ctx)

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """End the standing tasks."""
        self.cancel_all_tasks(fl_ctx=fl_ctx)

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """A late result is dropped (its round is over)."""
        self.log_warning(fl_ctx, f"Dropped result of unknown task: {task_name} from client {client.name}.")
