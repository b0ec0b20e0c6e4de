"""A job config is not a way to run arbitrary code: only allow-listed classes are built, checked before import.

Before the fix ``{"path": "subprocess.Popen", "args": {"args": "...", "shell": true}}`` ran its shell command on
the server and on every site, in-process and in the processes mode alike.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
from support import comp, write_job

from flarelite.errors import ComponentBuildError, ConfigError, RunFailedError
from flarelite.runtime.allowlist import ClassPolicy, read_site_allow_list
from flarelite.runtime.components import build_component
from flarelite.simulator.runner import run_simulation

LEGIT = textwrap.dedent(
    """
    from flarelite.apis.controller_spec import Task
    from flarelite.apis.impl.controller import Controller
    from flarelite.apis.shareable import Shareable


    class Broadcast(Controller):
        def control_flow(self, abort_signal, fl_ctx):
            self.broadcast_and_wait(Task(name="t", data=Shareable(), timeout=20), fl_ctx, min_responses=0)
    """
)


def popen(marker: str, who: str) -> dict:
    return comp("subprocess.Popen", args=f"echo {who} >> {marker}", shell=True)


def lines(marker) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def job_with_legit_controller(tmp_path, executor: dict) -> str:
    folder = write_job(tmp_path / "jobs", [comp("legit.Broadcast")], [{"tasks": ["*"], "executor": executor}])
    custom = os.path.join(folder, "app", "custom")
    os.makedirs(custom)
    with open(os.path.join(custom, "legit.py"), "w", encoding="utf-8") as f:
        f.write(LEGIT)
    return folder


@pytest.mark.parametrize("protocol", ["memory", "unix"])
def test_popen_workflow_is_refused_on_the_server(tmp_path, protocol):
    marker = tmp_path / "pwned"
    folder = write_job(tmp_path / "jobs", [popen(str(marker), "server")], [{"executor": popen(str(marker), "site")}])
    n = 3 if protocol == "memory" else 1  # the server refuses before any site joins: one site process will do
    with pytest.raises(RunFailedError, match=r"'subprocess.Popen' is not allowed.*--allow-class subprocess.Popen"):
        run_simulation(folder, str(tmp_path / "ws"), n_clients=n, protocol=protocol, ready_timeout=20, end_timeout=10)
    assert lines(marker) == []


@pytest.mark.parametrize("protocol", ["memory", "unix"])
def test_popen_executor_is_refused_on_every_site(tmp_path, protocol):
    marker = tmp_path / "pwned"
    folder = job_with_legit_controller(tmp_path, popen(str(marker), "site"))
    with pytest.raises(RunFailedError, match=r"'subprocess.Popen' is not allowed"):
        run_simulation(folder, str(tmp_path / "ws"), n_clients=3, protocol=protocol, ready_timeout=20, end_timeout=10)
    assert lines(marker) == []  # before the fix: one line per site that built the config
    logs = [(tmp_path / "ws" / f"site-{i}" / "log.txt").read_text() for i in (1, 2, 3)]
    refusals = [log for log in logs if "executors[0]: component class 'subprocess.Popen' is not allowed" in log]
    assert refusals and all("--allow-class subprocess.Popen" in log and "resources.json" in log for log in refusals)


def test_nested_spec_in_args_is_checked_before_import(tmp_path):
    marker = tmp_path / "pwned"
    spec = comp("flarelite.apis.fl_component.FLComponent", nested=popen(str(marker), "nested"))
    with pytest.raises(ComponentBuildError, match=r"test\.nested: component class 'subprocess.Popen' is not allowed"):
        build_component(spec, "test")
    name = "never_imported_mod_xyz"
    sys.modules.pop(name, None)
    with pytest.raises(ComponentBuildError, match="not allowed"):
        build_component(comp(f"{name}.Thing"), "test")
    assert name not in sys.modules
    with pytest.raises(ComponentBuildError, match="not a dotted"):
        build_component(comp("../../etc/x.Y"), "test", ClassPolicy(custom_dirs=[str(tmp_path)]))


def test_operator_entries_allow_prefixes_and_exact_classes(tmp_path):
    policy = ClassPolicy(allowed=["collections", "argparse.Namespace"])
    assert type(build_component(comp("collections.Counter"), "t", policy)).__name__ == "Counter"
    assert type(build_component(comp("argparse.Namespace", a=1), "t", policy)).__name__ == "Namespace"
    with pytest.raises(ComponentBuildError, match="argparse.ArgumentParser"):
        build_component(comp("argparse.ArgumentParser"), "t", policy)
    with pytest.raises(ConfigError, match="not a class path"):
        ClassPolicy(allowed=["os; rm -rf"])


def test_site_resources_file_allows_classes(tmp_path):
    site = tmp_path / "site-1"
    (site / "local").mkdir(parents=True)
    (site / "local" / "resources.json").write_text(json.dumps({"class_allow_list": ["collections.Counter"]}))
    assert read_site_allow_list(str(site)) == ("collections.Counter",)
    policy = ClassPolicy.for_site(str(site))
    build_component(comp("collections.Counter"), "t", policy)
    with pytest.raises(ComponentBuildError, match=str(site / "local" / "resources.json")):
        build_component(comp("collections.OrderedDict"), "t", policy)
    (site / "local" / "resources.json").write_text('{"class_allow_list": "collections"}')
    with pytest.raises(ConfigError, match="must be a list"):
        read_site_allow_list(str(site))


def test_flarelite_paths_must_name_flarelite_classes():
    # pydantic's BaseModel is importable as flarelite.job_config.models.BaseModel: not a flarelite class
    with pytest.raises(ComponentBuildError, match="pydantic.main.BaseModel, which is not defined in flarelite"):
        build_component(comp("flarelite.job_config.models.BaseModel"), "t")


def _consensus_job_with(component: object):
    from flarelite.app_opt.p2p.controllers import DistOptController
    from flarelite.app_opt.p2p.executors import ConsensusExecutor
    from flarelite.app_opt.p2p.types import Config
    from flarelite.app_opt.p2p.utils import generate_random_network
    from flarelite.job_config.api import FedJob

    network, _ = generate_random_network(num_clients=3, seed=1)
    job = FedJob(name="allow", min_clients=3)
    job.to_server(DistOptController(config=Config(network=network, extra={"iterations": 2})))
    for i in range(1, 4):
        job.to(ConsensusExecutor(initial_value=float(i)), f"site-{i}")
    job.to(component, "site-1", id="extra")
    return job


def test_simulator_run_builds_what_the_script_put_in_the_job_and_nothing_else(tmp_path):
    import argparse

    job = _consensus_job_with(argparse.Namespace())  # stdlib: neither flarelite nor custom/
    assert job.simulator_run(str(tmp_path / "own"), protocol="memory") == 0  # the script is its own operator
    folder = job.export_job(str(tmp_path / "jobs"))  # the same job folder given to someone else's simulator
    with pytest.raises(RunFailedError, match=r"site-1: component 'extra': component class 'argparse.Namespace' is"):
        run_simulation(folder, str(tmp_path / "other"), protocol="memory", ready_timeout=20, end_timeout=10)
    assert run_simulation(folder, str(tmp_path / "ok"), protocol="memory", allowed_classes=["argparse"]) == 0
