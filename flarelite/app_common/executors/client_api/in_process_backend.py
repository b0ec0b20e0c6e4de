"""In-process mode: the training script runs once per job on a daemon thread of the site's process.

At START_RUN the script (looked up in the app's ``custom/`` folder; absolute paths as they are, else by base
name in ``custom/``) starts with ``runpy.run_path(path, run_name="__main__")`` and ``sys.argv`` set to
``[script path] + args`` (args split like a shell does). The script thread is bound to this site
(``flarelite.client.thread_binding``): its ``flare.init()`` finds this executor, its prints and log records
(and those of threads it starts) go to this site's log.

Process-wide state is shared by every in-process site of a process: ``sys.argv`` is set under a lock while a
script starts (the lock is held until the script calls ``flare.init()``, or for at most ``ARGV_HOLD`` seconds,
so a script that parses its arguments before ``init`` sees its own); a script that reads ``sys.argv`` later may
see another site's. ``sys.argv`` and ``sys.modules["__main__"]`` are put back when the last script of the
process ends.

Failures: the script raises -> the current task is TASK_ABORTED and later tasks EXECUTION_EXCEPTION; the script
returns (or calls ``flare.shutdown()``) -> a task in flight and later tasks EXECUTION_EXCEPTION; the thread is
never restarted within the job. A script that raised (or exited with a non-zero status) without any task reply
saying so, e.g. after its last result, ends the run as failed at END_RUN (``system_panic``): a crashed script is
never reported as a success. END_RUN stops the script (``receive`` returns None; on an aborted run it
raises) and waits up to ``JOIN_TIMEOUT`` seconds for its thread.
"""

from __future__ import annotations

import os
import runpy
import shlex
import sys
import threading
from typing import Any

from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal
from flarelite.client.in_process import InProcessExchange, TaskState
from flarelite.client.thread_binding import SiteBinding, bind_thread, flush_output, register, unregister

from .backend import POLL_INTERVAL, ClientAPIBackend, TaskClock, script_name

JOIN_TIMEOUT = 30.0
ARGV_HOLD = 30.0

_argv_lock = threading.Lock()  # held while a script starts with its sys.argv
_state_lock = threading.Lock()
_running = 0
_saved: tuple[list[str], Any] | None = None  # (sys.argv, sys.modules["__main__"]) before the first script


