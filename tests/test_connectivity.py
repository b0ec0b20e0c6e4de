"""A site that drops off the network: its tasks end as CLIENT_DEAD, events fire, and it is taken back."""

from __future__ import annotations

import sim_components as sc
from support import comp, read_log, write_job

from flarelite.apis.controller_spec import TaskCompletionStatus
from flarelite.communication.memory import InMemoryHub
from flarelite.simulator.runner import run_simulation


def test_disconnected_site_ends_its_tasks_and_is_taken_back(tmp_path):
    sc.reset()
    hub = InMemoryHub()
    sc.HOOKS["cut"] = hub.disconnect
    sc.HOOKS["heal"] = lambda: hub.reconnect("site-3")
    folder = write_job(
        tmp_path / "jobs",
        [comp("sim_components.ReconnectController")],
        [{"tasks": ["*"], "executor": comp("sim_components.CutExecutor")}],
    )
    assert (
        run_simulation(
            folder,
            str(tmp_path / "ws"),
            n_clients=3,
            hub=hub,
            protocol="memory",
            ready_timeout=10,
            end_timeout=10,
            allowed_classes=["sim_components"],  # tests/sim_components.py shares its state with this test
        )
        == 0
    )
    status, rcs = sc.RESULTS["first"]
    assert status == TaskCompletionStatus.CLIENT_DEAD
    assert rcs == [("site-1", "OK"), ("site-2", "OK"), ("site-3", None)]
    assert sc.RESULTS["disconnect_time"] is True
    assert sc.RESULTS["back"] is True
    assert sc.RESULTS["second"] == (TaskCompletionStatus.OK, [("site-1", "OK"), ("site-2", "OK"), ("site-3", "OK")])
    assert ("server", "disconnected", "site-3") in sc.EVENTS
    assert ("server", "reconnected", "site-3") in sc.EVENTS
    assert "lost the connection to the server" in read_log(tmp_path, "site-3")
    sc.HOOKS.clear()
