"""Shipping a client's app (its config and custom code) from the server, and installing it at the site."""

from __future__ import annotations

import os
import posixpath
import sys
from typing import Any

from ..errors import ConfigError

MAX_APP_BYTES = 256 << 20  # an app larger than this is refused (custom code, not data)


def pack_app(app_name: str, client_config: dict, custom_dir: str) -> dict:
    """The app of one client as a codec-friendly dict: its config and every file under ``custom_dir``."""
    files: dict[str, bytes] = {}
    total = 0
    if os.path.isdir(custom_dir):
        for root, dirs, names in os.walk(custom_dir):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".pyc"):
                    continue
                path = os.path.join(root, name)
                rel = os.path.relpath(path, custom_dir).replace(os.sep, "/")
                with open(path, "rb") as f:
                    data = f.read()
                total += len(data)
                if total > MAX_APP_BYTES:
                    raise ConfigError(f"app {app_name!r}: custom/ holds more than {MAX_APP_BYTES} bytes")
                files[rel] = data
    return {"name": app_name, "client": client_config, "custom": files}


def _safe_relpath(rel: Any) -> str:
    if not isinstance(rel, str) or not rel:
        raise ConfigError(f"shipped app: file name {rel!r} is not a non-empty str")
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or "\\" in rel or norm.startswith("..") or norm != rel or ":" in rel:
        raise ConfigError(f"shipped app: file name {rel!r} is not a plain relative path")
    return norm


def install_app(payload: dict, run_dir: str, site: str) -> dict:
    """Write a shipped app under ``run_dir/<app name>/custom``, put that on sys.path, return its client config.

    Raises:
        ConfigError: the payload is malformed or names a file outside the app folder.
    """
    name = payload.get("name")
    config = payload.get("client")
    files = payload.get("custom", {})
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{site}: the shipped app has an invalid name {name!r}")
    if not isinstance(config, dict) or not isinstance(files, dict):
        raise ConfigError(f"{site}: the shipped app {name!r} is malformed (config or files missing)")
    custom = os.path.join(os.path.abspath(run_dir), name, "custom")
    os.makedirs(custom, exist_ok=True)
    for rel, data in files.items():
        rel = _safe_relpath(rel)
        if not isinstance(data, (bytes, bytearray)):
            raise ConfigError(f"{site}: shipped file {rel!r} is {type(data).__name__}, not bytes")
        path = os.path.join(custom, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    if custom not in sys.path:
        sys.path.insert(0, custom)
    return config
