"""A workspace that holds an earlier run: the next run moves it to WS/.previous-N (never mixes with it), keeps
what the operator put in <site>/local/, keeps the last 3; the simulator's default workspace is fresh per run."""

from __future__ import annotations

import os
import subprocess
import sys

from flarelite.simulator.previous_runs import holds_a_run, set_aside

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "federation_fixtures"))
from federation import export_hello_p2p  # noqa: E402


def fake_run(ws, marker="old"):
    os.makedirs(ws / "server", exist_ok=True)
    (ws / "server" / "run_result.json").write_text(marker)
    os.makedirs(ws / "site-1" / "local", exist_ok=True)
    (ws / "site-1" / "log.txt").write_text(marker)
    (ws / "site-1" / "local" / "resources.json").write_text('{"class_allow_list": ["torch.nn"]}')


def test_an_earlier_run_is_moved_aside_and_local_config_stays(tmp_path):
    ws = tmp_path / "ws"
    assert set_aside(str(ws)) is None and not holds_a_run(str(ws))
    (tmp_path / "ws").mkdir()
    (ws / "notes.txt").write_text("mine")
    assert set_aside(str(ws)) is None  # no run in it: nothing moves
    fake_run(ws, "first")
    moved = set_aside(str(ws))
    assert moved == str(ws / ".previous-1")
    assert (ws / ".previous-1" / "server" / "run_result.json").read_text() == "first"
    assert (ws / ".previous-1" / "notes.txt").exists() and not (ws / "notes.txt").exists()
    assert not (ws / "server").exists() and not (ws / "site-1" / "log.txt").exists()
    assert (ws / "site-1" / "local" / "resources.json").exists()  # the operator's config stays
    assert not holds_a_run(str(ws))
    for i in range(2, 6):
        fake_run(ws, f"run {i}")
        assert set_aside(str(ws)) == str(ws / f".previous-{i}")
    assert sorted(p for p in os.listdir(ws) if p.startswith(".previous")) == [
        ".previous-3",
        ".previous-4",
        ".previous-5",
    ]


def test_the_simulator_moves_an_earlier_run_and_its_default_workspace_is_fresh(tmp_path):
    job = export_hello_p2p(str(tmp_path / "jobs"))
    ws = tmp_path / "ws"
    cli = [sys.executable, "-m", "flarelite.cli", "simulator", job, "-w", str(ws), "-p", "memory"]
    assert subprocess.run(cli, capture_output=True, timeout=120).returncode == 0
    second = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0
    assert f"held an earlier run: moved it to {ws}/.previous-1" in second.stderr
    assert (ws / ".previous-1" / "server" / "log.txt").exists() and (ws / "server" / "log.txt").exists()
    fresh = subprocess.run(cli[:5] + ["-p", "memory"], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0
    first_line = fresh.stdout.splitlines()[0]
    assert first_line.startswith("flarelite: workspace /tmp/flarelite/simulate_job/hello-p2p-")
    folder = first_line.split()[-1]
    try:
        assert os.path.exists(os.path.join(folder, "server", "log.txt"))
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
