"""Every site's Workspace names its run folder and its app folder (config/ and custom/) in every mode."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fedjob_fixtures"))

from workspace_probe import WorkspaceController, WorkspaceExecutor  # noqa: E402

from flarelite.apis.workspace import Workspace  # noqa: E402
from flarelite.job_config.api import FedJob  # noqa: E402


@pytest.mark.parametrize("protocol", ["memory", "unix"])
def test_sites_see_their_run_and_app_folders(tmp_path, protocol):
    out = tmp_path / "seen.json"
    job = FedJob(name="ws_probe", min_clients=2)
    job.to_server(WorkspaceController(out=str(out)))
    job.to_clients(WorkspaceExecutor())
    ws = tmp_path / "ws"
    assert job.simulator_run(str(ws), n_clients=2, protocol=protocol) == 0
    seen = json.loads(out.read_text())
    assert set(seen) == {"server", "site-1", "site-2"}
    for site, folders in seen.items():
        assert folders["run_dir"] == str(ws / site)
        assert folders["root"] == str(ws)
        assert os.path.dirname(folders["app_dir"]) == str(ws / site)  # each site keeps its app in its folder
        assert "workspace_probe.py" in folders["custom"], folders
        assert "config_fed_client.json" in folders["config"] or site == "server", folders
    assert "config_fed_server.json" in seen["server"]["config"]


def test_a_site_without_an_app_says_so(tmp_path):
    ws = Workspace(str(tmp_path), "site-1", str(tmp_path / "site-1"))
    assert ws.get_site_config_dir() == str(tmp_path / "site-1" / "local")
    with pytest.raises(RuntimeError, match="site-1 has no app folder yet"):
        ws.get_app_custom_dir()
