"""Components for the filter run tests: a controller that broadcasts tasks and writes what came back to a file,
an executor that echoes a trace, and filters that stamp the trace (or fail)."""

from __future__ import annotations

import json
import threading

from flarelite.apis.controller_spec import Task
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.filter import ContentBlockedException, Filter
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import ReservedHeaderKey, Shareable
from flarelite.apis.signal import Signal

_FILTER_EVENTS = {
    EventType.BEFORE_TASK_DATA_FILTER,
    EventType.AFTER_TASK_DATA_FILTER,
    EventType.BEFORE_TASK_RESULT_FILTER,
    EventType.AFTER_TASK_RESULT_FILTER,
}


class TraceController(Controller):
    """Broadcasts each task of ``tasks`` (data: a trace list) to every client; writes ``{task: {site: ...}}``."""

    def __init__(self, tasks: list[str], out_file: str, task_check_period: float = 0.05):
        super().__init__(task_check_period=task_check_period)
        self.tasks = tasks
        self.out_file = out_file

    def start_controller(self, fl_ctx: FLContext) -> None:
        pass

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        seen: dict = {}
        for name in self.tasks:
            data = Shareable({"trace": ["ctl"]})
            data.add_cookie("task", name)  # every reply, errors included, brings the task's cookies back
            task = Task(name=name, data=data, timeout=30)
            self.broadcast_and_wait(task=task, fl_ctx=fl_ctx, min_responses=0, abort_signal=abort_signal)
            seen[name] = {
                ct.client.name: {
                    "rc": ct.result.get_return_code() if ct.result is not None else None,
                    "trace": ct.result.get("trace") if ct.result is not None else None,
                    "error": ct.result.get_header(ReservedHeaderKey.ERROR) if ct.result is not None else None,
                    "cookie": ct.result.get_cookie("task") if ct.result is not None else None,
                }
                for ct in task.client_tasks
            }
            seen[name]["__status__"] = str(task.completion_status)
        with open(self.out_file, "w", encoding="utf-8") as f:
            json.dump(seen, f)


class TraceExecutor(Executor):
    """Answers every task with its trace plus ``exec@<site>``."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        result = Shareable({"trace": [*shareable.get("trace", []), f"exec@{fl_ctx.get_identity_name()}"]})
        result.set_return_code(ReturnCode.OK)
        return result


class TraceFilter(Filter):
    """Appends ``mark|direction|site|peer|started?|last filter event on this thread`` to the trace."""

    def __init__(self, mark: str):
        super().__init__()
        self.mark = mark
        self._started = False
        self._last = threading.local()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._started = True
        elif event_type in _FILTER_EVENTS:
            self._last.event = event_type

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        peer = fl_ctx.get_peer_context()
        stamp = "|".join(
            [
                self.mark,
                str(fl_ctx.get_prop("__filter_dir__")),
                fl_ctx.get_identity_name(),
                peer.get_identity_name() if peer is not None else "-",
                "started" if self._started else "not-started",
                getattr(self._last, "event", "-"),
            ]
        )
        shareable["trace"] = [*shareable.get("trace", []), stamp]
        return shareable


class FailingFilter(Filter):
    """Fails on purpose: ``how`` is "raise", "block" or "bad_return"."""

    def __init__(self, how: str = "raise"):
        super().__init__()
        self.how = how

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if self.how == "block":
            raise ContentBlockedException("not this one")
        if self.how == "bad_return":
            return {"not": "a shareable"}  # type: ignore[return-value]
        raise RuntimeError("filter failed on purpose")
