"""Write one-app job folders for the benchmarks (no FedJob needed)."""

from __future__ import annotations

import json
import os
import shutil

COMPONENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_components.py")


def write_job(root: str, workflow: dict, executor: dict, name: str) -> str:
    """A job folder ``root/name`` with one app for all sites; bench_components.py goes in its custom/ folder,
    so that site processes (processes modes) can import the components too."""
    folder = os.path.join(root, name)
    config = os.path.join(folder, "app", "config")
    os.makedirs(config, exist_ok=True)
    os.makedirs(os.path.join(folder, "app", "custom"), exist_ok=True)
    shutil.copy(COMPONENTS, os.path.join(folder, "app", "custom"))
    with open(os.path.join(config, "config_fed_server.json"), "w") as f:
        json.dump({"format_version": 2, "workflows": [dict(workflow, id="controller")], "components": []}, f)
    with open(os.path.join(config, "config_fed_client.json"), "w") as f:
        json.dump({"format_version": 2, "executors": [{"tasks": ["*"], "executor": executor}], "components": []}, f)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"name": name, "resource_spec": {}, "min_clients": 1, "deploy_map": {"app": ["@ALL"]}}, f)
    return folder
