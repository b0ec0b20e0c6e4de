"""Helpers for runtime tests: write job folders by hand and run them in the in-process simulator."""

from __future__ import annotations

import json
import os

from flarelite.simulator.runner import run_simulation


def comp(path: str, **args) -> dict:
    return {"path": path, "args": args}


def write_job(root, workflows: list[dict], executors: list[dict], name: str = "test_job", min_clients: int = 1) -> str:
    """Write a one-app job (deployed to @ALL) and return its folder."""
    folder = os.path.join(str(root), name)
    config = os.path.join(folder, "app", "config")
    os.makedirs(config, exist_ok=True)
    server = {
        "format_version": 2,
        "workflows": [dict(w, id=w.get("id", f"wf{i}")) for i, w in enumerate(workflows)],
        "components": [],
    }
    client = {"format_version": 2, "executors": executors, "components": []}
    with open(os.path.join(config, "config_fed_server.json"), "w") as f:
        json.dump(server, f)
    with open(os.path.join(config, "config_fed_client.json"), "w") as f:
        json.dump(client, f)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"name": name, "resource_spec": {}, "min_clients": min_clients, "deploy_map": {"app": ["@ALL"]}}, f)
    return folder


def run_job(tmp_path, workflows, executors, n_clients=3, **kwargs) -> int:
    folder = write_job(tmp_path / "jobs", workflows, executors)
    kwargs.setdefault("protocol", "memory")  # the components report to the test through module state
    kwargs.setdefault("ready_timeout", 20)
    kwargs.setdefault("end_timeout", 10)
    kwargs.setdefault("allowed_classes", ["sim_components"])  # tests/sim_components.py: not in the job's custom/
    return run_simulation(folder, str(tmp_path / "ws"), n_clients=n_clients, **kwargs)


def read_log(tmp_path, site: str) -> str:
    with open(tmp_path / "ws" / site / "log.txt", encoding="utf-8") as f:
        return f.read()


def wait_for(check, timeout: float = 5.0) -> None:
    """Return once ``check()`` is true; AssertionError after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
