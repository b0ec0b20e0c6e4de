"""Executor: the client-side component that executes tasks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .fl_component import FLComponent
from .fl_constant import SiteType
from .fl_context import FLContext
from .shareable import Shareable
from .signal import Signal


class Executor(FLComponent, ABC):
    """Executes the tasks the server sends to a client site."""

    def __init__(self) -> None:
        super().__init__()
        self.unsafe = False

    @abstractmethod
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Execute task ``task_name`` with ``shareable`` as its data and return the result.

        Parameters:
            task_name: the name of the task (as in the server's ``Task``).
            shareable: the task data.
            fl_ctx: the context of this site.
            abort_signal: triggered when the task is cancelled or the run is aborted; check it in long loops.
        """

    def get_job_target_type(self) -> str:
        """Executors are deployed to clients."""
        return SiteType.CLIENT

    def add_to_fed_job(self, job: Any, ctx: Any, **kwargs: Any) -> Any:
        """Add this executor to ``job`` for the tasks in ``kwargs["tasks"]`` (default all tasks)."""
        tasks = kwargs.pop("tasks", None) or ["*"]
        if kwargs:
            raise TypeError(
                f"{self.name}: unexpected arguments for job.to(): {sorted(kwargs)} (only 'tasks' is accepted)"
            )
        return job.add_executor(self, tasks=tasks, ctx=ctx)