def resolve_script(path: str, workspace: Any) -> str:
    """Return the full path of the training script ``path`` (in the app's custom/ folder unless absolute).

    Raises:
        ValueError: the script is not there (the message names the path and the custom folder).
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"task_script_path must be the path of a Python script, got {path!r}")
    try:
        custom = workspace.get_app_custom_dir()
    except (AttributeError, RuntimeError) as exc:
        if os.path.isabs(path) and os.path.isfile(path):
            return path
        raise ValueError(f"training script {path!r} not found: the site has no app folder ({exc})") from exc
    candidates = [path] if os.path.isabs(path) else [os.path.join(custom, path)]
    candidates.append(os.path.join(custom, os.path.basename(path)))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ValueError(
        f"training script {path!r} not found: looked for {' and '.join(dict.fromkeys(candidates))} "
        f"(the app's custom folder is {custom}); add the script to the job (ScriptRunner does) or fix the path"
    )


def _script_started() -> None:
    global _running, _saved
    with _state_lock:
        if _running == 0:
            _saved = (sys.argv, sys.modules.get("__main__"))
        _running += 1


def _script_ended() -> None:
    global _running, _saved
    with _state_lock:
        _running -= 1
        if _running == 0 and _saved is not None:
            sys.argv = _saved[0]
            if _saved[1] is not None:
                sys.modules["__main__"] = _saved[1]
            _saved = None


class InProcessBackend(ClientAPIBackend):
    """Runs the script on a thread of this process; tasks and results go through an InProcessExchange."""

    def __init__(self, executor: Any) -> None:
        super().__init__(executor)
        self.exchange: InProcessExchange | None = None
        self.binding: SiteBinding | None = None
        self.thread: threading.Thread | None = None
        self.script_path = ""
        self._reported = False  # a task's reply already carried the script's failure

    def initialize(self, fl_ctx: FLContext) -> None:
        """Find the script and start its thread."""
        self.bind(fl_ctx)
        ex = self.executor
        self.script_path = resolve_script(ex.task_script_path, fl_ctx.get_workspace())
        self.script_label = script_name(self.script_path)
        argv = [self.script_path, *shlex.split(ex.task_script_args or "")]
        self.exchange = InProcessExchange(self.client_config(), lambda record: self.handle_log(record, False))
        self.binding = SiteBinding(self.site_name, self.job_id, self.exchange, self.script_output)
        register(self.binding)
        self.thread = threading.Thread(target=self._run, args=(argv,), name=f"{self.site_name}-script", daemon=True)
        bind_thread(self.binding, self.thread)
        self.thread.start()
        ex.log_info(fl_ctx, f"started the training script {self.script_path} in-process (args {argv[1:]})")

    def _run(self, argv: list[str]) -> None:
        exchange, binding = self.exchange, self.binding
        assert exchange is not None and binding is not None
        name = self.script_label
        crashed, reason = False, f"the training script {name} returned"
        _script_started()
        _argv_lock.acquire()

        def release() -> None:  # once the script called flare.init() (it has parsed its arguments), or later
            binding.initialized.wait(ARGV_HOLD)
            _argv_lock.release()

        threading.Thread(target=release, name=f"{self.site_name}-script-argv", daemon=True).start()
        try:
            sys.argv = list(argv)
            folder = os.path.dirname(self.script_path)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            runpy.run_path(self.script_path, run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                crashed, reason = True, f"the training script {name} exited with status {exc.code}"
            else:
                reason = f"the training script {name} exited (status 0)"
        except BaseException as exc:
            crashed = True
            reason = f"the training script {name} raised {type(exc).__name__}: {exc}"
            ctx = self.new_context()
            if exchange.is_stopped() and exchange.trainer_done is None:
                self.executor.log_info(ctx, f"{reason} (the job was ending)")
            else:
                self.executor.log_exception(ctx, reason)
        finally:
            flush_output()  # a last print(..., end="") still reaches the site log
            binding.initialized.set()
            exchange.trainer_ended(reason, crashed)
            _script_ended()

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Offer the task to the script and wait for its result (see the module docstring for failures)."""
        exchange = self.exchange
        if exchange is None:
            return self.fail(ReturnCode.EXECUTION_EXCEPTION, "the training script was never started", fl_ctx)
        if exchange.trainer_done is not None:
            self._reported = True
            return self.fail(
                ReturnCode.EXECUTION_EXCEPTION,
                f"task {task_name!r} cannot run: {exchange.trainer_done}; the script is not restarted within a job",
                fl_ctx,
            )
        task = self.task_message(task_name, shareable, fl_ctx)
        exchange.offer_task(task)
        clock = TaskClock(self.executor, task_name, self._untaken_hint)
        while True:
            state, result = exchange.await_result(task.task_id, POLL_INTERVAL)
            if state == TaskState.RESULT:
                return self.finish_result(result, shareable)
            if state == TaskState.GONE:
                self._reported = True
                rc = ReturnCode.TASK_ABORTED if exchange.trainer_crashed else ReturnCode.EXECUTION_EXCEPTION
                return self.fail(rc, f"task {task_name!r} got no result: {exchange.trainer_done}", fl_ctx)
            if abort_signal.triggered:
                exchange.abort_task(task.task_id)
                return self.fail(ReturnCode.TASK_ABORTED, clock.aborted(state != TaskState.OFFERED), fl_ctx, False)
            if state == TaskState.WITHDRAWN:
                return self.fail(ReturnCode.TASK_ABORTED, f"task {task_name!r} was withdrawn", fl_ctx, error=False)
            overdue = clock.overdue(state == TaskState.TAKEN)
            if overdue is not None:
                exchange.abort_task(task.task_id)
                return self.fail(ReturnCode.EXECUTION_EXCEPTION, overdue, fl_ctx)

    def _untaken_hint(self) -> str:
        if self.binding is not None and not self.binding.initialized.is_set():
            return "; the script has not called flare.init()"
        return "; is the script calling flare.receive()?"

    def abort_task(self, task_id: str | None) -> None:
        """Withdraw task ``task_id`` from the script (its result, if any comes, is dropped)."""
        if self.exchange is not None and task_id:
            self.exchange.abort_task(task_id)

    def finalize(self, fl_ctx: FLContext) -> None:
        """Stop the script (or tell it the job was aborted) and wait for its thread."""
        exchange, thread = self.exchange, self.thread
        if exchange is None:
            return
        abort = fl_ctx.get_run_abort_signal()
        aborted = abort is not None and abort.triggered
        if aborted:
            exchange.abort(str(abort.value or "the run was aborted"))  # type: ignore[union-attr]
        else:
            exchange.stop("END_RUN received")
        if thread is not None:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                self.executor.log_warning(
                    fl_ctx,
                    f"the training script {self.script_label} did not end within {JOIN_TIMEOUT}s of END_RUN; its "
                    "thread is left running (a daemon thread: it ends with the process)",
                    fire_event=False,
                )
        if self.binding is not None:
            unregister(self.binding)
        if exchange.trainer_crashed and not self._reported and not aborted:  # e.g. sys.exit(1) after the last task
            self._reported = True
            self.executor.system_panic(str(exchange.trainer_done), fl_ctx)
