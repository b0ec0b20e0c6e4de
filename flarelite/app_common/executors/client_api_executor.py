"""ClientAPIExecutor: runs a Client API training script for a client site, in its process or as a process of its own.

The one executor behind ``ScriptRunner`` (NVFlare 2.9.0 removed the older launcher executors and pipes). It is
an ordinary Executor: the backend starts at START_RUN (a failure ends the run with ``system_panic``), ABORT_TASK
is forwarded to the trainer, END_RUN stops it. ``execute`` never raises: a missing backend, an exception or a
non-Shareable result becomes a reply with ``EXECUTION_EXCEPTION``.

- ``execution_mode="in_process"``: ``task_script_path`` (in the app's ``custom/``) runs once per job on a thread
  of the site (``client_api.in_process_backend``).
- ``execution_mode="external_process"``: ``command`` runs shell-free in the site's app folder and talks to the
  site over a private Unix socket (``client_api.external_process_backend``).
- ``execution_mode="attach"`` (a trainer started independently): not supported by flarelite (ValueError).

Metrics the script logs become analytics events: the local event ``analytix_log_stats`` in-process (a
``ConvertToFedEvent`` widget forwards it), the federated event ``fed.analytix_log_stats`` from an external process.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import FLContextKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from flarelite.apis.signal import Signal
from flarelite.client.config import ExchangeFormat, TransferType
from flarelite.client.converter_utils import check_format_pair

from .client_api.backend import ClientAPIBackend


class ExecutionMode:
    """Where the training script runs."""

    IN_PROCESS = "in_process"
    EXTERNAL_PROCESS = "external_process"
    ATTACH = "attach"


_MODES = (ExecutionMode.IN_PROCESS, ExecutionMode.EXTERNAL_PROCESS, ExecutionMode.ATTACH)
_LAUNCH_DEFAULTS = {"launch_once": True, "launch_timeout": 300.0, "shutdown_timeout": None, "stop_grace_period": 30.0}
_HEARTBEAT_DEFAULTS = {"heartbeat_interval": 5.0, "heartbeat_timeout": 30.0}
_ATTACH_DEFAULTS = {"attach_id": None, "attach_timeout": None, "allow_reconnect": False, "allow_insecure_attach": False}


def _seconds(name: str, value: Any, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        what = "a finite number of seconds >= 0" + (" or None" if allow_none else "")
        raise ValueError(f"ClientAPIExecutor: {name} must be {what}, got {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"ClientAPIExecutor: {name} must be True or False, got {value!r}")
    return value


def _task_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"ClientAPIExecutor: {name} must be a non-empty task name, got {value!r}")
    return value


def _argv(command: Any) -> list[str]:
    if isinstance(command, str):
        argv = shlex.split(command)
    elif isinstance(command, (list, tuple)) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise ValueError(f"ClientAPIExecutor: command must be a str or a list of str, got {command!r}")
    if not argv:
        raise ValueError("ClientAPIExecutor: command is empty; give the program to run, e.g. 'python3 -u custom/x.py'")
    return argv


class ClientAPIExecutor(Executor):
    """Runs a Client API training script and hands it the site's tasks (see the module docstring)."""

    def __init__(
        self,
        execution_mode: str,
        command: str | list[str] | None = None,
        task_script_path: str | None = None,
        task_script_args: str = "",
        launch_once: bool = True,
        launch_timeout: float | None = 300.0,
        shutdown_timeout: float | None = None,
        stop_grace_period: float = 30.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 30.0,
        task_wait_timeout: float | None = None,
        result_wait_timeout: float | None = None,
        train_task_name: str = "train",
        evaluate_task_name: str = "validate",
        submit_model_task_name: str = "submit_model",
        train_with_evaluation: bool = False,
        params_exchange_format: ExchangeFormat = ExchangeFormat.RAW,
        server_expected_format: ExchangeFormat = ExchangeFormat.NUMPY,
        params_transfer_type: TransferType = TransferType.FULL,
        memory_gc_rounds: int = 0,
        cuda_empty_cache: bool = False,
        attach_id: str | None = None,
        attach_timeout: float | None = None,
        allow_reconnect: bool = False,
        allow_insecure_attach: bool = False,
    ) -> None:
        """Check the settings (they must fit the mode) and keep them; the trainer starts at START_RUN.

        Raises:
            ValueError: an unknown or unsupported mode, a setting of another mode changed from its default, a
                missing ``command`` (external_process) or ``task_script_path`` (in_process), an invalid timeout,
                ``0 < heartbeat_timeout <= heartbeat_interval``, or an unsupported format pair.
        """
        super().__init__()
        if execution_mode not in _MODES:
            raise ValueError(f"ClientAPIExecutor: execution_mode must be one of {list(_MODES)}, got {execution_mode!r}")
        if execution_mode == ExecutionMode.ATTACH:
            raise ValueError(
                "ClientAPIExecutor: execution_mode 'attach' (a trainer started independently of the site) is not "
                "supported by flarelite; use 'in_process' or 'external_process' (ScriptRunner cannot select it either)"
            )
        given = dict(locals())
        for name, default in _ATTACH_DEFAULTS.items():
            if given[name] != default:
                raise ValueError(f"ClientAPIExecutor: {name} is a setting of execution_mode 'attach' only")
        if execution_mode == ExecutionMode.EXTERNAL_PROCESS:
            if command is None:
                raise ValueError("ClientAPIExecutor: execution_mode 'external_process' needs a command")
            self._argv = _argv(command)
            if task_script_path is not None or task_script_args != "":
                raise ValueError(
                    "ClientAPIExecutor: task_script_path and task_script_args are for execution_mode 'in_process'; "
                    "in 'external_process' the script and its arguments are part of command"
                )
        else:
            if command is not None:
                raise ValueError("ClientAPIExecutor: command is for execution_mode 'external_process' only")
            if not isinstance(task_script_path, str) or not task_script_path:
                raise ValueError("ClientAPIExecutor: execution_mode 'in_process' needs task_script_path (the script)")
            if not isinstance(task_script_args, str):
                raise ValueError(f"ClientAPIExecutor: task_script_args must be a str, got {task_script_args!r}")
            self._argv = []
            for group, what in ((_LAUNCH_DEFAULTS, "external_process"), (_HEARTBEAT_DEFAULTS, "external_process")):
                for name, default in group.items():
                    if given[name] != default:
                        raise ValueError(
                            f"ClientAPIExecutor: {name} is a setting of execution_mode '{what}'; it cannot be "
                            "changed in 'in_process'"
                        )
        self.execution_mode = execution_mode
        self.command = command
        self.task_script_path = task_script_path
        self.task_script_args = task_script_args
        self.launch_once = _flag("launch_once", launch_once)
        self.launch_timeout = _seconds("launch_timeout", launch_timeout, True)
        self.shutdown_timeout = _seconds("shutdown_timeout", shutdown_timeout, True)
        self.stop_grace_period = _seconds("stop_grace_period", stop_grace_period, False)
        self.heartbeat_interval = _seconds("heartbeat_interval", heartbeat_interval, False)
        self.heartbeat_timeout = _seconds("heartbeat_timeout", heartbeat_timeout, False)
        if not self.heartbeat_interval:
            raise ValueError("ClientAPIExecutor: heartbeat_interval must be > 0 seconds")
        if 0 < self.heartbeat_timeout <= self.heartbeat_interval:  # type: ignore[operator]
            raise ValueError(
                f"ClientAPIExecutor: heartbeat_timeout ({heartbeat_timeout}) must be longer than heartbeat_interval "
                f"({heartbeat_interval}), or 0 to disable it"
            )
        self.task_wait_timeout = _seconds("task_wait_timeout", task_wait_timeout, True)
        self.result_wait_timeout = _seconds("result_wait_timeout", result_wait_timeout, True)
        self.train_task_name = _task_name("train_task_name", train_task_name)
        self.evaluate_task_name = _task_name("evaluate_task_name", evaluate_task_name)
        self.submit_model_task_name = _task_name("submit_model_task_name", submit_model_task_name)
        self.train_with_evaluation = _flag("train_with_evaluation", train_with_evaluation)
        self.params_exchange_format, self.server_expected_format = check_format_pair(
            params_exchange_format, server_expected_format
        )
        try:
            self.params_transfer_type = TransferType(params_transfer_type)
        except ValueError:
            raise ValueError(
                "ClientAPIExecutor: params_transfer_type must be TransferType.FULL or TransferType.DIFF, "
                f"got {params_transfer_type!r}"
            ) from None
        if isinstance(memory_gc_rounds, bool) or not isinstance(memory_gc_rounds, int) or memory_gc_rounds < 0:
            raise ValueError(f"ClientAPIExecutor: memory_gc_rounds must be an int >= 0, got {memory_gc_rounds!r}")
        self.memory_gc_rounds = memory_gc_rounds
        self.cuda_empty_cache = _flag("cuda_empty_cache", cuda_empty_cache)
        self.attach_id = attach_id
        self.attach_timeout = attach_timeout
        self.allow_reconnect = allow_reconnect
        self.allow_insecure_attach = allow_insecure_attach
        self._backend: ClientAPIBackend | None = None

    @property
    def argv(self) -> list[str]:
        """The command as an argv list (external_process)."""
        return list(self._argv)

    def _make_backend(self) -> ClientAPIBackend:
        if self.execution_mode == ExecutionMode.IN_PROCESS:
            from .client_api.in_process_backend import InProcessBackend

            return InProcessBackend(self)
        from .client_api.external_process_backend import ExternalProcessBackend

        return ExternalProcessBackend(self)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """START_RUN starts the trainer, ABORT_TASK is forwarded to it, END_RUN stops it."""
        if event_type == EventType.START_RUN:
            backend = self._make_backend()
            try:
                backend.initialize(fl_ctx)
            except Exception as exc:
                self.log_exception(fl_ctx, f"cannot start the training script: {exc}")
                self.system_panic(f"{type(self).__name__} cannot start the training script: {exc}", fl_ctx)
                try:
                    backend.finalize(fl_ctx)
                except Exception as err:
                    self.log_exception(fl_ctx, f"cleaning up after the failed start: {err!r}")
                return
            self._backend = backend
        elif event_type == EventType.ABORT_TASK:
            if self._backend is not None:
                self._backend.abort_task(fl_ctx.get_prop(FLContextKey.TASK_ID))
        elif event_type == EventType.END_RUN:
            backend, self._backend = self._backend, None
            if backend is not None:
                backend.finalize(fl_ctx)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Hand the task to the training script and return its result (never raises)."""
        backend = self._backend
        if backend is None:
            message = f"task {task_name!r}: no training script is running (it failed to start, or the run is ending)"
            self.log_error(fl_ctx, message, fire_event=False)
            return make_reply(ReturnCode.EXECUTION_EXCEPTION, {ReservedHeaderKey.ERROR: message})
        try:
            result = backend.execute(task_name, shareable, fl_ctx, abort_signal)
        except Exception as exc:
            self.log_exception(fl_ctx, f"task {task_name!r} failed: {exc!r}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION, {ReservedHeaderKey.ERROR: repr(exc)})
        if not isinstance(result, Shareable):
            message = f"task {task_name!r}: the backend returned {type(result).__name__}, not a Shareable"
            self.log_error(fl_ctx, message, fire_event=False)
            return make_reply(ReturnCode.EXECUTION_EXCEPTION, {ReservedHeaderKey.ERROR: message})
        return result
