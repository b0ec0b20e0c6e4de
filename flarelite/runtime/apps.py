"""Shipping a client's app (its config and custom code) from the server, and installing it at the site.

What the server ships is written only inside the site's app folder, which is made fresh for each run:
file names must be plain relative paths (no ``..``, no absolute paths, no NUL, at most 255 bytes a part),
may not collide (a file and a folder of the same name), and nothing is written through a symlink (every
folder is opened with ``O_NOFOLLOW`` and every file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import stat
import sys
from typing import Any

from ..apis.fl_constant import JobConstants
from ..errors import ConfigError

MAX_APP_BYTES = 256 << 20  # an app larger than this is refused (custom code, not data)
MAX_APP_FILES = 10_000
MAX_NAME_BYTES = 255  # one part of a path
MAX_PATH_BYTES = 1024
MAX_DEPTH = 32  # folders in one shipped path
RESERVED_APP_NAMES = {"local", "startup"}  # the site's own folders, never replaced by a shipped app
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


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


def shipped_files(payload: dict) -> list[str]:
    """The names of the custom/ files in a shipped app (empty when it brings no code)."""
    files = payload.get("custom") if isinstance(payload, dict) else None
    return sorted(str(k) for k in files) if isinstance(files, dict) else []


def _safe_relpath(rel: Any, site: str) -> tuple[str, ...]:
    """The parts of ``rel`` if it is a plain relative path; else ConfigError naming the file."""
    shown = repr(rel) if not isinstance(rel, str) or len(rel) <= 200 else repr(rel[:200]) + "..."
    if not isinstance(rel, str) or not rel:
        raise ConfigError(f"{site}: shipped file name {shown} is not a non-empty str")
    why = ""
    if "\x00" in rel or any(ord(c) < 32 or ord(c) == 127 for c in rel):
        why = "it holds a NUL or control character"
    elif rel.startswith("/") or "\\" in rel or ":" in rel:
        why = "it is absolute or holds a backslash or colon"
    elif posixpath.normpath(rel) != rel or any(p in ("", ".", "..") for p in rel.split("/")):
        why = "it is not normalised (it holds '..', '.', or an empty part)"
    elif not _encodable(rel):
        why = "it cannot be encoded as a file name on this system"
    elif len(os.fsencode(rel)) > MAX_PATH_BYTES:
        why = f"it is longer than {MAX_PATH_BYTES} bytes"
    elif any(len(os.fsencode(p)) > MAX_NAME_BYTES for p in rel.split("/")):
        why = f"a part of it is longer than {MAX_NAME_BYTES} bytes"
    elif rel.count("/") >= MAX_DEPTH:
        why = f"it is nested more than {MAX_DEPTH} folders deep"
    if why:
        raise ConfigError(f"{site}: shipped file name {shown} is not a plain relative path: {why}")
    return tuple(rel.split("/"))


def _encodable(name: str) -> bool:
    try:
        os.fsencode(name)
    except UnicodeError:
        return False
    return True


def _printable(name: str) -> str:
    text = name if name.isprintable() else repr(name)
    return text if len(text) <= 100 else text[:100] + "..."


def _check_names(files: dict, site: str, app: str) -> list[tuple[tuple[str, ...], bytes]]:
    if len(files) > MAX_APP_FILES:
        raise ConfigError(f"{site}: the shipped app {app!r} has {len(files)} files, more than {MAX_APP_FILES}")
    entries: list[tuple[tuple[str, ...], bytes]] = []
    seen: dict[tuple[str, ...], str] = {}
    total = 0
    for rel, data in files.items():
        parts = _safe_relpath(rel, site)
        if not isinstance(data, (bytes, bytearray)):
            raise ConfigError(f"{site}: shipped file {rel!r} is {type(data).__name__}, not bytes")
        total += len(data)
        if total > MAX_APP_BYTES:
            raise ConfigError(f"{site}: the shipped app {app!r} holds more than {MAX_APP_BYTES} bytes")
        if parts in seen:
            raise ConfigError(f"{site}: shipped files {seen[parts]!r} and {rel!r} have the same path")
        seen[parts] = rel
        entries.append((parts, bytes(data)))
    for parts, _ in entries:
        for i in range(1, len(parts)):
            if parts[:i] in seen:
                raise ConfigError(
                    f"{site}: shipped file {seen[parts[:i]]!r} collides with the folder of {'/'.join(parts)!r}"
                )
    return entries


def _fresh_dir(parent: str, name: str) -> None:
    """Make ``parent/name`` an empty folder: whatever is there (a link, a file, a folder) is removed first."""
    path = os.path.join(parent, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # does not follow the symlinks inside (os.scandir + fd-based removal)
        else:
            os.unlink(path)  # a symlink is removed, never followed
    os.mkdir(path, 0o700)


def _write_tree(root: str, entries: list[tuple[tuple[str, ...], bytes]], site: str) -> None:
    """Write ``entries`` under ``root`` without following any symlink (folders via O_NOFOLLOW dir fds)."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        for parts, data in entries:
            fds = [root_fd]
            try:
                for part in parts[:-1]:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fds[-1])
                    except FileExistsError:
                        pass
                    fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
                fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=fds[-1])
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as exc:
                raise ConfigError(
                    f"{site}: cannot write shipped file {'/'.join(parts)!r} inside {root}: {exc} (a symlink or an "
                    "existing file is in the way; shipped files are written only as new plain files)"
                ) from exc
            finally:
                for fd_ in fds[1:]:
                    os.close(fd_)
    finally:
        os.close(root_fd)


