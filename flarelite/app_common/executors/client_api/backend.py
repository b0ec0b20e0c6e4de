"""What the ClientAPIExecutor's backends share: the task envelope, replies, metric records, the script's output."""

from __future__ import annotations

import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable

from flarelite import logsafe
from flarelite.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsDataType, LogWriterName
from flarelite.apis.fl_component import FED_EVENT_PREFIX, generate_log_prefix
from flarelite.apis.fl_constant import FLContextKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from flarelite.apis.signal import Signal
from flarelite.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo
from flarelite.app_common.app_constant import AppConstants
from flarelite.client.config import ConfigKey
from flarelite.client.exchange import TaskMessage

if TYPE_CHECKING:
    from ..client_api_executor import ClientAPIExecutor

POLL_INTERVAL = 0.2  # how often a waiting task looks at its abort signal (results wake it at once)


class TaskClock:
    """A task in flight waits ``task_wait_timeout`` for the script to take it, then ``result_wait_timeout``."""

    def __init__(self, executor: ClientAPIExecutor, task_name: str, hint: Callable[[], str] | None = None) -> None:
        self.task_name = task_name
        self.hint = hint  # what to add when the script never took the task (asked when it is said)
        self.task_wait = executor.task_wait_timeout
        self.result_wait = executor.result_wait_timeout
        self.sent_at = time.monotonic()
        self.taken_at: float | None = None

    def overdue(self, taken: bool) -> str | None:
        """The failure message once the wait the task is in ran out; None while there is time."""
        now = time.monotonic()
        if not taken:
            if self.task_wait is not None and now - self.sent_at > self.task_wait:
                return (
                    f"the training script did not take task {self.task_name!r} within {self.task_wait}s "
                    f"(task_wait_timeout){self._hint()}"
                )
            return None
        self.taken_at = self.taken_at or now
        if self.result_wait is not None and now - self.taken_at > self.result_wait:
            return (
                f"the training script sent no result for task {self.task_name!r} within {self.result_wait}s "
                "(result_wait_timeout); the task was aborted"
            )
        return None

    def aborted(self, taken: bool) -> str:
        """The message for the task aborted while in flight (a hint when the script never took it)."""
        if taken:
            return f"task {self.task_name!r} was aborted"
        return f"task {self.task_name!r} was aborted before the training script took it{self._hint()}"

    def _hint(self) -> str:
        return self.hint() if self.hint is not None else ""


