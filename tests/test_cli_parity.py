"""NVFlare's simulator flags on ``flarelite simulator`` (-t, -gpu, -l, -m, --end_run_for_all) and ``--version``.

The jobs here carry their components in custom/ (written below), so that the same code runs in one process
(``-p memory``) and in a process per site; the server's controller writes what it saw to
``WS/server/parity_results.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flarelite
from flarelite.cli import build_parser
from flarelite.errors import ConfigError
from flarelite.simulator.options import (
    ConciseFilter,
    apply_log_config,
    assign_gpus,
    check_log_config,
    check_max_clients,
    check_threads,
    parse_gpu,
)
from flarelite.simulator.runner import run_simulation

COMPONENTS = '''
import json
import os
import threading
import time

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.executor import Executor
from flarelite.apis.impl.controller import Controller


class TurnsController(Controller):
    """Runs ``plan`` (broadcasts and sends) and records how many client tasks were out at once."""

    def __init__(self, plan):
        super().__init__()
        self.plan = plan

    def control_flow(self, abort_signal, fl_ctx):
        lock = threading.Lock()
        out = set()  # client tasks sent and neither answered nor ended with their task
        state = {"max_out": 0}

        def sent(client_task, fl_ctx):
            with lock:
                out.add(client_task.id)
                state["max_out"] = max(state["max_out"], len(out))

        def received(client_task, fl_ctx):
            with lock:
                out.discard(client_task.id)

        def done(task, fl_ctx):
            with lock:
                out.difference_update(ct.id for ct in task.client_tasks)

        steps = []
        names = [c.name for c in fl_ctx.get_engine().get_clients()]
        for i, step in enumerate(self.plan):
            task = Task(
                name="work",
                data=DXO(DataKind.APP_DEFINED, {"step": i}).to_shareable(),
                timeout=60,
                before_task_sent_cb=sent,
                result_received_cb=received,
                task_done_cb=done,
            )
            if step["kind"] == "bcast":
                wanted = step.get("min", len(names))
                self.broadcast_and_wait(task, fl_ctx, min_responses=wanted, abort_signal=abort_signal)
            else:
                self.send_and_wait(task, fl_ctx, targets=[step["target"]], abort_signal=abort_signal)
            answered = [ct for ct in task.client_tasks if ct.result is not None]
            results = {ct.client.name: from_shareable(ct.result).data for ct in answered}
            steps.append({"handed_out": len(task.client_tasks), "results": results})
        with open(os.path.join(fl_ctx.get_run_dir(), "parity_results.json"), "w") as f:
            json.dump({"max_out": state["max_out"], "steps": steps}, f)


class TurnsExecutor(Executor):
    """Answers with its device list, its process and when it ran."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        start = time.time()
        self.log_info(fl_ctx, f"parity executor ran {task_name}")
        self.log_debug(fl_ctx, "parity debug line")
        data = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(), "start": start, "end": time.time()}
        return DXO(DataKind.APP_DEFINED, data).to_shareable()
