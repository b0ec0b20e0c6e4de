"""A minimal low-level Controller for the ScriptRunner tests: "train" tasks built with FLModelUtils.

Each round it broadcasts ``{"x": array}``; every site must answer OK with ``x + 1`` (FULL) or ``1`` (DIFF).
The results go to ``<server run dir>/results.json``; any other answer makes control_flow raise (the run fails).
"""

from __future__ import annotations

import json
import os

import numpy as np

from flarelite.apis.controller_spec import Task
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller
from flarelite.app_common.abstract.fl_model import FLModel
from flarelite.app_common.utils.fl_model_utils import FLModelUtils


class TrainController(Controller):
    """Sends ``num_rounds`` train tasks and checks every site's update."""

    def __init__(self, num_rounds: int = 2, task_timeout: int = 60):
        super().__init__()
        self.num_rounds = num_rounds
        self.task_timeout = task_timeout

    def control_flow(self, abort_signal, fl_ctx) -> None:
        x = np.arange(4, dtype=np.float32)
        seen = []
        for r in range(self.num_rounds):
            model = FLModel(params={"x": x}, current_round=r, total_rounds=self.num_rounds)
            task = Task(name="train", data=FLModelUtils.to_shareable(model), timeout=self.task_timeout)
            self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
            for ct in task.client_tasks:
                rc = ct.result.get_return_code() if ct.result is not None else None
                if rc != ReturnCode.OK:
                    error = ct.result.get_header("__error__") if ct.result is not None else "no result"
                    raise RuntimeError(f"{ct.client.name} answered round {r} with {rc}: {error}")
                update = FLModelUtils.from_shareable(ct.result)
                seen.append(
                    {
                        "site": ct.client.name,
                        "round": r,
                        "params_type": str(update.params_type.value),
                        "x": np.asarray(update.params["x"]).tolist(),
                        "metrics": update.metrics,
                        "current_round": update.current_round,
                        "steps": update.meta.get("NUM_STEPS_CURRENT_ROUND"),
                    }
                )
        with open(os.path.join(fl_ctx.get_workspace().get_run_dir(), "results.json"), "w") as f:
            json.dump(seen, f)
