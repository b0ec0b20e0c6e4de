"""Controller: the base of server-side workflows; task methods delegate to the runtime's communicator."""

from __future__ import annotations

from abc import ABC
from typing import Any

from ..controller_spec import ControllerSpec, SendOrder, Task, TaskCompletionStatus
from ..fl_component import FLComponent
from ..fl_context import FLContext
from ..signal import Signal
from ..wf_comm_spec import WFCommSpec


class Controller(FLComponent, ControllerSpec, ABC):
    """Base class of workflows: implement start_controller, control_flow and stop_controller.

    ``broadcast_and_wait``, ``send_and_wait`` and ``relay_and_wait`` return None; read the results from
    ``task.client_tasks[i].result`` or in the task's ``result_received_cb``.
    """

    def __init__(self, task_check_period: float = 0.2) -> None:
        super().__init__()
        self.task_check_period = task_check_period
        self.communicator: WFCommSpec | None = None

    def set_communicator(self, communicator: WFCommSpec) -> None:
        """Attach the runtime's task communicator (done by the server before START_RUN)."""
        self.communicator = communicator

    def _comm(self) -> WFCommSpec:
        comm = getattr(self, "communicator", None)
        if comm is None:
            raise RuntimeError(
                f"{self.name}: no task communicator; task methods work only while the controller runs in a "
                "server (e.g. from control_flow), not before the run starts"
            )
        return comm

    @staticmethod
    def _check_targets(targets: Any) -> None:
        if targets is None:
            return
        if not isinstance(targets, list):
            raise TypeError(f"targets must be None or a list of site names or Clients, got {type(targets).__name__}")

    def broadcast(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        min_responses: int = 1,
        wait_time_after_min_received: float = 0,
    ) -> None:
        """Send ``task`` to all ``targets`` (None = all clients) without waiting.

        The task completes when all targets answered, or ``min_responses`` answered and
        ``wait_time_after_min_received`` seconds passed (``min_responses=0`` waits for all), or on its timeout.
        """
        self._check_targets(targets)
        self._comm().broadcast(task, fl_ctx, targets, min_responses, wait_time_after_min_received)

    def broadcast_and_wait(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        min_responses: int = 1,
        wait_time_after_min_received: float = 0,
        abort_signal: Signal | None = None,
    ) -> None:
        """``broadcast`` then wait until the task completes or ``abort_signal`` triggers (task ABORTED)."""
        self.broadcast(task, fl_ctx, targets, min_responses, wait_time_after_min_received)
        self._comm().wait_for_task(task, abort_signal)

    def broadcast_forever(self, task: Task, fl_ctx: FLContext, targets: list | None = None) -> None:
        """Broadcast a task that never completes by itself (until cancelled)."""
        self._check_targets(targets)
        self._comm().broadcast(task, fl_ctx, targets, min_responses=-1, wait_time_after_min_received=0)

    def send(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        send_order: SendOrder = SendOrder.SEQUENTIAL,
        task_assignment_timeout: float = 0,
    ) -> None:
        """Send ``task`` to one of ``targets``: in order (SEQUENTIAL) or to whichever is free first (ANY)."""
        self._check_targets(targets)
        self._comm().send(task, fl_ctx, targets, send_order, task_assignment_timeout)

    def send_and_wait(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        send_order: SendOrder = SendOrder.SEQUENTIAL,
        task_assignment_timeout: float = 0,
        abort_signal: Signal | None = None,
    ) -> None:
        """``send`` then wait until the task completes or ``abort_signal`` triggers."""
        self.send(task, fl_ctx, targets, send_order, task_assignment_timeout)
        self._comm().wait_for_task(task, abort_signal)

    def relay(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        send_order: SendOrder = SendOrder.SEQUENTIAL,
        task_assignment_timeout: float = 0,
        task_result_timeout: float = 0,
        dynamic_targets: bool = True,
    ) -> None:
        """Send ``task`` to each target in turn, the next one after the previous returned its result."""
        self._check_targets(targets)
        self._comm().relay(
            task, fl_ctx, targets, send_order, task_assignment_timeout, task_result_timeout, dynamic_targets
        )

    def relay_and_wait(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        send_order: SendOrder = SendOrder.SEQUENTIAL,
        task_assignment_timeout: float = 0,
        task_result_timeout: float = 0,
        dynamic_targets: bool = True,
        abort_signal: Signal | None = None,
    ) -> None:
        """``relay`` then wait until the task completes or ``abort_signal`` triggers."""
        self.relay(task, fl_ctx, targets, send_order, task_assignment_timeout, task_result_timeout, dynamic_targets)
        self._comm().wait_for_task(task, abort_signal)

    def get_num_standing_tasks(self) -> int:
        """Return how many tasks are scheduled and not yet complete."""
        return self._comm().get_num_standing_tasks()

    def cancel_task(
        self,
        task: Task,
        completion_status: TaskCompletionStatus = TaskCompletionStatus.CANCELLED,
        fl_ctx: FLContext | None = None,
    ) -> None:
        """End ``task`` with ``completion_status`` (clients still executing it are told to abort)."""
        self._comm().cancel_task(task, completion_status, fl_ctx)

    def cancel_all_tasks(
        self, completion_status: TaskCompletionStatus = TaskCompletionStatus.CANCELLED, fl_ctx: FLContext | None = None
    ) -> None:
        """End every standing task."""
        self._comm().cancel_all_tasks(completion_status, fl_ctx)

    def get_client_disconnect_time(self, client_name: str) -> float | None:
        """Return when ``client_name`` was seen disconnected, or None."""
        return self._comm().get_client_disconnect_time(client_name)

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Called at START_RUN; the default does nothing."""

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Called when the workflow ends; the default does nothing."""

    def add_to_fed_job(self, job: Any, ctx: Any, **kwargs: Any) -> Any:
        """Add this controller to ``job`` as a server workflow; returns its id."""
        return job.add_controller(self, ctx=ctx, **kwargs)
