"""Tasks and the controller contract: Task, ClientTask, TaskCompletionStatus, SendOrder, ControllerSpec."""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

from .client import Client
from .shareable import ReservedHeaderKey, Shareable

if TYPE_CHECKING:
    from .fl_context import FLContext
    from .signal import Signal


class TaskCompletionStatus(Enum):
    """How a task ended."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    CANCELLED = "cancelled"
    ABORTED = "aborted"
    IGNORED = "ignored"
    CLIENT_DEAD = "client_dead"


class SendOrder(Enum):
    """Order in which ``send``/``relay`` try their targets."""

    ANY = "any"
    SEQUENTIAL = "sequential"


class OperatorMethod:
    """Task operator methods."""

    BROADCAST = "bcast"
    RELAY = "relay"


class TaskOperatorKey:
    """Keys of a task operator description."""

    OP_ID = "op_id"
    METHOD = "method"
    NUM_ROUNDS = "num_rounds"
    TIMEOUT = "timeout"
    MIN_TARGETS = "min_targets"
    WAIT_TIME_AFTER_MIN_RESULTS = "wait_time_after_min_results"
    TARGETS = "targets"


class Task:
    """A unit of work the server sends to clients, with optional callbacks and a timeout (0 = none)."""

    def __init__(
        self,
        name: str,
        data: Shareable,
        props: dict | None = None,
        timeout: int = 0,
        before_task_sent_cb: Callable | None = None,
        after_task_sent_cb: Callable | None = None,
        result_received_cb: Callable | None = None,
        task_done_cb: Callable | None = None,
        operator: dict | None = None,
        secure: bool = False,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"Task name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("Task name must not be empty")
        if not isinstance(data, Shareable):
            raise TypeError(f"Task {name!r}: data must be a Shareable, got {type(data).__name__}")
        if props is not None and not isinstance(props, dict):
            raise TypeError(f"Task {name!r}: props must be a dict or None, got {type(props).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"Task {name!r}: timeout must be a number of seconds, got {type(timeout).__name__}")
        if timeout < 0:
            raise ValueError(f"Task {name!r}: timeout must be >= 0 (0 = no timeout), got {timeout!r}")
        for cb_name, cb in (
            ("before_task_sent_cb", before_task_sent_cb),
            ("after_task_sent_cb", after_task_sent_cb),
            ("result_received_cb", result_received_cb),
            ("task_done_cb", task_done_cb),
        ):
            if cb is not None and not callable(cb):
                raise TypeError(f"Task {name!r}: {cb_name} must be callable, got {type(cb).__name__}")
        self.name = name
        self.data = data
        self.props: dict = dict(props) if props else {}
        self.timeout = timeout
        self.before_task_sent_cb = before_task_sent_cb
        self.after_task_sent_cb = after_task_sent_cb
        self.result_received_cb = result_received_cb
        self.task_done_cb = task_done_cb
        self.operator = operator or {}
        self.secure = secure
        self.id = str(uuid.uuid4())
        self.targets: list[str] | None = None
        self.client_tasks: list[ClientTask] = []
        self.last_client_task_map: dict[str, ClientTask] = {}
        self.completion_status: TaskCompletionStatus | None = None
        self.is_standing = False
        self.schedule_time: float | None = None
        self.create_time = time.time()
        self.msg_root_id = self.id
        data.set_header(ReservedHeaderKey.TASK_NAME, name)

    def set_prop(self, key: str, value: Any) -> None:
        """Set a task prop; keys starting with ``__`` are reserved."""
        if key.startswith("__"):
            raise ValueError(f"Task {self.name!r}: prop keys starting with '__' are reserved, got {key!r}")
        self.props[key] = value

    def get_prop(self, key: str, default: Any = None) -> Any:
        """Return a task prop."""
        return self.props.get(key, default)

    def __repr__(self) -> str:
        name, tid = getattr(self, "name", "?"), getattr(self, "id", "?")  # safe on a half-built Task
        return f"Task(name={name!r}, id={tid!r}, status={getattr(self, 'completion_status', None)})"


class ClientTask:
    """One client's share of a task: when it was sent, its result and its props."""

    def __init__(self, client: Client, task: Task) -> None:
        self.client = client
        self.task = task
        self.id = str(uuid.uuid4())
        self.task_send_count = 0
        self.task_sent_time: float | None = None
        self.result_received_time: float | None = None
        self.result: Shareable | None = None
        self.props: dict = {}

    def __repr__(self) -> str:
        rc = self.result.get_return_code() if self.result is not None else None
        return f"ClientTask(client={self.client.name!r}, task={self.task.name!r}, rc={rc})"


class ControllerSpec(ABC):
    """What a workflow controller implements and may call."""

    @abstractmethod
    def start_controller(self, fl_ctx: FLContext) -> None:
        """Called at START_RUN, before ``control_flow``; register server aux handlers here."""

    @abstractmethod
    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """The workflow: runs on its own thread; the run ends when it returns (or raises: the run fails)."""

    @abstractmethod
    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Called when the workflow ends."""

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """Called for a result of a task that is no longer standing (late or unknown)."""
