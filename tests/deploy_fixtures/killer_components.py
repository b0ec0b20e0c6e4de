"""Components for the killed-site test; they run in site processes (copied into the job's custom/ folder)."""

import json
import os
import signal

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import make_reply


class RecordingController(Controller):
    """Broadcasts one task to all sites and writes how it ended to ``task_status.json`` in its folder."""

    def control_flow(self, abort_signal, fl_ctx):
        task = Task(name="work", data=DXO(DataKind.APP_DEFINED, {"x": 1}).to_shareable(), timeout=60)
        self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
        with open("task_status.json", "w") as f:
            json.dump(
                {
                    "status": task.completion_status.value,
                    "results": {
                        ct.client.name: ct.result.get_return_code() if ct.result is not None else None
                        for ct in task.client_tasks
                    },
                },
                f,
            )


class DyingExecutor(Executor):
    """site-2 dies in the middle of its task (SIGKILL: no goodbye); the others answer OK."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if fl_ctx.get_identity_name() == "site-2":
            os.kill(os.getpid(), signal.SIGKILL)
        return make_reply(ReturnCode.OK)
