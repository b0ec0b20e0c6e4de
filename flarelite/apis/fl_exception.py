"""Exceptions that components raise to tell the framework how a task or a run went wrong."""

from __future__ import annotations


class TaskExecutionError(Exception):
    """A task cannot be completed (raised by ``FLComponentWrapper.stop_task``)."""
