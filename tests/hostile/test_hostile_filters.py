"""Filters in a job config are components like the others: a class that is not allow-listed is refused before its
module is imported, on the server and on every site; and a filter that fails on every task ends each task once
with a filter error (no endless retry, as NVFlare's server does with a failing task data filter)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from support import comp, write_job

from flarelite.errors import RunFailedError
from flarelite.simulator.runner import run_simulation

CUSTOM = textwrap.dedent(
    """
    import json

    from flarelite.apis.controller_spec import Task
    from flarelite.apis.executor import Executor
    from flarelite.apis.filter import Filter
    from flarelite.apis.fl_constant import FLContextKey, ReturnCode
    from flarelite.apis.impl.controller import Controller
    from flarelite.apis.shareable import Shareable, make_reply


    class AlwaysFails(Filter):
        def __init__(self, out_file):
            super().__init__()
            self.out_file = out_file

        def process(self, shareable, fl_ctx):
            with open(self.out_file, "a", encoding="utf-8") as f:
                f.write(f"{fl_ctx.get_identity_name()} {fl_ctx.get_prop(FLContextKey.TASK_NAME)}\\n")
            raise RuntimeError("this filter fails on every task")


    class Echo(Executor):
        def execute(self, task_name, shareable, fl_ctx, abort_signal):
            return make_reply(ReturnCode.OK)


    class Rounds(Controller):
        def __init__(self, out_file):
            super().__init__(task_check_period=0.05)
            self.out_file = out_file

        def control_flow(self, abort_signal, fl_ctx):
            rcs = []
            for name in ("data", "result"):
                for _ in range(3):
                    task = Task(name=name, data=Shareable(), timeout=20)
                    self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
                    rcs.append(sorted(ct.result.get_return_code() for ct in task.client_tasks))
            with open(self.out_file, "w", encoding="utf-8") as f:
                json.dump(rcs, f)
    """
)


def job(tmp_path: Path, server_filters: dict, client_filters: dict, custom: bool = False) -> str:
    out = tmp_path / "rcs.json"
    workflow = comp("custom_mod.Rounds", out_file=str(out)) if custom else comp("x.NeverBuilt")
    executor = comp("custom_mod.Echo") if custom else comp("y.NeverBuilt")
    folder = write_job(tmp_path / "jobs", [workflow], [{"tasks": ["*"], "executor": executor}])
    for side, filters in (("server", server_filters), ("client", client_filters)):
        path = os.path.join(folder, "app", "config", f"config_fed_{side}.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config.update(filters)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f)
    if custom:
        os.makedirs(os.path.join(folder, "app", "custom"))
        with open(os.path.join(folder, "app", "custom", "custom_mod.py"), "w", encoding="utf-8") as f:
            f.write(CUSTOM)
    return folder


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_filter_class_that_is_not_allowed_is_refused_before_import(tmp_path: Path, side: str) -> None:
    marker = tmp_path / "pwned"
    module = f"never_imported_filter_{side}"
    sys.modules.pop(module, None)
    evil = {
        "task_data_filters": [{"tasks": ["*"], "filters": [comp(f"{module}.Filter")]}],
        "task_result_filters": [
            {"tasks": ["*"], "filters": [comp("subprocess.Popen", args=f"echo {side} >> {marker}", shell=True)]}
        ],
    }
    folder = job(tmp_path, evil if side == "server" else {}, evil if side == "client" else {}, custom=True)
    with pytest.raises(RunFailedError, match=rf"task_data_filters\[0\]\.filters\[0\]: component class '{module}"):
        run_simulation(folder, str(tmp_path / "ws"), n_clients=2, protocol="memory", ready_timeout=20, end_timeout=10)
    assert not marker.exists() and module not in sys.modules


def test_a_filter_that_fails_on_every_task_ends_each_task_once(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    failing = [{"path": "custom_mod.AlwaysFails", "args": {"out_file": str(calls)}}]
    server = {"task_data_filters": [{"tasks": ["data"], "filters": failing}]}
    client = {"task_result_filters": [{"tasks": ["result"], "filters": failing}]}
    folder = job(tmp_path, server, client, custom=True)
    assert run_simulation(folder, str(tmp_path / "ws"), n_clients=2, protocol="memory", end_timeout=10) == 0
    rcs = json.loads((tmp_path / "rcs.json").read_text())
    assert rcs == [["TASK_DATA_FILTER_ERROR"] * 2] * 3 + [["TASK_RESULT_FILTER_ERROR"] * 2] * 3
    lines = sorted(calls.read_text().split("\n")[:-1])
    assert lines == sorted(["server data"] * 6 + ["site-1 result"] * 3 + ["site-2 result"] * 3)  # once per task
