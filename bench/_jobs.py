"""Write one-app job folders for the benchmarks (no FedJob needed)."""

from __future__ import annotations

import json
import os


def write_job(root: str, workflow: dict, executor: dict, name: str) -> str:
    folder = os.path.join(root, name)
    config = os.path.join(folder, "app", "config")
    os.makedirs(config, exist_ok=True)
    with open(os.path.join(config, "config_fed_server.json"), "w") as f:
        json.dump({"format_version": 2, "workflows": [dict(workflow, id="controller")], "components": []}, f)
    with open(os.path.join(config, "config_fed_client.json"), "w") as f:
        json.dump({"format_version": 2, "executors": [{"tasks": ["*"], "executor": executor}], "components": []}, f)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"name": name, "resource_spec": {}, "min_clients": 1, "deploy_map": {"app": ["@ALL"]}}, f)
    return folder
