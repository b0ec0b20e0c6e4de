"""ScriptRunner and ClientAPIExecutor: the exported config, the settings' checks, and whole jobs in the simulator
(in-process and external scripts, in one process and as processes), including scripts that fail."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from flarelite.app_common.executors.client_api_executor import ClientAPIExecutor
from flarelite.client.config import ExchangeFormat, TransferType
from flarelite.errors import RunFailedError
from flarelite.job_config.api import FedJob
from flarelite.job_config.script_runner import FrameworkType, ScriptRunner

FIXTURES = os.path.join(os.path.dirname(__file__), "client_api_fixtures")
EXECUTOR_PATH = "flarelite.app_common.executors.client_api_executor.ClientAPIExecutor"


@pytest.fixture(autouse=True)
def _fixtures_importable(monkeypatch):
    monkeypatch.syspath_prepend(FIXTURES)


def _job(runner: ScriptRunner, rounds: int = 2, min_clients: int = 1) -> FedJob:
    from train_controller import TrainController

    job = FedJob(name="script_runner_job", min_clients=min_clients)
    job.to_server(TrainController(num_rounds=rounds))
    job.to_clients(runner)
    return job


def _log(ws, site: str) -> str:
    with open(os.path.join(ws, site, "log.txt"), encoding="utf-8") as f:
        return f.read()


def _results(ws) -> list[dict]:
    with open(os.path.join(ws, "server", "results.json"), encoding="utf-8") as f:
        return json.load(f)


def _script_processes(name: str) -> list[int]:
    """Pids of live processes whose command line names the fixture script ``name`` (from /proc)."""
    found = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().split(")")[-1].split()[0] == "Z"
        except OSError:
            continue
        if name in cmdline and not zombie:
            found.append(int(pid))
    return found


# ------------------------------------------------------------------------------------------ export


def _exported_executor(tmp_path, runner: ScriptRunner) -> tuple[dict, str]:
    job = FedJob(name="export_job")
    from train_controller import TrainController

    job.to_server(TrainController())
    job.to_clients(runner)
    folder = job.export_job(str(tmp_path / "jobs"))
    with open(os.path.join(folder, "app", "config", "config_fed_client.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert [e["tasks"] for e in config["executors"]] == [["*"]]
    return config["executors"][0]["executor"], folder


def test_exported_args_are_nvflares(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "client.py").write_text("print('hi')\n")
    executor, folder = _exported_executor(tmp_path, ScriptRunner("client.py", script_args="--epochs 1"))
    assert executor == {
        "path": EXECUTOR_PATH,
        "args": {
            "execution_mode": "in_process",
            "task_script_path": "client.py",
            "task_script_args": "--epochs 1",
            "params_exchange_format": "pytorch",
        },
    }
    assert os.path.isfile(os.path.join(folder, "app", "custom", "client.py"))
    executor, _ = _exported_executor(tmp_path, ScriptRunner("client.py", launch_external_process=True))
    assert executor == {
        "path": EXECUTOR_PATH,
        "args": {
            "execution_mode": "external_process",
            "command": ["python3", "-u", "custom/client.py"],
            "shutdown_timeout": 0.0,
            "params_exchange_format": "pytorch",
        },
    }
    job = FedJob(name="tasks_job")
    job.to(ScriptRunner("client.py"), "site-1", tasks=["train", "validate"])
    with open(os.path.join(job.export_job(str(tmp_path / "t")), "app_site-1", "config", "config_fed_client.json")) as f:
        assert json.load(f)["executors"][0]["tasks"] == ["train", "validate"]
    runner = ScriptRunner("client.py", script_args=["--a", "1"], framework=FrameworkType.NUMPY, launch_once=False)
    assert runner.build_executor().task_script_args == "--a 1"
    external = ScriptRunner("client.py", "--a 1", execution_mode="external_process", command=["py", "-X", "dev"])
    assert external.build_executor().command == ["py", "-X", "dev", "custom/client.py", "--a", "1"]
    assert ScriptRunner("x.py", framework=FrameworkType.RAW).build_executor().params_exchange_format == "raw"


def test_script_runner_checks_its_arguments():
    with pytest.raises(ValueError, match="cannot select 'attach'"):
        ScriptRunner("client.py", execution_mode="attach")
    with pytest.raises(ValueError, match="conflicts"):
        ScriptRunner("client.py", launch_external_process=True, execution_mode="in_process")
    with pytest.raises(ValueError, match="framework"):
        ScriptRunner("client.py", framework="jax")
    with pytest.raises(ValueError, match="TensorFlow"):  # flarelite has no Keras conversion
        ScriptRunner("client.py", framework=FrameworkType.TENSORFLOW).build_executor()


def test_executor_checks_settings_against_the_mode():
    ok = ClientAPIExecutor("in_process", task_script_path="c.py", params_exchange_format="pytorch")
    assert ok.params_exchange_format is ExchangeFormat.PYTORCH and ok.params_transfer_type is TransferType.FULL
    assert ClientAPIExecutor("external_process", command="python3 -u custom/c.py").argv == [
        "python3", "-u", "custom/c.py",
    ]  # fmt: skip
    bad = [
        ({"execution_mode": "remote"}, "execution_mode must be one of"),
        ({"execution_mode": "attach", "attach_id": "x"}, "not supported by flarelite"),
        ({"execution_mode": "external_process"}, "needs a command"),
        ({"execution_mode": "external_process", "command": []}, "command is empty"),
        ({"execution_mode": "external_process", "command": "x", "task_script_path": "c.py"}, "in_process"),
        ({"execution_mode": "in_process"}, "needs task_script_path"),
        ({"execution_mode": "in_process", "task_script_path": "c.py", "command": "x"}, "external_process' only"),
        ({"execution_mode": "in_process", "task_script_path": "c.py", "launch_once": False}, "launch_once"),
        ({"execution_mode": "in_process", "task_script_path": "c.py", "shutdown_timeout": 1.0}, "shutdown_timeout"),
        ({"execution_mode": "in_process", "task_script_path": "c.py", "heartbeat_interval": 1.0}, "heartbeat"),
        ({"execution_mode": "external_process", "command": "x", "heartbeat_timeout": 5.0}, "longer than"),
        ({"execution_mode": "external_process", "command": "x", "launch_timeout": float("inf")}, "finite"),
        ({"execution_mode": "external_process", "command": "x", "result_wait_timeout": -1}, ">= 0"),
        ({"execution_mode": "external_process", "command": "x", "memory_gc_rounds": -1}, "memory_gc_rounds"),
        ({"execution_mode": "external_process", "command": "x", "attach_timeout": 3.0}, "attach"),
        ({"execution_mode": "external_process", "command": "x", "params_exchange_format": "jax"}, "ExchangeFormat"),
        ({"execution_mode": "external_process", "command": "x", "params_transfer_type": "HALF"}, "TransferType"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            ClientAPIExecutor(**kwargs)
    assert ClientAPIExecutor("external_process", command="x", heartbeat_timeout=0.0).heartbeat_timeout == 0.0


# ------------------------------------------------------------------------------------------ jobs that work


def _check_run(ws, sites: list[str], tag: str) -> None:
    results = _results(ws)
    assert sorted((r["site"], r["round"]) for r in results) == sorted((s, r) for s in sites for r in range(2))
    for r in results:
        assert r["x"] == [1.0, 2.0, 3.0, 4.0] and r["params_type"] == "FULL" and r["steps"] == 3
        assert r["metrics"] == {"site": int(r["site"].rsplit("-", 1)[-1])}  # each site answered its own task
        assert r["current_round"] == r["round"]
    for site in sites:
        log = _log(ws, site)
        assert f"np_client.py: hello from {site} tag={tag}" in log  # the script's print, with the site context
        assert f"[identity={site}, run=simulate_job] - np_client.py: thread print from {site}" in log
        assert f"{site} done" in log
        assert f"np_client.py: {site} last words without a newline" in log
        assert f"logged by {site}" in log  # the script's logging records
        assert "metric 'bad_metric' from the training script dropped" in log  # never raised in the script
        for other in sites:
            if other != site:
                assert f"hello from {other}" not in log


def test_in_process_two_sites_in_one_process(tmp_path):
    runner = ScriptRunner(os.path.join(FIXTURES, "np_client.py"), script_args="--tag A", framework=FrameworkType.NUMPY)
    ws = tmp_path / "ws"
    assert _job(runner, min_clients=2).simulator_run(str(ws), n_clients=2, protocol="memory") == 0
    _check_run(ws, ["site-1", "site-2"], "A")


def test_in_process_in_site_processes(tmp_path):
    runner = ScriptRunner(os.path.join(FIXTURES, "np_client.py"), script_args="--tag B", framework=FrameworkType.NUMPY)
    ws = tmp_path / "ws"
    assert _job(runner).simulator_run(str(ws), n_clients=1) == 0
    _check_run(ws, ["site-1"], "B")


def test_external_process_two_sites_in_one_process(tmp_path):
    runner = ScriptRunner(
        os.path.join(FIXTURES, "np_client.py"), "--tag C", launch_external_process=True, framework=FrameworkType.NUMPY
    )
    ws = tmp_path / "ws"
    assert _job(runner, min_clients=2).simulator_run(str(ws), n_clients=2, protocol="memory") == 0
    _check_run(ws, ["site-1", "site-2"], "C")
    assert _script_processes("custom/np_client.py") == []


def test_external_process_in_site_processes(tmp_path):
    runner = ScriptRunner(
        os.path.join(FIXTURES, "np_client.py"), "--tag D", launch_external_process=True, framework=FrameworkType.NUMPY
    )
    ws = tmp_path / "ws"
    assert _job(runner).simulator_run(str(ws), n_clients=1) == 0
    _check_run(ws, ["site-1"], "D")
    assert _script_processes("custom/np_client.py") == []


def test_external_process_launched_per_task(tmp_path):
    runner = ScriptRunner(
        os.path.join(FIXTURES, "np_client.py"),
        "--tag E",
        launch_external_process=True,
        framework=FrameworkType.NUMPY,
        launch_once=False,
    )
    ws = tmp_path / "ws"
    assert _job(runner).simulator_run(str(ws), n_clients=1, protocol="memory") == 0
    assert _log(ws, "site-1").count("np_client.py: hello from site-1 tag=E") == 2  # one process per task
    assert len(_results(ws)) == 2
    assert _script_processes("custom/np_client.py") == []


# ------------------------------------------------------------------------------------------ jobs that fail


def test_crashing_external_script_fails_the_run_with_its_stderr(tmp_path):
    runner = ScriptRunner(os.path.join(FIXTURES, "crash_client.py"), launch_external_process=True)
    ws = tmp_path / "ws"
    with pytest.raises(RunFailedError, match="exited with status 1"):
        _job(runner).simulator_run(str(ws), n_clients=1)
    log = _log(ws, "site-1")
    assert "crash_client.py (stderr): CRASH-MARKER: about to fail" in log
    assert "crash_client.py (stderr): RuntimeError: CRASH-MARKER boom" in log
    assert _script_processes("custom/crash_client.py") == []


def test_script_that_never_calls_init_fails_within_launch_timeout(tmp_path):
    runner = ScriptRunner(os.path.join(FIXTURES, "no_init_client.py"), launch_external_process=True, launch_timeout=2)
    ws = tmp_path / "ws"
    start = time.monotonic()
    with pytest.raises(RunFailedError, match=r"did not connect to the site within 2\.0s .*did it call flare.init"):
        _job(runner).simulator_run(str(ws), n_clients=1, protocol="memory")
    assert time.monotonic() - start < 20
    assert "no_init_client.py: NO-INIT: sleeping" in _log(ws, "site-1")
    assert _script_processes("custom/no_init_client.py") == []


def test_script_exiting_non_zero_is_never_a_success(tmp_path):
    for external in (True, False):
        runner = ScriptRunner(os.path.join(FIXTURES, "exit_nonzero_client.py"), launch_external_process=external)
        ws = tmp_path / f"ws_{external}"
        with pytest.raises(RunFailedError, match="exited with status 5"):
            _job(runner).simulator_run(str(ws), n_clients=1, protocol="memory")
        assert len(_results(ws)) == 2  # every task had succeeded
    assert _script_processes("custom/exit_nonzero_client.py") == []


def test_crashing_in_process_script_aborts_its_task(tmp_path):
    runner = ScriptRunner(os.path.join(FIXTURES, "crash_client.py"))
    ws = tmp_path / "ws"
    with pytest.raises(RunFailedError, match="TASK_ABORTED"):
        _job(runner).simulator_run(str(ws), n_clients=1, protocol="memory")
    log = _log(ws, "site-1")
    assert "the training script crash_client.py raised RuntimeError: CRASH-MARKER boom" in log
    assert "Traceback" in log


def test_missing_script_fails_the_start(tmp_path):
    job = _job(ScriptRunner(os.path.join(FIXTURES, "np_client.py"), framework=FrameworkType.NUMPY))
    job._apps["@ALL"].executors[0][2].task_script_path = "not_there.py"  # as a hand-written config would say
    ws = tmp_path / "ws"
    with pytest.raises(RunFailedError, match="training script 'not_there.py' not found"):
        job.simulator_run(str(ws), n_clients=1, protocol="memory")
    assert "custom" in _log(ws, "site-1")


def test_hung_external_script_is_detected_by_heartbeats(tmp_path):
    from train_controller import TrainController

    executor = ClientAPIExecutor(
        "external_process",
        command=[sys.executable, "-u", "custom/hang_client.py"],
        heartbeat_interval=0.2,
        heartbeat_timeout=1.0,
        stop_grace_period=1.0,
    )
    job = FedJob(name="hang_job")
    job.to_server(TrainController(num_rounds=1))
    job.to_clients(executor)
    job.to_clients(os.path.join(FIXTURES, "hang_client.py"))
    ws = tmp_path / "ws"
    start = time.monotonic()
    with pytest.raises(RunFailedError, match="no heartbeat from the training script hang_client.py"):
        job.simulator_run(str(ws), n_clients=1, protocol="memory")
    assert time.monotonic() - start < 20
    assert "HANG: stopping myself" in _log(ws, "site-1")
    assert _script_processes("custom/hang_client.py") == []


def test_the_default_python_command_runs_with_the_sites_interpreter():
    import sys as _sys

    from flarelite.app_common.executors.client_api.external_process_backend import site_interpreter

    assert site_interpreter(["python3", "-u", "custom/x.py"]) == [_sys.executable, "-u", "custom/x.py"]
    assert site_interpreter(["python", "custom/x.py"]) == [_sys.executable, "custom/x.py"]
    assert site_interpreter(["/opt/py/bin/python3", "x.py"]) == ["/opt/py/bin/python3", "x.py"]  # a path is kept
    assert site_interpreter(["bash", "run.sh"]) == ["bash", "run.sh"]


def test_script_runner_brings_the_modules_the_script_imports_from_its_folder(tmp_path):
    from flarelite.app_common.workflows.fedavg import FedAvg
    from flarelite.job_config.api import FedJob
    from flarelite.job_config.script_runner import ScriptRunner

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from helper_mod import X\n")
    (tmp_path / "helper_mod.py").write_text("import other_mod\nX = 1\n")
    (tmp_path / "other_mod.py").write_text("Y = 2\n")
    (tmp_path / "unused.py").write_text("Z = 3\n")
    (tmp_path / "train.py").write_text("import numpy\nimport pkg\nfrom helper_mod import X\nimport flarelite.client\n")
    job = FedJob(name="siblings")
    job.to_server(FedAvg(num_clients=1, num_rounds=1))
    job.to_clients(ScriptRunner(str(tmp_path / "train.py")))
    custom = os.path.join(job.export_job(str(tmp_path / "out")), "app", "custom")
    files = sorted(os.path.relpath(os.path.join(r, f), custom) for r, _, fs in os.walk(custom) for f in fs)
    assert files == ["helper_mod.py", "other_mod.py", os.path.join("pkg", "__init__.py"), "train.py"]
