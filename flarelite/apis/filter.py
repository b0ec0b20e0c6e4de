"""Filter: a component that transforms a Shareable on its way into or out of a site (task data, task results).

Where filters run (see ``flarelite.runtime.filters``):

- server, task data (``FilterType.TASK_DATA``), direction out: before a task leaves the server (each client's copy);
- client, task data, in: after the task arrives, before ``execute``;
- client, task result (``FilterType.TASK_RESULT``), out: after ``execute``, before the result is sent;
- server, task result, in: on arrival, before the workflow sees the result.

Place a filter with ``job.to(filter, target, tasks=["train"], filter_type=FilterType.TASK_RESULT)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .fl_component import FLComponent
from .fl_context import FLContext
from .shareable import Shareable


class ContentBlockedException(Exception):
    """Raised by a filter to block the content it was given (the task or result then fails as a filter error)."""


class FilterChainType:
    """The two chains a filter can be part of."""

    TASK_DATA_CHAIN = "task_data"
    TASK_RESULT_CHAIN = "task_result"


class FilterSource:
    """Where a filter was configured: in the job, or by the site (privacy policy)."""

    JOB = "job"
    SITE = "site"


class FilterContextKey:
    """Props set on each filter object when its site loads the configuration (``get_prop`` reads them)."""

    SOURCE = "__source"
    CHAIN_TYPE = "__chain_type"


class Filter(FLComponent, ABC):
    """Transforms a Shareable (task data or a task result) between sites; see the module docstring for where."""

    @abstractmethod
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Return the filtered Shareable (``shareable`` itself, changed, or a new one).

        Parameters:
            shareable: the task data or task result to filter.
            fl_ctx: the site's context; ``FLContextKey.TASK_NAME``/``TASK_ID`` name the task, ``TASK_DATA``
                holds the task data, ``"__filter_dir__"`` is ``"in"`` or ``"out"``.

        Raises:
            ContentBlockedException: the content must not pass; any exception fails the task as a filter error.
        """

    def set_prop(self, key: str, value: Any) -> None:
        """Set attribute ``key`` of this filter to ``value``."""
        setattr(self, key, value)

    def get_prop(self, key: str, default: Any = None) -> Any:
        """Return attribute ``key`` of this filter, or ``default`` when it has none."""
        return getattr(self, key, default)

    def add_to_fed_job(self, job: Any, ctx: Any, filter_type: str | None = None, tasks: list[str] | None = None) -> Any:
        """Add this filter to ``job`` for ``tasks`` (default ``["*"]``: every task) as ``filter_type``.

        Raises:
            ValueError: ``filter_type`` is missing, or ``tasks`` is not a list of task names.
        """
        if not filter_type:
            raise ValueError(
                f"{type(self).__name__}: job.to(filter, target, ...) needs filter_type=FilterType.TASK_DATA "
                "(filters the task data) or filter_type=FilterType.TASK_RESULT (filters the task result); "
                "FilterType is in flarelite.job_config.defs (or `from flarelite import FilterType`)"
            )
        if tasks is None:
            tasks = ["*"]
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(
                f"{type(self).__name__}: tasks must be a non-empty list of task names (or patterns such as '*'), "
                f"got {tasks!r}"
            )
        return job.add_filter(self, filter_type, tasks, ctx)
