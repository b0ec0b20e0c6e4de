"""The example jobs in jobs/ run as a user runs them: python jobs/<name>/job.py."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_job_script(name, *args):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", name, "job.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_hello_p2p(tmp_path):
    for timeout in ("10", "0"):
        out = run_job_script("hello-p2p", "--workspace", str(tmp_path / f"ws{timeout}"), "--timeout", timeout)
        assert out.count("Received message from") == 6


def test_hello_tasks(tmp_path):
    out = run_job_script("hello-tasks", "--workspace", str(tmp_path / "ws"))
    assert "broadcast done (ok): sum of answers = 33" in out
    assert "send done: site-2 answered {'name': 'site-2'}" in out
    assert "relay done through ['site-1', 'site-2', 'site-3']: value = 3" in out
    server_log = (tmp_path / "ws" / "server" / "log.txt").read_text()
    assert server_log.count("add_one: site-") == 6  # 3 broadcast results, 3 relay results
