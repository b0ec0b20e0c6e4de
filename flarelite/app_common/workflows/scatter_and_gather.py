"""ScatterAndGather: the Shareable-based FedAvg of NVFlare (an Aggregator, a ShareableGenerator, a persistor).

Each round the global Learnable becomes the task data (shareable generator), is broadcast to every client,
each result goes to ``aggregator.accept`` (after the ``ignore_result_error`` policy), the aggregate becomes the
new global Learnable, and the persistor saves it.

Differences from NVFlare 2.9.0: ``snapshot_every_n_rounds`` and ``enable_tensor_disk_offload`` are accepted
and have no effect (flarelite has no job snapshots and keeps tensors in memory).
"""

from __future__ import annotations

import gc

from ...apis.client import Client
from ...apis.controller_spec import ClientTask, Task
from ...apis.fl_constant import ReturnCode
from ...apis.fl_context import FLContext
from ...apis.impl.controller import Controller
from ...apis.shareable import Shareable
from ...apis.signal import Signal
from ..abstract.aggregator import Aggregator
from ..abstract.learnable_persistor import LearnablePersistor
from ..abstract.model import ModelLearnable, make_model_learnable
from ..abstract.shareable_generator import ShareableGenerator
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from ..utils.error_handling_utils import get_error_handling_message, should_ignore_result_error
from ..utils.validation_utils import check_int, check_str


