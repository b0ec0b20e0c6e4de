"""The one seam between a training script's Client API and its ClientAPIExecutor: ``ClientAPIExchange``.

The Client API (``flarelite.client.api``) never asks where its executor is. It holds one exchange and calls:

- ``get_config()``: the site's Client API config (site name, job id, the ``TASK_EXCHANGE`` settings);
- ``receive_task(timeout)``: the next task as a ``TaskMessage``, or None once the job is stopping (SHUTDOWN,
  END_RUN, ``shutdown()``) or the timeout passed; ``ExchangeAborted`` (a RuntimeError) if the job was aborted;
- ``send_result(task_id, shareable)``: hand the result of a task back; False when it was dropped (the task was
  aborted meanwhile, or the job is stopping);
- ``send_log(record)``: a metric record ``{"key", "value", "data_type", "kwargs"}``; never raises for a bad
  value (the executor validates and logs);
- ``shutdown()``: this trainer is done for the rest of the job (the executor fails later tasks at once);
- ``is_stopped()``: True once the job is stopping, the trainer shut down or the executor is gone.

Two implementations: ``flarelite.client.in_process.InProcessExchange`` (the script runs on a thread of the site's
process: one-slot bounded mailboxes, no copy of the params) and ``flarelite.client.ex_process.SocketExchange``
(the script is a process of its own: a Unix socket to its site, frames of ``flarelite.client.channel``).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Callable, NamedTuple

from flarelite.apis.shareable import Shareable


class TaskMessage(NamedTuple):
    """A task handed to the trainer: its id (to match the result), its name and its data."""

    task_id: str
    task_name: str
    data: Shareable


class ExchangeAborted(RuntimeError):
    """The job was aborted; the trainer should stop (``flare.receive`` raises it)."""


class ClientAPIExchange(ABC):
    """The trainer side of the channel to a ClientAPIExecutor (see the module docstring for the contract)."""

    @abstractmethod
    def get_config(self) -> dict:
        """Return the site's Client API config: ``{"site_name", "job_id", "TASK_NAME", "TASK_EXCHANGE"}``."""

    @abstractmethod
    def receive_task(self, timeout: float | None = None) -> TaskMessage | None:
        """Block until the next task; None when the job is stopping or ``timeout`` seconds passed.

        Raises:
            ExchangeAborted: the job was aborted.
        """

    @abstractmethod
    def send_result(self, task_id: str, result: Shareable) -> bool:
        """Hand back the result of task ``task_id``; return False if it was dropped (task aborted, job stopping)."""

    @abstractmethod
    def send_log(self, record: dict) -> None:
        """Send one metric record to the executor (dropped with a warning if the exchange is closed)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Tell the executor this trainer is done for the rest of the job, and stop."""

    @abstractmethod
    def is_stopped(self) -> bool:
        """True once the job is stopping, the trainer shut down, or the executor is gone."""


def wait_for_task(
    cond: threading.Condition,
    timeout: float | None,
    take: Callable[[], TaskMessage | None],
    abort_reason: Callable[[], str | None],
    stopping: Callable[[], bool],
) -> TaskMessage | None:
    """The receive loop of both exchanges, under ``cond`` (which every change of their state notifies).

    Returns the task ``take()`` gives, or None once ``stopping()`` or after ``timeout`` seconds.

    Raises:
        ExchangeAborted: ``abort_reason()`` gave a reason (the job was aborted).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with cond:
        while True:
            reason = abort_reason()
            if reason is not None:
                raise ExchangeAborted(f"the job was aborted: {reason}")
            task = take()
            if task is not None:
                return task
            if stopping():
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            cond.wait(left)
