"""The task-communication contract a Controller delegates to (implemented by the runtime)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from .controller_spec import SendOrder, TaskCompletionStatus

if TYPE_CHECKING:
    from .controller_spec import Task
    from .fl_context import FLContext
    from .signal import Signal


class WFCommSpec(ABC):
    """Schedules tasks on client sites and tracks them until they complete."""

    @abstractmethod
    def broadcast(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        min_responses: int = 1,
        wait_time_after_min_received: float = 0,
    ) -> None:
        """Schedule ``task`` on every target at once."""

    @abstractmethod
    def send(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: list | None = None,
        send_order: SendOrder = SendOrder.SEQUENTIAL,
        task_assignment_timeout: float = 0,
    ) -> None:
        """Schedule ``task`` on one of the targets (the first that takes it)."""

    @abstractmethod
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
        """Schedule ``task`` on the targets one after another."""

    @abstractmethod
    def wait_for_task(self, task: Task, abort_signal: Signal | None) -> None:
        """Block until ``task`` completes (or ``abort_signal`` triggers: the task is then cancelled)."""

    @abstractmethod
    def cancel_task(
        self,
        task: Task,
        completion_status: TaskCompletionStatus = TaskCompletionStatus.CANCELLED,
        fl_ctx: FLContext | None = None,
    ) -> None:
        """End ``task`` with ``completion_status``."""

    @abstractmethod
    def cancel_all_tasks(
        self, completion_status: TaskCompletionStatus = TaskCompletionStatus.CANCELLED, fl_ctx: FLContext | None = None
    ) -> None:
        """End every standing task."""

    @abstractmethod
    def get_num_standing_tasks(self) -> int:
        """Return how many tasks are scheduled and not yet complete."""

    @abstractmethod
    def get_client_disconnect_time(self, client_name: str) -> float | None:
        """Return when ``client_name`` was seen disconnected, or None if it is connected."""
