"""ScriptRunner: put a Client API training script on client sites (a ClientAPIExecutor plus the script in custom/).

``job.to_clients(ScriptRunner("client.py", script_args="--epochs 1"))`` adds exactly one ``ClientAPIExecutor``
for ``tasks`` (default every task) and copies the script into the app's ``custom/`` folder. In-process (the
default) the site runs the script on a thread of its own process; with ``launch_external_process=True`` it
launches ``command custom/<script> script_args`` in its app folder. No metrics relay is added (BaseFedJob adds
``ConvertToFedEvent``): with a plain FedJob, in-process metrics stay on the client.

flarelite difference: the external command names the script by its base name (``custom/client.py`` for
``"src/client.py"``), which is where the job puts it.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from flarelite.app_common.executors.client_api_executor import ClientAPIExecutor, ExecutionMode
from flarelite.client.config import ExchangeFormat, TransferType
from flarelite.fuel.utils.constants import FrameworkType

__all__ = ["ScriptRunner", "FrameworkType"]

_FORMATS = {
    FrameworkType.PYTORCH: ExchangeFormat.PYTORCH,
    FrameworkType.TENSORFLOW: ExchangeFormat.KERAS_LAYER_WEIGHTS,
    FrameworkType.NUMPY: ExchangeFormat.NUMPY,
    FrameworkType.RAW: ExchangeFormat.RAW,
}


def _argv(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
        return list(value)
    raise ValueError(f"ScriptRunner: {what} must be a str or a list of str, got {value!r}")


class ScriptRunner:
    """A Client API training script for client sites, run in-process or as an external process."""

    def __init__(
        self,
        script: str,
        script_args: str | list[str] = "",
        launch_external_process: bool = False,
        command: str | list[str] = "python3 -u",
        framework: FrameworkType = FrameworkType.PYTORCH,
        server_expected_format: ExchangeFormat = ExchangeFormat.NUMPY,
        params_transfer_type: TransferType = TransferType.FULL,
        launch_once: bool = True,
        launch_timeout: float | None = 300.0,
        shutdown_timeout: float = 0.0,
        memory_gc_rounds: int = 0,
        cuda_empty_cache: bool = False,
        execution_mode: str | None = None,
    ) -> None:
        """Check the arguments and keep them; the executor is built when the runner is added to a job.

        Raises:
            ValueError: an empty script, an unknown framework, ``execution_mode`` other than in_process /
                external_process (attach cannot be selected here), or ``launch_external_process=True`` with
                ``execution_mode="in_process"``.
        """
        if not isinstance(script, str) or not script:
            raise ValueError(f"ScriptRunner: script must be the path of a Python script, got {script!r}")
        if execution_mode is None:
            mode = ExecutionMode.EXTERNAL_PROCESS if launch_external_process else ExecutionMode.IN_PROCESS
        elif execution_mode in (ExecutionMode.IN_PROCESS, ExecutionMode.EXTERNAL_PROCESS):
            if launch_external_process and execution_mode == ExecutionMode.IN_PROCESS:
                raise ValueError(
                    "ScriptRunner: launch_external_process=True conflicts with execution_mode='in_process'"
                )
            mode = execution_mode
        else:
            raise ValueError(
                f"ScriptRunner: execution_mode must be None, 'in_process' or 'external_process', got "
                f"{execution_mode!r} (ScriptRunner cannot select 'attach')"
            )
        try:
            exchange_format = _FORMATS[FrameworkType(framework)]
        except ValueError:
            names = ", ".join(f"FrameworkType.{f.name}" for f in FrameworkType)
            raise ValueError(f"ScriptRunner: framework must be one of {names}, got {framework!r}") from None
        _argv(script_args, "script_args")
        _argv(command, "command")
        self._script = script
        self._script_args = script_args
        self._launch_external_process = launch_external_process
        self._command = command
        self._framework = framework
        self._server_expected_format = server_expected_format
        self._params_transfer_type = params_transfer_type
        self._launch_once = launch_once
        self._launch_timeout = launch_timeout
        self._shutdown_timeout = shutdown_timeout
        self._memory_gc_rounds = memory_gc_rounds
        self._cuda_empty_cache = cuda_empty_cache
        self._execution_mode = execution_mode
        self._mode = mode
        self._params_exchange_format = exchange_format

    def build_executor(self) -> ClientAPIExecutor:
        """Return the ClientAPIExecutor this runner adds (its arguments as NVFlare's ScriptRunner sets them)."""
        common = dict(
            params_exchange_format=self._params_exchange_format,
            server_expected_format=self._server_expected_format,
            params_transfer_type=self._params_transfer_type,
            memory_gc_rounds=self._memory_gc_rounds,
            cuda_empty_cache=self._cuda_empty_cache,
        )
        if self._mode == ExecutionMode.IN_PROCESS:
            args = self._script_args if isinstance(self._script_args, str) else shlex.join(self._script_args)
            return ClientAPIExecutor(
                execution_mode=ExecutionMode.IN_PROCESS, task_script_path=self._script, task_script_args=args, **common
            )
        command = [
            *_argv(self._command, "command"),
            f"custom/{os.path.basename(self._script)}",
            *_argv(self._script_args, "script_args"),
        ]
        return ClientAPIExecutor(
            execution_mode=ExecutionMode.EXTERNAL_PROCESS,
            command=command,
            launch_once=self._launch_once,
            launch_timeout=self._launch_timeout,
            shutdown_timeout=self._shutdown_timeout,
            **common,
        )

    def add_to_fed_job(self, job: Any, ctx: Any, tasks: list[str] | None = None) -> str:
        """Add the executor (for ``tasks``, default ``["*"]``) and the script to ``ctx.target``'s custom/, with the
        modules next to the script that it imports (``from model import Net`` brings ``model.py``)."""
        executor_id = job.add_executor(self.build_executor(), tasks=tasks or ["*"], ctx=ctx)
        job.add_resources([self._script], ctx)
        for module in sibling_modules(self._script):  # a package folder is copied as a folder
            job.add_file_source(module, None, None, ctx)
        return executor_id


def sibling_modules(script: str) -> list[str]:
    """The modules and packages in ``script``'s folder that it imports, directly or through each other."""
    import ast

    folder = os.path.dirname(os.path.abspath(script))
    found: list[str] = []
    todo = [os.path.abspath(script)]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.endswith(".py"):
            continue
        seen.add(path)
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
        except (OSError, SyntaxError, ValueError):
            continue  # the script's own errors show when it runs
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        for name in sorted(names):
            module, package = os.path.join(folder, name + ".py"), os.path.join(folder, name)
            if os.path.isfile(module) and module not in found:
                found.append(module)
                todo.append(module)
            elif os.path.isfile(os.path.join(package, "__init__.py")) and package not in found:
                found.append(package)
    return found
