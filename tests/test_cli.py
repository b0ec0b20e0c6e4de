"""The ``flarelite`` command: run an exported job folder, exit 0 on success and non-zero on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support import comp, write_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flarelite(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "flarelite.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_exported_hello_p2p_runs_from_the_cli(tmp_path):
    job_folder = _exported_hello(tmp_path)
    assert os.path.exists(os.path.join(job_folder, "meta.json"))
    assert os.path.exists(os.path.join(job_folder, "app_site-1", "custom", "modules.py"))
    proc = flarelite("simulator", job_folder, "-w", str(tmp_path / "ws"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Received message from") == 6
    for site in ("site-1", "site-2", "site-3"):
        assert (tmp_path / "ws" / site / "log.txt").read_text().count("Received message from") == 2


def test_a_run_that_fails_exits_non_zero_with_the_reason(tmp_path):
    folder = write_job(tmp_path / "jobs", [comp("no_such_module.Controller")], [{"executor": comp("x.Executor")}])
    proc = flarelite("simulator", folder, "-w", str(tmp_path / "ws"), "-n", "2")
    assert proc.returncode == 1
    assert "flarelite: error: run failed" in proc.stderr
    assert "'no_such_module.Controller' is not allowed" in proc.stderr
    assert "--allow-class no_such_module.Controller" in proc.stderr
    proc = flarelite("simulator", folder, "-w", str(tmp_path / "ws"), "-n", "2", "--allow-class", "no_such_module")
    assert proc.returncode == 1
    assert "cannot import module 'no_such_module'" in proc.stderr


def test_a_bad_job_folder_exits_non_zero(tmp_path):
    proc = flarelite("simulator", str(tmp_path / "missing"), "-w", str(tmp_path / "ws"))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr


@pytest.mark.skipif(shutil.which("flarelite") is None, reason="console script not installed (pip install -e .)")
def test_console_script_is_installed():
    proc = subprocess.run(["flarelite", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "simulator" in proc.stdout


def test_a_client_with_no_server_fails_in_one_clear_line_not_a_traceback(tmp_path):
    import socket as _socket

    probe = _socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    proc = subprocess.run(
        [sys.executable, "-m", "flarelite.cli", "client", "--name", "site-1", "--server", f"127.0.0.1:{port}"]
        + ["--connect-timeout", "2", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"could not reach the server at 127.0.0.1:{port} within 2.0s" in proc.stderr
    assert "Traceback" not in proc.stderr and "could not tell the server" not in proc.stderr


def _exported_hello(tmp_path):
    """jobs/hello-p2p exported under tmp_path/jobs: its folder."""
    export = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "hello-p2p", "job.py"), "--export", str(tmp_path / "jobs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr
    return export.stdout.strip().splitlines()[-1]


def _check(folder):
    return subprocess.run(
        [sys.executable, "-m", "flarelite.cli", "check", folder], capture_output=True, text=True, timeout=120
    )


def test_check_passes_a_good_job_and_names_what_would_fail(tmp_path):
    import json

    folder = _exported_hello(tmp_path)
    good = _check(folder)
    assert good.returncode == 0, good.stderr
    assert "every component of the 4 config(s) imports and takes its arguments" in good.stdout
    # a wrong argument in one config, the module gone from another app
    server_cfg = os.path.join(folder, "app_server", "config", "config_fed_server.json")
    with open(server_cfg) as f:
        cfg = json.load(f)
    cfg["workflows"][0]["args"] = {"no_such_option": 1}
    with open(server_cfg, "w") as f:
        json.dump(cfg, f)
    os.remove(os.path.join(folder, "app_site-2", "custom", "modules.py"))
    bad = _check(folder)
    assert bad.returncode == 1
    assert "workflows[0] (controller): modules.BasicController does not take these arguments" in bad.stderr
    assert "app 'app_site-2'" in bad.stderr and "neither in the app's custom/ folder nor installed" in bad.stderr
    assert "2 problem(s)" in bad.stderr and "Traceback" not in bad.stderr


def test_the_console_is_short_and_says_a_long_line_once_the_log_files_keep_everything(tmp_path):
    job = _exported_hello(tmp_path)
    ws = tmp_path / "ws"
    run = subprocess.run(
        [sys.executable, "-m", "flarelite.cli", "simulator", job, "-w", str(ws)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, FLARELITE_CONSOLE="short"),  # what a terminal gets; captured output stays NVFlare's
    )
    assert run.returncode == 0, run.stderr
    console = run.stderr
    assert "[site-1 <- site-2] Received message from site-2" in console
    assert "identity=" not in console and " - INFO - " not in console
    assert console.count("security mode clear") == 1  # said by the server and every site: shown once
    for site in ("server", "site-1", "site-2", "site-3"):
        log = (ws / site / "log.txt").read_text()
        assert "security mode clear" in log  # each site's own
    assert "[identity=site-1, run=" in (ws / "site-1" / "log.txt").read_text()
    piped = subprocess.run(
        [sys.executable, "-m", "flarelite.cli", "simulator", job, "-w", str(ws), "-p", "memory"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "FLARELITE_CONSOLE"},
    )
    assert " - P2PExecutor - INFO - [identity=site-1, run=simulate_job, peer=" in piped.stderr  # NVFlare's lines


def test_log_level_is_an_option_of_server_client_and_poc(tmp_path):
    for command in ("server", "client", "poc"):
        help_text = subprocess.run(
            [sys.executable, "-m", "flarelite.cli", command, "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        assert "-l LOG_CONFIG, --log-level LOG_CONFIG" in help_text, command
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "flarelite.cli",
            "server",
            "--address",
            "127.0.0.1:0",
            "-w",
            str(tmp_path),
            "-l",
            "loud",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "loud" in bad.stderr and "Traceback" not in bad.stderr
