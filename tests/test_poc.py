"""``flarelite poc prepare|start|stop|clean`` (NVFlare's POC commands): a local long-lived federation with
certificates (mTLS) and an admin, a job submitted with ``-w WS`` alone, stopped and removed with one command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "federation_fixtures"))
from federation import export_hello_p2p  # noqa: E402

pytestmark = pytest.mark.timeout(300)
CLI = [sys.executable, "-m", "flarelite.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_poc_prepare_start_submit_stop_clean(short_dir):
    ws = os.path.join(short_dir, "poc")
    prepared = run("poc", "prepare", "-n", "3", "-w", ws)
    assert prepared.returncode == 0, prepared.stderr
    settings = json.load(open(os.path.join(ws, "poc.json")))
    assert settings["mode"] == "mtls" and settings["sites"] == ["site-1", "site-2", "site-3"]
    assert {"ca.crt", "server.crt", "site-3.key", "admin@flarelite.crt"} <= set(os.listdir(settings["certs"]))
    again = run("poc", "prepare", "-n", "3", "-w", ws)
    assert again.returncode == 1 and "is not empty" in again.stderr and "poc clean" in again.stderr
    try:
        started = run("poc", "start", "-w", ws)
        assert started.returncode == 0, started.stderr
        assert "POC running" in started.stdout
        twice = run("poc", "start", "-w", ws)
        assert twice.returncode == 1 and "running already" in twice.stderr
        hello = export_hello_p2p(os.path.join(short_dir, "jobs"))
        submitted = run("job", "submit", hello, "-w", ws, "--wait")
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]
        assert "FINISHED:COMPLETED" in submitted.stdout
        out = os.path.join(short_dir, "out")
        assert run("job", "download", job_id, "-w", ws, "-o", out).returncode == 0
        logs = [os.path.join(out, job_id, "workspace", f"site-{i}", "log.txt") for i in (1, 2, 3)]
        assert sum(open(p).read().count("Received message") for p in logs) == 6
    finally:
        stopped = run("poc", "stop", "-w", ws)
    assert stopped.returncode == 0 and "POC stopped (server, site-1, site-2, site-3)" in stopped.stdout
    assert not os.path.exists(os.path.join(ws, "pids.json"))
    assert run("poc", "stop", "-w", ws).stdout.startswith("flarelite: no POC running")
    assert run("poc", "clean", "-w", ws).returncode == 0 and not os.path.exists(ws)


def test_poc_clean_leaves_a_folder_it_did_not_make(short_dir):
    cleaned = run("poc", "clean", "-w", short_dir)
    assert cleaned.returncode == 1 and "not a POC workspace" in cleaned.stderr
    assert os.path.isdir(short_dir)
    missing = run("job", "list", "-w", short_dir)
    assert missing.returncode == 1 and "holds no POC" in missing.stderr and "poc prepare" in missing.stderr
