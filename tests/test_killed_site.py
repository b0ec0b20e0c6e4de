"""A site process killed mid-task: the wait ends with its status reported, the others finish, nothing hangs."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from support import comp, write_job

from flarelite.errors import RunFailedError
from flarelite.simulator.runner import run_simulation

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy_fixtures", "killer_components.py")


@pytest.mark.parametrize("protocol, direct_p2p", [("unix", False), ("grpc", False), ("unix", True)])
def test_killed_site_is_reported_and_the_others_finish(tmp_path, protocol, direct_p2p):
    folder = write_job(
        tmp_path / "jobs",
        [comp("killer_components.RecordingController")],
        [{"tasks": ["*"], "executor": comp("killer_components.DyingExecutor")}],
    )
    os.makedirs(os.path.join(folder, "app", "custom"), exist_ok=True)
    shutil.copy(FIXTURE, os.path.join(folder, "app", "custom"))
    start = time.monotonic()
    with pytest.raises(RunFailedError, match="site-2: process killed by signal 9"):
        run_simulation(
            folder, str(tmp_path / "ws"), n_clients=3, protocol=protocol, direct_p2p=direct_p2p, end_timeout=20
        )
    assert time.monotonic() - start < 30
    status = json.loads((tmp_path / "ws" / "server" / "task_status.json").read_text())
    assert status == {"status": "client_dead", "results": {"site-1": "OK", "site-2": None, "site-3": "OK"}}
    for site in ("server", "site-1", "site-3"):
        result = json.loads((tmp_path / "ws" / site / "run_result.json").read_text())
        assert result == {"ok": True, "failure": None}, site