'''


def write_parity_job(root: Path, plan: list[dict]) -> str:
    """A one-app job deployed to @ALL with the components above in its custom/ folder."""
    folder = root / "parity_job"
    (folder / "app" / "config").mkdir(parents=True)
    (folder / "app" / "custom").mkdir()
    (folder / "app" / "custom" / "parity_components.py").write_text(COMPONENTS)
    server = {
        "format_version": 2,
        "workflows": [{"id": "wf", "path": "parity_components.TurnsController", "args": {"plan": plan}}],
        "components": [],
    }
    client = {
        "format_version": 2,
        "executors": [{"tasks": ["*"], "executor": {"path": "parity_components.TurnsExecutor", "args": {}}}],
        "components": [],
    }
    (folder / "app" / "config" / "config_fed_server.json").write_text(json.dumps(server))
    (folder / "app" / "config" / "config_fed_client.json").write_text(json.dumps(client))
    meta = {"name": "parity_job", "resource_spec": {}, "min_clients": 1, "deploy_map": {"app": ["@ALL"]}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return str(folder)


def flarelite_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [sys.executable, "-m", "flarelite.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def results(ws: Path) -> dict:
    return json.loads((ws / "server" / "parity_results.json").read_text())


def assert_took_turns(step: dict) -> None:
    runs = sorted(step["results"].values(), key=lambda r: r["start"])
    for before, after in zip(runs, runs[1:]):
        assert after["start"] >= before["end"], runs


@pytest.fixture
def logging_state():
    """Put the root logger back as it was after a test that applies a log config in this process."""
    from flarelite.runtime.logs import pin_root_level

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    pin_root_level(None)


# --- parsing -------------------------------------------------------------------------------------------------
def test_every_nvflare_simulator_flag_parses() -> None:
    argv = ["simulator", "job", "-w", "ws", "-n", "3", "-c", "site-1,site-2,site-3", "-t", "2", "-gpu", "0,1"]
    argv += ["-l", "concise", "-m", "5", "--end_run_for_all"]
    args = build_parser().parse_args(argv)
    assert (args.job_folder, args.workspace, args.n_clients, args.clients) == ("job", "ws", 3, "site-1,site-2,site-3")
    assert (args.threads, args.gpu, args.log_config, args.max_clients, args.end_run_for_all) == (
        2,
        "0,1",
        "concise",
        5,
        True,
    )
    long = ["simulator", "job", "--workspace", "ws", "--n_clients", "2", "--clients", "a,b", "--threads", "1"]
    long += ["--gpu", "[0,1],[2]", "--log_config", "verbose", "--max_clients", "7"]
    args = build_parser().parse_args(long)
    assert (args.threads, args.gpu, args.log_config, args.max_clients) == (1, "[0,1],[2]", "verbose", 7)
    defaults = build_parser().parse_args(["simulator", "job"])
    assert (defaults.threads, defaults.gpu, defaults.log_config, defaults.max_clients) == (None, None, None, 100)
    assert defaults.end_run_for_all is False
    kept = build_parser().parse_args(["simulator", "job", "-p", "grpc", "--tls", "mtls", "--direct-p2p", "-t", "1"])
    assert (kept.protocol, kept.tls, kept.direct_p2p, kept.threads) == ("grpc", "mtls", True, 1)


def test_version_is_printed() -> None:
    expected = f"flarelite {flarelite.__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "flarelite.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, expected)
    script = shutil.which("flarelite")
    if script is not None:
        proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout.strip()) == (0, expected)


# --- the option checks ---------------------------------------------------------------------------------------
def test_gpu_lists_and_groups() -> None:
    assert parse_gpu("0,1") == ["0", "1"]
    assert parse_gpu(" 3 ") == ["3"]
    assert parse_gpu("[0,1],[2]") == ["0,1", "2"]
    assert parse_gpu("[0, 1], [2,3]") == ["0,1", "2,3"]
    assert parse_gpu("GPU-8f3a-11,1") == ["GPU-8f3a-11", "1"]
    names = ["site-1", "site-2", "site-3"]
    assert assign_gpus(names, "0,1") == {"site-1": "0", "site-2": "1", "site-3": "0"}
    assert assign_gpus(names, "[0,1],[2]") == {"site-1": "0,1", "site-2": "2", "site-3": "0,1"}
    for bad, why in [
        ("", "string of GPU ids"),
        ("0,,1", "invalid device ids"),
        ("a,b", "invalid device ids"),
        ("[0,1", "brackets"),
        ("[0],1", "brackets"),
        ("[]", "invalid device ids"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_gpu(bad)
    with pytest.raises(ConfigError, match="string of GPU ids"):
        parse_gpu(0)


def test_threads_and_max_clients_checks(caplog: pytest.LogCaptureFixture) -> None:
    assert check_threads(None, 3) == 3
    assert check_threads(3, 3) == 3
    with caplog.at_level(logging.WARNING, logger="flarelite.simulator"):
        assert check_threads(1, 3) == 1
    assert "threads=1 for 3 sites" in caplog.text and "synchronous peer-to-peer" in caplog.text
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match="threads must be a positive int"):
            check_threads(bad, 3)
    with pytest.raises(ConfigError, match=r"threads=4 cannot be more than the number of clients \(3\)"):
        check_threads(4, 3)
    check_max_clients(100, ["site-1"])
    with pytest.raises(ConfigError, match=r"number of clients \(3\) cannot be more than max_clients \(2\)"):
        check_max_clients(2, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="max_clients must be a positive int"):
        check_max_clients(0, ["a"])


def test_log_config_values(tmp_path: Path) -> None:
    assert [check_log_config(v) for v in ("concise", "FULL", " verbose ", "debug", "Warning", "20")] == [
        "concise",
        "full",
        "verbose",
        "debug",
        "warning",
        "20",
    ]
    config = tmp_path / "log.json"
    config.write_text("{}")
    assert check_log_config(str(config)) == str(config)
    with pytest.raises(ConfigError, match=r"unknown log_config 'chatty'.*concise, full, verbose.*debug, info"):
        check_log_config("chatty")
    with pytest.raises(ConfigError, match="out of range"):
        check_log_config("99")
    with pytest.raises(ConfigError, match="is not a file"):
        check_log_config(str(tmp_path))
    with pytest.raises(ConfigError, match="log_config must be"):
        check_log_config(None)


def test_log_modes_set_levels_formats_and_filters(logging_state: logging.Logger, tmp_path: Path) -> None:
    root = logging_state
    apply_log_config("verbose")
    assert root.level == logging.DEBUG and len(root.handlers) == 1
    assert "%(threadName)s" in root.handlers[0].formatter._fmt
    apply_log_config("full")
    assert root.level == logging.INFO and len(root.handlers) == 1  # the mode's console replaced the previous one
    assert root.handlers[0].formatter._fmt == "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
    apply_log_config("concise")
    (console,) = root.handlers
    assert console.formatter._fmt == "%(asctime)s - %(levelname)s - %(message)s"
    concise = next(f for f in console.filters if isinstance(f, ConciseFilter))

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert concise.filter(record("TurnsExecutor", logging.INFO))  # the job's components
    assert not concise.filter(record("flarelite.ServerRuntime", logging.INFO))  # the runtime's chatter
    assert concise.filter(record("flarelite.ServerRuntime", logging.WARNING))
    apply_log_config("error")
    assert root.level == logging.ERROR
    file_config = tmp_path / "log.json"
    file_config.write_text(
        json.dumps(
            {
                "version": 1,
                "handlers": {"file": {"class": "logging.FileHandler", "filename": "sub/mine.log"}},
                "root": {"level": "WARNING", "handlers": ["file"]},
            }
        )
    )
    apply_log_config(str(file_config), base_dir=str(tmp_path / "site"))
    logging.getLogger("parity").warning("into the file")
    for handler in root.handlers:
        handler.flush()
    assert "into the file" in (tmp_path / "site" / "sub" / "mine.log").read_text()
    assert root.level == logging.WARNING
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        apply_log_config(str(tmp_path / "bad.json"))
    (tmp_path / "broken.json").write_text(json.dumps({"version": 1, "handlers": {"h": {"class": "no.Such"}}}))
    with pytest.raises(ConfigError, match="cannot apply log_config"):
        apply_log_config(str(tmp_path / "broken.json"))


# --- runs ----------------------------------------------------------------------------------------------------
def test_threads_gate_in_one_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plan = [{"kind": "bcast", "min": 1}, {"kind": "bcast"}, {"kind": "send", "target": "site-3"}, {"kind": "bcast"}]
    job = write_parity_job(tmp_path / "jobs", plan)
    with caplog.at_level(logging.WARNING, logger="flarelite.simulator"):
        assert (
            run_simulation(
                job,
                str(tmp_path / "ws1"),
                n_clients=3,
                threads=1,
                protocol="memory",
                gpu="0,1",
                ready_timeout=20,
                end_timeout=10,
            )
            == 0
        )
    assert "gpu='0,1' ignored: with protocol 'memory'" in caplog.text
    seen = results(tmp_path / "ws1")
    assert seen["max_out"] == 1
    first, second, third, fourth = seen["steps"]
    assert first["handed_out"] == 1 and len(first["results"]) == 1  # the others were held, then dropped with it
    assert sorted(second["results"]) == ["site-1", "site-2", "site-3"] and second["handed_out"] == 3
    assert list(third["results"]) == ["site-3"]
    assert len(fourth["results"]) == 3
    for step in (second, fourth):
        assert_took_turns(step)
        assert all(r["cuda"] is None for r in step["results"].values())
    assert (
        run_simulation(
            job, str(tmp_path / "ws2"), n_clients=3, threads=2, protocol="memory", ready_timeout=20, end_timeout=10
        )
        == 0
    )
    assert results(tmp_path / "ws2")["max_out"] == 2
    assert (
        run_simulation(job, str(tmp_path / "ws3"), n_clients=3, protocol="memory", ready_timeout=20, end_timeout=10)
        == 0
    )
    assert results(tmp_path / "ws3")["max_out"] == 3  # the default: every site at once


def test_cli_threads_gpu_and_concise_log_in_processes(tmp_path: Path) -> None:
    job = write_parity_job(tmp_path / "jobs", [{"kind": "bcast"}])
    ws = tmp_path / "ws"
    proc = flarelite_cli(
        "simulator", job, "-w", str(ws), "-n", "3", "-t", "1", "-gpu", "0,1", "-l", "concise", "--end_run_for_all"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = results(ws)
    assert seen["max_out"] == 1
    (step,) = seen["steps"]
    assert {site: r["cuda"] for site, r in step["results"].items()} == {"site-1": "0", "site-2": "1", "site-3": "0"}
    assert len({r["pid"] for r in step["results"].values()}) == 3
    assert_took_turns(step)
    assert "threads=1 for 3 sites" in proc.stderr
    # concise: the components' lines on the console without the logger's name, the runtime's only in log.txt
    assert " - INFO - [identity=site-1" in proc.stderr and "parity executor ran work" in proc.stderr
    assert "the run starts" not in proc.stderr
    assert "the run starts" in (ws / "server" / "log.txt").read_text()
    assert "parity debug line" not in (ws / "site-1" / "log.txt").read_text()


@pytest.mark.parametrize("mode", ["full", "verbose"])
def test_cli_log_modes_change_the_level(tmp_path: Path, mode: str) -> None:
    job = write_parity_job(tmp_path / "jobs", [{"kind": "bcast"}])
    ws = tmp_path / "ws"
    proc = flarelite_cli("simulator", job, "-w", str(ws), "-n", "2", "-p", "memory", "-l", mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flarelite.ServerRuntime - INFO" in proc.stderr  # the full console shows the runtime's lines
    site_log = (ws / "site-1" / "log.txt").read_text()
    assert ("parity debug line" in site_log) == (mode == "verbose")
    assert ("parity debug line" in proc.stderr) == (mode == "verbose")


def test_cli_bad_values_give_clear_errors(tmp_path: Path) -> None:
    job = write_parity_job(tmp_path / "jobs", [{"kind": "bcast"}])
    ws = str(tmp_path / "ws")
    cases = [
        (["-l", "loud"], "unknown log_config 'loud': give a mode (concise, full, verbose)"),
        (["-gpu", "x"], "gpu 'x' has invalid device ids ['x']"),
        (["-t", "4"], "threads=4 cannot be more than the number of clients (3)"),
        (["-t", "0"], "threads must be a positive int"),
        (["-m", "2"], "the number of clients (3) cannot be more than max_clients (2)"),
    ]
    for extra, message in cases:
        proc = flarelite_cli("simulator", job, "-w", ws, "-n", "3", "-p", "memory", *extra)
        assert proc.returncode == 1, (extra, proc.stderr)
        assert "flarelite: error:" in proc.stderr and message in proc.stderr, (extra, proc.stderr)
    proc = flarelite_cli("simulator", job, "-w", ws, "-t", "many")
    assert proc.returncode == 2 and "argument -t/--threads: invalid int value: 'many'" in proc.stderr


def test_fedjob_simulator_run_threads_and_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flarelite.job_config.api import FedJob

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "parity_fedjob_components.py").write_text(COMPONENTS)
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    import parity_fedjob_components as m

    job = FedJob(name="parity", min_clients=3)
    job.to_server(m.TurnsController(plan=[{"kind": "bcast"}]))
    job.to_clients(m.TurnsExecutor())
    with pytest.raises(ValueError, match="unknown log_config 'loud'"):
        job.simulator_run(str(tmp_path / "ws"), n_clients=3, log_config="loud")
    with pytest.raises(ValueError, match="gpu '0;1' has invalid device ids"):
        job.simulator_run(str(tmp_path / "ws"), n_clients=3, gpu="0;1")
    assert job.simulator_run(str(tmp_path / "ws"), n_clients=3, threads=1, gpu="[0,1],[2]") == 0
    (step,) = results(tmp_path / "ws")["steps"]
    assert results(tmp_path / "ws")["max_out"] == 1
    assert {site: r["cuda"] for site, r in step["results"].items()} == {"site-1": "0,1", "site-2": "2", "site-3": "0,1"}
    monkeypatch.delitem(sys.modules, "parity_fedjob_components")
