"""Components and loaders shared by the p2p tests (this module holds no tests itself).

The executors here are recorded in job configs by their module path (``test_p2p_helpers.X``), so the
tests that use them run in memory mode, where this module is already imported.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.shareable import make_reply
from flarelite.app_opt.p2p.executors import SyncAlgorithmExecutor

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"


def load_job_module(name: str, path: Path) -> ModuleType:
    """Import a job script (``jobs/<job>/job.py``) under ``name`` without running its main()."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class SilentExecutor(SyncAlgorithmExecutor):
    """Takes its config and its neighbours' values but never sends its own, until the run is aborted."""

    def __init__(self, give_up_after: float = 30.0) -> None:
        super().__init__()
        self.give_up_after = give_up_after

    def run_algorithm(self, fl_ctx, shareable, abort_signal) -> None:
        deadline = time.monotonic() + self.give_up_after
        while not abort_signal.triggered and time.monotonic() < deadline:
            time.sleep(0.05)  # polls the abort signal (a child signal is not woken by its parent's trigger)


class NoConfigExecutor(Executor):
    """An executor that knows no p2p task: answers TASK_UNKNOWN to everything."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        return make_reply(ReturnCode.TASK_UNKNOWN)