class ClientAPIBackend(ABC):
    """Runs the training script of one ClientAPIExecutor and moves its tasks, results and metrics."""

    def __init__(self, executor: ClientAPIExecutor) -> None:
        self.executor = executor
        self.engine: Any = None
        self.site_name = ""
        self.job_id = ""
        self.prefix = ""
        self.script_label = "script"
        self._output_logger = logging.getLogger(type(executor).__name__)
        self._dropped_log = logsafe.RateLimit()

    # lifecycle ---------------------------------------------------------------------------------------------
    def bind(self, fl_ctx: FLContext) -> None:
        """Take the site's engine, names and log context from the START_RUN context."""
        self.engine = fl_ctx.get_engine()
        self.site_name = fl_ctx.get_identity_name()
        self.job_id = str(fl_ctx.get_job_id() or "")
        self.prefix = generate_log_prefix(fl_ctx)

    @abstractmethod
    def initialize(self, fl_ctx: FLContext) -> None:
        """Start what the backend needs at START_RUN (raise to fail the run)."""

    @abstractmethod
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Hand the task to the trainer and return its result (or a reply with the failure's return code)."""

    @abstractmethod
    def abort_task(self, task_id: str | None) -> None:
        """The server aborted task ``task_id``: tell the trainer to drop it."""

    @abstractmethod
    def finalize(self, fl_ctx: FLContext) -> None:
        """Stop the trainer at END_RUN (never leaves a process or thread of its own behind it)."""

    # shared pieces -----------------------------------------------------------------------------------------
    def new_context(self) -> FLContext:
        """A fresh FLContext of this site (for work done on the backend's own threads)."""
        return self.engine.new_context() if self.engine is not None else FLContext()

    def client_config(self) -> dict:
        """The Client API config the trainer gets (``get_config()`` in the script)."""
        ex = self.executor
        exchange = {
            ConfigKey.TRAIN_WITH_EVAL: ex.train_with_evaluation,
            ConfigKey.EXCHANGE_FORMAT: ex.params_exchange_format,
            ConfigKey.SERVER_EXPECTED_FORMAT: ex.server_expected_format,
            ConfigKey.TRANSFER_TYPE: ex.params_transfer_type,
            ConfigKey.TRAIN_TASK_NAME: ex.train_task_name,
            ConfigKey.EVAL_TASK_NAME: ex.evaluate_task_name,
            ConfigKey.SUBMIT_MODEL_TASK_NAME: ex.submit_model_task_name,
        }
        if ex.memory_gc_rounds:
            exchange[ConfigKey.MEMORY_GC_ROUNDS] = ex.memory_gc_rounds
        if ex.cuda_empty_cache:
            exchange[ConfigKey.CUDA_EMPTY_CACHE] = True
        return {
            "site_name": self.site_name,
            "job_id": self.job_id,
            ConfigKey.TASK_NAME: None,
            ConfigKey.TASK_EXCHANGE: exchange,
        }

    def task_message(self, task_name: str, shareable: Shareable, fl_ctx: FLContext) -> TaskMessage:
        """The task as the trainer gets it: ``job_id`` and ``site_name`` headers set, with the task's id."""
        shareable.set_header("job_id", self.job_id)
        shareable.set_header("site_name", self.site_name)
        task_id = fl_ctx.get_prop(FLContextKey.TASK_ID) or shareable.get_header(ReservedHeaderKey.TASK_ID)
        return TaskMessage(str(task_id or uuid.uuid4()), task_name, shareable)

    @staticmethod
    def finish_result(result: Any, task_data: Shareable) -> Shareable:
        """The trainer's result as the executor returns it (the task's ``current_round`` copied onto it)."""
        if not isinstance(result, Shareable):
            return make_reply(
                ReturnCode.EXECUTION_EXCEPTION,
                {ReservedHeaderKey.ERROR: f"the training script's result is {type(result).__name__}, not a Shareable"},
            )
        current_round = task_data.get_header(AppConstants.CURRENT_ROUND)
        if current_round is not None and result.get_header(AppConstants.CURRENT_ROUND) is None:
            result.set_header(AppConstants.CURRENT_ROUND, current_round)
        return result

    def fail(self, rc: str, message: str, fl_ctx: FLContext | None, error: bool = True) -> Shareable:
        """Log ``message`` and return a reply with ``rc`` and the message as its error header."""
        if error:
            self.executor.log_error(fl_ctx, message, fire_event=False)
        else:
            self.executor.log_warning(fl_ctx, message, fire_event=False)
        return make_reply(rc, {ReservedHeaderKey.ERROR: message})

    def script_output(self, line: str, level: int = logging.INFO, stream: str = "") -> None:
        """Write one line the script printed to the site log, with the site context."""
        label = f"{self.script_label} ({stream})" if stream else self.script_label
        text = f"{self.prefix} - {label}: {line}" if self.prefix else f"{label}: {line}"
        self._output_logger.log(level, text, extra={"site": self.site_name} if self.site_name else None)

    def handle_log(self, record: Any, federated: bool) -> None:
        """Turn a metric record of the script into an analytics event; bad records are logged (rate-limited per
        metric key), never raised.

        In-process the local event ``analytix_log_stats`` is fired (ConvertToFedEvent forwards it); from an
        external process the federated event ``fed.analytix_log_stats`` is fired directly.
        """
        key = record.get("key") if isinstance(record, dict) else None
        try:
            if not isinstance(record, dict):
                raise TypeError(f"a metric record must be a dict, got {type(record).__name__}")
            kwargs = dict(record.get("kwargs") or {})
            if not all(isinstance(k, str) for k in kwargs):
                raise TypeError("metric kwargs must have str keys")
            writer = LogWriterName(kwargs.pop("writer", LogWriterName.TORCH_TB))
            data_type = AnalyticsDataType(record.get("data_type"))
            dxo = create_analytic_dxo(key, record.get("value"), data_type, writer=writer, **kwargs)
        except Exception as exc:  # whatever the script sent: reported here, never raised in the script
            said = self._dropped_log.check(f"{key!r:.200}")
            if said is not None:  # once per metric key every 10 s, with how many were dropped meanwhile
                more = f" ({said[0]} more records of it dropped since)" if said[0] else ""
                message = f"metric {key!r} from the training script dropped: {exc}{more}"
                self.executor.log_error(self.new_context(), message, fire_event=False)
            return
        fl_ctx = self.new_context()
        try:
            if federated:
                send_analytic_dxo(
                    self.executor, dxo, fl_ctx, event_type=FED_EVENT_PREFIX + ANALYTIC_EVENT_TYPE, fire_fed_event=True
                )
            else:
                send_analytic_dxo(self.executor, dxo, fl_ctx, event_type=ANALYTIC_EVENT_TYPE)
        except Exception as exc:
            self.executor.log_exception(fl_ctx, f"could not fire the analytics event for metric {key!r}: {exc!r}")


def script_name(path: str) -> str:
    """The file name a log line names the script by."""
    return os.path.basename(path) or path