class ScatterAndGather(Controller):
    """FedAvg rounds with Shareable components (see the module docstring).

    Parameters:
        min_clients: results to wait for per round (more than there are clients: all of them).
        num_rounds, start_round: the rounds ``start_round .. start_round + num_rounds - 1``.
        wait_time_after_min_received: seconds to wait for more results once ``min_clients`` arrived.
        aggregator_id, persistor_id, shareable_generator_id: component ids (``persistor_id=""``: no persistor,
            the model starts empty).
        train_task_name, train_timeout: the task and its timeout (0: none).
        ignore_result_error: True ignores failed results, False ends the run, None ignores them while
            ``min_clients`` can still be reached.
        allow_empty_global_weights: accept empty weights from the persistor.
        persist_every_n_rounds: save every n rounds (and always after the last; 0: only after the last).
        memory_gc_rounds: ``gc.collect()`` every n rounds (0: never).
    """

    def __init__(
        self,
        min_clients: int = 1000,
        num_rounds: int = 5,
        start_round: int = 0,
        wait_time_after_min_received: int = 10,
        aggregator_id: str = AppConstants.DEFAULT_AGGREGATOR_ID,
        persistor_id: str = "",
        shareable_generator_id: str = AppConstants.DEFAULT_SHAREABLE_GENERATOR_ID,
        train_task_name: str = AppConstants.TASK_TRAIN,
        train_timeout: int = 0,
        ignore_result_error: bool | None = None,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
        persist_every_n_rounds: int = 1,
        snapshot_every_n_rounds: int = 1,
        memory_gc_rounds: int = 1,
        enable_tensor_disk_offload: bool = False,
    ) -> None:
        super().__init__(task_check_period=task_check_period)
        check_int("min_clients", min_clients, 1)
        check_int("num_rounds", num_rounds, 0)
        check_int("start_round", start_round, 0)
        check_int("wait_time_after_min_received", wait_time_after_min_received, 0)
        check_int("train_timeout", train_timeout, 0)
        check_int("persist_every_n_rounds", persist_every_n_rounds, 0)
        check_int("snapshot_every_n_rounds", snapshot_every_n_rounds, 0)
        check_int("memory_gc_rounds", memory_gc_rounds, 0)
        check_str("aggregator_id", aggregator_id)
        check_str("persistor_id", persistor_id)
        check_str("shareable_generator_id", shareable_generator_id)
        check_str("train_task_name", train_task_name)
        if ignore_result_error is not None and not isinstance(ignore_result_error, bool):
            raise TypeError(f"ignore_result_error must be True, False or None, got {ignore_result_error!r}")
        self.aggregator_id = aggregator_id
        self.persistor_id = persistor_id
        self.shareable_generator_id = shareable_generator_id
        self.train_task_name = train_task_name
        self.ignore_result_error = ignore_result_error
        self._min_clients = min_clients
        self._num_rounds = num_rounds
        self._start_round = start_round
        self._wait_time_after_min_received = wait_time_after_min_received
        self._train_timeout = train_timeout
        self._allow_empty_global_weights = allow_empty_global_weights
        self._persist_every_n_rounds = persist_every_n_rounds
        self._snapshot_every_n_rounds = snapshot_every_n_rounds
        self._memory_gc_rounds = memory_gc_rounds
        self._enable_tensor_disk_offload = enable_tensor_disk_offload
        self.aggregator: Aggregator | None = None
        self.persistor: LearnablePersistor | None = None
        self.shareable_gen: ShareableGenerator | None = None
        self._phase = AppConstants.PHASE_INIT
        self._global_weights: ModelLearnable | None = None
        self._current_round: int | None = None
        self._failed_clients: set[str] = set()
        self._round_targets = 0
        self._round_min = 0

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Look up the components and load the initial model (a wrong component type ends the run)."""
        self.log_info(fl_ctx, "Initializing ScatterAndGather workflow.")
        self._phase = AppConstants.PHASE_INIT
        engine = fl_ctx.get_engine()
        self.aggregator = engine.get_component(self.aggregator_id)
        if not isinstance(self.aggregator, Aggregator):
            self.system_panic(
                f"aggregator {self.aggregator_id!r} must be an Aggregator but got {type(self.aggregator).__name__}",
                fl_ctx,
            )
            return
        self.shareable_gen = engine.get_component(self.shareable_generator_id)
        if not isinstance(self.shareable_gen, ShareableGenerator):
            self.system_panic(
                f"shareable generator {self.shareable_generator_id!r} must be a ShareableGenerator but got "
                f"{type(self.shareable_gen).__name__}",
                fl_ctx,
            )
            return
        fl_ctx.set_prop(AppConstants.START_ROUND, self._start_round, private=True, sticky=True)
        fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self._num_rounds, private=True, sticky=True)
        if self.persistor_id:
            self.persistor = engine.get_component(self.persistor_id)
            if not isinstance(self.persistor, LearnablePersistor):
                self.system_panic(
                    f"persistor {self.persistor_id!r} must be a LearnablePersistor but got "
                    f"{type(self.persistor).__name__}",
                    fl_ctx,
                )
                return
            weights = self.persistor.load(fl_ctx)
            if not isinstance(weights, ModelLearnable):
                self.system_panic(
                    f"persistor {self.persistor_id!r} must load a ModelLearnable but returned {type(weights).__name__}",
                    fl_ctx,
                )
                return
            if weights.is_empty() and not self._allow_empty_global_weights:
                weights = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
                if not isinstance(weights, ModelLearnable):
                    self.system_panic(
                        f"neither persistor {self.persistor_id!r} nor fl_ctx gave a global model; set "
                        "allow_empty_global_weights=True if the clients start from scratch",
                        fl_ctx,
                    )
                    return
            self._global_weights = weights
        else:
            self.log_info(fl_ctx, "no persistor: the global model starts as empty weights")
            self._global_weights = make_model_learnable({}, {})
        fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_weights, private=True, sticky=True)
        self.fire_event(AppEventType.INITIAL_MODEL_LOADED, fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Run the rounds; an exception is logged and ends the run."""
        try:
            self._control_flow(abort_signal, fl_ctx)
        except Exception as exc:
            message = f"Exception in ScatterAndGather control_flow: {type(exc).__name__}: {exc}"
            self.log_exception(fl_ctx, message)
            self.system_panic(message, fl_ctx)

    def _control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.log_info(fl_ctx, "Beginning ScatterAndGather training phase.")
        self._phase = AppConstants.PHASE_TRAIN
        fl_ctx.set_prop(AppConstants.PHASE, self._phase, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self._num_rounds, private=True, sticky=True)
        self.fire_event(AppEventType.TRAINING_STARTED, fl_ctx)
        last_round = self._start_round + self._num_rounds - 1
        for self._current_round in range(self._start_round, self._start_round + self._num_rounds):
            if self._aborted(fl_ctx, abort_signal):
                return
            self.log_info(fl_ctx, f"Round {self._current_round} started.")
            fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_weights, private=True, sticky=True)
            fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self._current_round, private=True, sticky=True)
            self.fire_event(AppEventType.ROUND_STARTED, fl_ctx)

            data = self.shareable_gen.learnable_to_shareable(self._global_weights, fl_ctx)
            data.set_header(AppConstants.CURRENT_ROUND, self._current_round)
            data.set_header(AppConstants.NUM_ROUNDS, self._num_rounds)
            data.add_cookie(AppConstants.CONTRIBUTION_ROUND, self._current_round)
            task = Task(
                name=self.train_task_name,
                data=data,
                props={},
                timeout=self._train_timeout,
                before_task_sent_cb=self._prepare_train_task_data,
                result_received_cb=self._process_train_result,
            )
            n_clients = len(fl_ctx.get_engine().get_clients())
            self._failed_clients = set()
            self._round_targets = n_clients
            self._round_min = min(self._min_clients, n_clients)
            self.broadcast_and_wait(
                task=task,
                fl_ctx=fl_ctx,
                min_responses=self._round_min,
                wait_time_after_min_received=self._wait_time_after_min_received,
                abort_signal=abort_signal,
            )
            if self._aborted(fl_ctx, abort_signal):
                return

            self.fire_event(AppEventType.BEFORE_AGGREGATION, fl_ctx)
            aggr_result = self.aggregator.aggregate(fl_ctx)
            fl_ctx.set_prop(AppConstants.AGGREGATION_RESULT, aggr_result, private=True, sticky=False)
            self.fire_event(AppEventType.AFTER_AGGREGATION, fl_ctx)
            if self._aborted(fl_ctx, abort_signal):
                return

            self.fire_event(AppEventType.BEFORE_SHAREABLE_TO_LEARNABLE, fl_ctx)
            self._global_weights = self.shareable_gen.shareable_to_learnable(aggr_result, fl_ctx)
            fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_weights, private=True, sticky=True)
            self.fire_event(AppEventType.AFTER_SHAREABLE_TO_LEARNABLE, fl_ctx)
            if self._aborted(fl_ctx, abort_signal):
                return

            if self.persistor is not None and self._should_persist(last_round):
                self.fire_event(AppEventType.BEFORE_LEARNABLE_PERSIST, fl_ctx)
                self.persistor.save(self._global_weights, fl_ctx)
                self.fire_event(AppEventType.AFTER_LEARNABLE_PERSIST, fl_ctx)

            self.fire_event(AppEventType.ROUND_DONE, fl_ctx)
            self.log_info(fl_ctx, f"Round {self._current_round} finished.")
            self.aggregator.reset(fl_ctx)
            if self._memory_gc_rounds and (self._current_round - self._start_round + 1) % self._memory_gc_rounds == 0:
                gc.collect()
        self._phase = AppConstants.PHASE_FINISHED
        self.log_info(fl_ctx, "Finished ScatterAndGather Training.")

    def _should_persist(self, last_round: int) -> bool:
        if self._current_round == last_round:
            return True
        n = self._persist_every_n_rounds
        return bool(n) and (self._current_round + 1) % n == 0

    def _aborted(self, fl_ctx: FLContext, abort_signal: Signal) -> bool:
        if abort_signal.triggered:
            self._phase = AppConstants.PHASE_FINISHED
            self.log_info(fl_ctx, f"Abort signal received. Exiting at round {self._current_round}.")
            return True
        return False

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """End the standing tasks."""
        self._phase = AppConstants.PHASE_FINISHED
        self.cancel_all_tasks(fl_ctx=fl_ctx)

    def _prepare_train_task_data(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        fl_ctx.set_prop(AppConstants.TRAIN_SHAREABLE, client_task.task.data, private=True, sticky=False)
        self.fire_event(AppEventType.BEFORE_TRAIN_TASK, fl_ctx)

    def _process_train_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        self._accept_train_result(client_task.client.name, client_task.result, fl_ctx)
        client_task.result = None

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """A late result of this round's train task still goes to the aggregator; others are logged."""
        if self._phase == AppConstants.PHASE_TRAIN and task_name == self.train_task_name:
            self._accept_train_result(client.name, result, fl_ctx, late=True)
            self.log_info(fl_ctx, f"Result of unknown task {task_name} sent to aggregator.")
        else:
            self.log_error(fl_ctx, f"Ignoring the result of unknown task {task_name} from {client.name}.")

    def _accept_train_result(self, client_name: str, result: Shareable, fl_ctx: FLContext, late: bool = False) -> bool:
        rc = result.get_return_code()
        contribution_round = result.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        result.set_header(AppConstants.CONTRIBUTION_ROUND, contribution_round)
        if rc and rc != ReturnCode.OK:
            policy = True if late else self.ignore_result_error
            ignore = should_ignore_result_error(
                policy, client_name, self._failed_clients, self._round_targets, self._round_min
            )
            message = get_error_handling_message(
                policy,
                client_name,
                rc,
                self._current_round,
                type(self).__name__,
                self._failed_clients,
                self._round_targets,
                self._round_min,
            )
            if ignore:
                self.log_warning(fl_ctx, message)
            else:
                self.system_panic(message, fl_ctx)
            return False
        fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self._current_round, private=True, sticky=True)
        fl_ctx.set_prop(AppConstants.TRAINING_RESULT, result, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.CONTRIBUTION_ROUND, contribution_round, private=True, sticky=False)
        self.fire_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)
        accepted = self.aggregator.accept(result, fl_ctx)
        self.log_info(
            fl_ctx,
            f"Contribution from {client_name} {'ACCEPTED' if accepted else 'REJECTED'} by the aggregator at round "
            f"{self._current_round}.",
        )
        fl_ctx.set_prop(AppConstants.AGGREGATION_ACCEPTED, accepted, private=True, sticky=False)
        self.fire_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, fl_ctx)
        return accepted
