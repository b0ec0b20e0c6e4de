"""A site process killed mid-task: the wait ends with its status reported, the others finish, nothing hangs, and
the run succeeds naming the dead site."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import pytest
from support import comp, write_job

from flarelite.simulator.runner import run_simulation

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy_fixtures", "killer_components.py")


@pytest.mark.parametrize("protocol, direct_p2p", [("unix", False), ("grpc", False), ("unix", True)])
def test_killed_site_is_reported_and_the_others_finish(tmp_path, caplog, protocol, direct_p2p):
    folder = write_job(
        tmp_path / "jobs",
        [comp("killer_components.RecordingController")],
        [{"tasks": ["*"], "executor": comp("killer_components.DyingExecutor")}],
    )
    os.makedirs(os.path.join(folder, "app", "custom"), exist_ok=True)
    shutil.copy(FIXTURE, os.path.join(folder, "app", "custom"))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flarelite.simulator"):
        code = run_simulation(
            folder, str(tmp_path / "ws"), n_clients=3, protocol=protocol, direct_p2p=direct_p2p, end_timeout=20
        )
    assert code == 0  # the workflow finished without site-2: a success that names it
    assert time.monotonic() - start < 30
    assert "succeeded without 1 of its sites: site-2 (died:" in caplog.text
    assert "process killed by signal 9" in caplog.text
    status = json.loads((tmp_path / "ws" / "server" / "task_status.json").read_text())
    assert status == {"status": "client_dead", "results": {"site-1": "OK", "site-2": None, "site-3": "OK"}}
    server = json.loads((tmp_path / "ws" / "server" / "run_result.json").read_text())
    assert server["ok"] is True and server["failure"] is None
    assert server["sites"]["site-1"] == server["sites"]["site-3"] == "ok"
    assert server["sites"]["site-2"].startswith("died: ")
    for site in ("site-1", "site-3"):
        result = json.loads((tmp_path / "ws" / site / "run_result.json").read_text())
        assert result["ok"] is True and result["sites"] == {site: "ok"}, site
