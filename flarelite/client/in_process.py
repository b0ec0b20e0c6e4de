"""The in-process exchange: a training script on a thread of its site's process, talking to its executor.

One task and one result are in flight at a time (one-slot bounded mailboxes under one condition variable);
the task's Shareable and the result's params are handed over by reference, never copied. The executor side
(``offer_task``, ``await_result``, ``abort_task``, ``stop``, ``abort``, ``trainer_ended``) is used by
``flarelite.app_common.executors.client_api.in_process_backend``; the trainer side is ``ClientAPIExchange``.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Callable

from flarelite.apis.shareable import Shareable

from .exchange import ClientAPIExchange, TaskMessage, wait_for_task


class TaskState:
    """Where a task offered by the executor stands (``InProcessExchange.await_result``)."""

    OFFERED = "offered"  # waiting for the trainer's receive()
    TAKEN = "taken"  # the trainer has it
    RESULT = "result"  # its result arrived
    GONE = "gone"  # the trainer ended (returned, crashed or shut down)
    WITHDRAWN = "withdrawn"  # aborted or withdrawn by the executor


class InProcessExchange(ClientAPIExchange):
    """Bounded mailboxes between an executor and the script thread of one site."""

    def __init__(self, config: dict, on_log: Callable[[dict], None]) -> None:
        self._config = config
        self._on_log = on_log
        self._cond = threading.Condition()
        self._offered: TaskMessage | None = None
        self._taken: str | None = None
        self._result: tuple[str, Shareable] | None = None
        self._aborted: set[str] = set()
        self._stop_reason: str | None = None
        self._abort_reason: str | None = None
        self._trainer_done: str | None = None
        self.trainer_crashed = False

    # trainer side -------------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Return a copy of the site's Client API config."""
        return copy.deepcopy(self._config)

    def receive_task(self, timeout: float | None = None) -> TaskMessage | None:
        """Block until the executor offers a task; None when stopping or after ``timeout``."""
        return wait_for_task(
            self._cond,
            timeout,
            self._take,
            lambda: self._abort_reason,
            lambda: self._stop_reason is not None or self._trainer_done is not None,
        )

    def _take(self) -> TaskMessage | None:
        task, self._offered = self._offered, None
        if task is not None:
            self._taken = task.task_id
            self._cond.notify_all()
        return task

    def send_result(self, task_id: str, result: Shareable) -> bool:
        """Hand the result to the executor; False if that task was aborted or the job is stopping."""
        with self._cond:
            if self._taken != task_id or task_id in self._aborted or self._trainer_done is not None:
                return False
            if self._stop_reason is not None or self._abort_reason is not None:
                return False
            self._result = (task_id, result)
            self._taken = None
            self._cond.notify_all()
            return True

    def send_log(self, record: dict) -> None:
        """Hand a metric record to the executor (it validates and logs; nothing is raised here)."""
        self._on_log(record)

    def shutdown(self) -> None:
        """The script is done: later tasks fail at once."""
        self.trainer_ended("the training script called flare.shutdown()", crashed=False)

    def is_stopped(self) -> bool:
        """True once the job is stopping or the trainer is done."""
        with self._cond:
            return self._stop_reason is not None or self._abort_reason is not None or self._trainer_done is not None

    # executor side ------------------------------------------------------------------------------------------
    @property
    def trainer_done(self) -> str | None:
        """Why the trainer is gone (None while it runs)."""
        return self._trainer_done

    def offer_task(self, task: TaskMessage) -> None:
        """Put ``task`` in the mailbox for the trainer's next receive()."""
        with self._cond:
            self._offered = task
            self._result = None
            self._cond.notify_all()

    def _state(self, task_id: str) -> str:
        if self._result is not None and self._result[0] == task_id:
            return TaskState.RESULT
        if self._trainer_done is not None:
            return TaskState.GONE
        if self._offered is not None and self._offered.task_id == task_id:
            return TaskState.OFFERED
        if self._taken == task_id:
            return TaskState.TAKEN
        return TaskState.WITHDRAWN

    def await_result(self, task_id: str, wait: float) -> tuple[str, Shareable | None]:
        """Wait up to ``wait`` seconds for task ``task_id`` to get a result or its trainer to end.

        Returns ``(state, result)``: the ``TaskState`` and, for RESULT, the result (taken out of the mailbox).
        """
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                state = self._state(task_id)
                left = deadline - time.monotonic()
                if state in (TaskState.RESULT, TaskState.GONE, TaskState.WITHDRAWN) or left <= 0:
                    if state == TaskState.RESULT:
                        result = self._result[1]  # type: ignore[index]
                        self._result = None
                        return state, result
                    return state, None
                self._cond.wait(left)

    def abort_task(self, task_id: str) -> None:
        """Withdraw task ``task_id``: the trainer does not get it, or its result is dropped."""
        with self._cond:
            self._aborted.add(task_id)
            if self._offered is not None and self._offered.task_id == task_id:
                self._offered = None
            if self._taken == task_id:
                self._taken = None
            self._cond.notify_all()

    def stop(self, reason: str) -> None:
        """The job is ending: receive() returns None from now on."""
        with self._cond:
            if self._stop_reason is None:
                self._stop_reason = reason
            self._offered = None
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        """The job was aborted: receive() raises from now on."""
        with self._cond:
            if self._abort_reason is None:
                self._abort_reason = reason
            self._offered = None
            self._cond.notify_all()

    def trainer_ended(self, reason: str, crashed: bool) -> None:
        """The script thread returned, raised (``crashed``) or shut down; pending and later tasks fail."""
        with self._cond:
            if self._trainer_done is None:
                self._trainer_done = reason
                self.trainer_crashed = crashed
            self._cond.notify_all()
