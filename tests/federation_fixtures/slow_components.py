"""A job that runs until it is stopped (for abort tests): the controller sends one task whose executor works in
0.1 s steps for up to ``seconds``, checking its abort signal."""

from __future__ import annotations

import time

from flarelite.apis.controller_spec import Task
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply


class SlowController(Controller):
    def __init__(self, seconds: float = 120.0):
        super().__init__()
        self.seconds = seconds

    def start_controller(self, fl_ctx) -> None:
        pass

    def control_flow(self, abort_signal, fl_ctx) -> None:
        self.broadcast_and_wait(
            Task("work", Shareable(), timeout=int(self.seconds) + 30), fl_ctx, abort_signal=abort_signal
        )

    def stop_controller(self, fl_ctx) -> None:
        pass

    def process_result_of_unknown_task(self, client, task_name, client_task_id, result, fl_ctx) -> None:
        pass


class SlowExecutor(Executor):
    def __init__(self, seconds: float = 120.0):
        super().__init__()
        self.seconds = seconds

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            time.sleep(0.1)
        return make_reply(ReturnCode.OK)