def install_app(payload: dict, run_dir: str, site: str) -> dict:
    """Write a shipped app under ``run_dir/<app name>/`` (custom/ and config/, made fresh); return its config.

    custom/ goes on sys.path; config/ holds the client config as JSON, where NVFlare keeps it.

    Raises:
        ConfigError: the payload is malformed, or a file name is not a plain relative path, collides with
            another, or would be written through a symlink; the message names the file.
    """
    if not isinstance(payload, dict):
        raise ConfigError(f"{site}: the shipped app is {type(payload).__name__}, not a dict")
    name = payload.get("name")
    config = payload.get("client")
    files = payload.get("custom", {})
    if not isinstance(name, str) or not _APP_NAME.fullmatch(name) or name in RESERVED_APP_NAMES:
        raise ConfigError(
            f"{site}: the shipped app has an invalid name {name!r} (letters, digits, '_', '.', '-'; not "
            f"{sorted(RESERVED_APP_NAMES)})"
        )
    if not isinstance(config, dict) or not isinstance(files, dict):
        raise ConfigError(f"{site}: the shipped app {name!r} is malformed (config or files missing)")
    entries = _check_names(files, site, name)
    run_dir = os.path.abspath(run_dir)
    _fresh_dir(run_dir, name)
    app_dir = os.path.join(run_dir, name)
    os.mkdir(os.path.join(app_dir, "custom"), 0o700)
    custom = os.path.join(app_dir, "custom")
    _write_tree(custom, entries, site)
    config_dir = os.path.join(app_dir, "config")
    os.mkdir(config_dir, 0o700)
    with open(os.path.join(config_dir, JobConstants.CLIENT_JOB_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)  # what the site runs, where NVFlare keeps it (the config is plain JSON)
    if custom not in sys.path:
        sys.path.insert(0, custom)
    return config


def app_custom_dir(run_dir: str, payload: dict) -> str:
    """Where ``install_app`` put the shipped app's custom/ folder."""
    return os.path.join(os.path.abspath(run_dir), str(payload.get("name")), "custom")


def custom_code_refusal(payload: dict, site: str) -> str | None:
    """Why ``site`` refuses the shipped app (it brings custom/ code from an unauthenticated server), or None."""
    names = shipped_files(payload)
    if not names:
        return None
    shown = ", ".join(map(_printable, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{site} refused the custom code the server shipped ({shown}): the server is not authenticated "
        "(clear mode), and running its code means running whatever it sends. Connect with --tls or --mtls "
        "against the project CA, or start the site with --allow-custom-code (allow_custom_code=True) to "
        "run it anyway"
    )


def copy_app(app_path: str, run_dir: str) -> str:
    """Copy a local app folder (``config/``, ``custom/``) to ``run_dir/<its name>`` (made fresh); return that path.

    A site then keeps its app, and what the app writes next to it (a saved global model, a training script's
    files), in its own run folder, as a site that received its app from the server does.
    """
    name = os.path.basename(os.path.normpath(app_path))
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    _fresh_dir(run_dir, name)
    dest = os.path.join(run_dir, name)
    shutil.copytree(app_path, dest, symlinks=True, dirs_exist_ok=True)
    return dest
