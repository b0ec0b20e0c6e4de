"""A job whose sites report their Workspace folders (tests/test_workspace.py)."""

from __future__ import annotations

import os

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller


def _folders(fl_ctx) -> dict:
    ws = fl_ctx.get_workspace()
    custom = ws.get_app_custom_dir()
    return {
        "run_dir": ws.get_run_dir(fl_ctx.get_job_id()),
        "app_dir": ws.get_app_dir(),
        "custom": sorted(os.listdir(custom)) if os.path.isdir(custom) else None,
        "config": sorted(os.listdir(ws.get_app_config_dir())) if os.path.isdir(ws.get_app_config_dir()) else None,
        "root": ws.get_root_dir(),
    }


class WorkspaceController(Controller):
    """Asks every site for its folders and writes what they (and the server) said to ``out``."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def control_flow(self, abort_signal, fl_ctx) -> None:
        import json

        task = Task(name="where", data=DXO(DataKind.APP_DEFINED, {}).to_shareable())
        self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
        seen = {"server": _folders(fl_ctx)}
        for ct in task.client_tasks:
            if ct.result is not None and ct.result.get_return_code() == ReturnCode.OK:
                seen[ct.client.name] = from_shareable(ct.result).data
        with open(self.out, "w") as f:
            json.dump(seen, f)


class WorkspaceExecutor(Executor):
    """Answers with this site's folders."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        return DXO(DataKind.APP_DEFINED, _folders(fl_ctx)).to_shareable()
