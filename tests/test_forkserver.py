"""The simulator's fork server: site processes forked from one process that imported flarelite (and torch when
the job may use it) once; what the simulator needs of subprocess.Popen; and the fallback without it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from support import alive

from flarelite.simulator import processes
from flarelite.simulator.forkserver import FORKSERVER_ENV, ForkServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def forks():
    server = ForkServer(dict(os.environ, PYTHONUNBUFFERED="1"), [])
    yield server
    server.close()


def test_a_forked_site_runs_the_launch_command_with_its_output_on_a_pipe(forks, tmp_path):
    proc = forks.start(["client", "--no-such-option"], str(tmp_path), dict(os.environ, MARK="1"))
    assert proc.wait(30) == 2  # argparse's status, as `python -m flarelite.launch client --no-such-option`
    out = proc.stdout.read()
    assert "usage: python -m flarelite.launch client" in out and "arguments are required: -w/--workspace" in out
    assert proc.poll() == 2 and proc.returncode == 2


def test_a_waiting_site_is_stopped_and_killed_like_a_popen(forks, tmp_path):
    args = ["client", "-w", str(tmp_path), "--name", "site-1", "--server", f"unix://{tmp_path}/none.sock"]
    args += ["--connect-timeout", "60", "--parent-pid", str(forks.pid)]
    proc = forks.start(args, str(tmp_path), dict(os.environ))
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.5)
    assert proc.poll() is None and alive(proc.pid)
    with open(f"/proc/{proc.pid}/comm") as f:
        assert f.read().strip() == "fl site-1"
    assert os.getsid(proc.pid) == proc.pid  # a session of its own: a Ctrl-C reaches the simulator only
    proc.kill()
    assert proc.wait(10) == -signal.SIGKILL
    again = forks.start(args, str(tmp_path), dict(os.environ))
    again.terminate()  # SIGTERM: the site stops itself
    assert again.wait(15) in (0, 1, 128 + signal.SIGTERM, -signal.SIGTERM)


def test_the_sites_end_with_the_fork_server(tmp_path):
    server = ForkServer(dict(os.environ), [])
    args = ["client", "-w", str(tmp_path), "--name", "site-1", "--server", f"unix://{tmp_path}/none.sock"]
    proc = server.start([*args, "--connect-timeout", "60", "--parent-pid", str(server.pid)], str(tmp_path), {})
    time.sleep(1.0)  # its parent watch is in place
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(10)
    deadline = time.monotonic() + 15
    while alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(proc.pid)
    assert proc.wait(5) is not None  # its Forked knows it is gone
    server.close()


def test_torch_is_preloaded_only_for_jobs_that_may_use_it(tmp_path):
    plain = tmp_path / "plain" / "app" / "config"
    plain.mkdir(parents=True)
    (plain / "config_fed_client.json").write_text('{"executors": [{"executor": {"path": "my.Executor"}}]}')
    assert not processes._may_use_torch(str(tmp_path / "plain"))
    custom = tmp_path / "pt" / "app" / "custom"
    custom.mkdir(parents=True)
    (custom / "net.py").write_text("import torch\n")
    p2p = tmp_path / "p2p" / "app" / "config"
    p2p.mkdir(parents=True)
    (p2p / "config_fed_client.json").write_text('{"path": "flarelite.app_opt.p2p.executors.DGDExecutor"}')
    consensus = tmp_path / "consensus" / "app" / "config"  # writes its .pt history without torch
    consensus.mkdir(parents=True)
    (consensus / "config_fed_client.json").write_text('{"path": "flarelite.app_opt.p2p.executors.ConsensusExecutor"}')
    has_torch = pytest.importorskip("torch") is not None
    assert processes._may_use_torch(str(tmp_path / "pt")) == has_torch
    assert processes._may_use_torch(str(tmp_path / "p2p")) == has_torch
    assert not processes._may_use_torch(str(tmp_path / "consensus"))


def test_without_the_fork_server_the_sites_start_on_their_own(tmp_path, monkeypatch):
    monkeypatch.setenv(FORKSERVER_ENV, "0")
    assert processes._fork_server(dict(os.environ), str(tmp_path)) is None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    job = os.path.join(root, "jobs", "hello-p2p", "job.py")
    command = [sys.executable, job, "--workspace", str(tmp_path / "ws")]
    done = subprocess.run(command, env=dict(os.environ), timeout=90, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = [(tmp_path / "ws" / f"site-{i}" / "log.txt").read_text() for i in (1, 2, 3)]
    assert sum(log.count("Received message") for log in logs) == 6
