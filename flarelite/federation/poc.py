"""``flarelite poc prepare|start|stop|clean``: a long-lived federation on this machine, as NVFlare's POC commands.

``prepare -n N`` makes the POC workspace ``WS`` (default ``/tmp/flarelite/poc``): certificates for the server,
``site-1..site-N`` and the admin ``admin@flarelite`` (``WS/certs``, mTLS by default), a free port on 127.0.0.1,
and ``WS/poc.json`` recording them. ``start`` runs the server and the sites as background processes (their output
in ``WS/<name>/console.txt``, their process ids in ``WS/pids.json``) and returns once every site is connected;
``stop`` ends them; ``clean`` stops them and removes ``WS``. Every ``flarelite job ...`` command and
``flarelite.admin.Session(workspace=WS)`` reach the POC's server with ``-w WS`` alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from ..errors import ConfigError

DEFAULT_WS = "/tmp/flarelite/poc"
ADMIN = "admin@flarelite"
PIDS = "pids.json"


def _settings_path(ws: str) -> str:
    from ..admin.session import POC_FILE

    return os.path.join(ws, POC_FILE)


def prepare(ws: str, n: int, *, mode: str = "mtls", force: bool = False) -> dict:
    """Make the POC workspace ``ws`` for ``n`` sites; return its settings.

    Raises:
        ConfigError: ``ws`` holds something already (and not ``force``), or ``n`` < 1.
    """
    from ..certs import issue, provision

    ws = os.path.abspath(ws)
    if n < 1:
        raise ConfigError(f"a POC needs at least one site, got -n {n}")
    if os.path.isdir(ws) and os.listdir(ws):
        if not force:
            raise ConfigError(
                f"{ws} is not empty; `flarelite poc clean -w {ws}` removes it (or pass --force to replace it)"
            )
        stop(ws, quiet=True)
        shutil.rmtree(ws)
    os.makedirs(ws, exist_ok=True)
    sites = [f"site-{i}" for i in range(1, n + 1)]
    certs = None
    if mode != "clear":
        project = os.path.join(ws, "project.json")
        with open(project, "w", encoding="utf-8") as f:
            json.dump({"name": "flarelite-poc", "server": {"name": "server"}, "clients": sites}, f)
        certs = os.path.join(ws, "certs")
        provision(project, certs)
        issue(certs, ADMIN, "admin")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = {
        "address": f"127.0.0.1:{port}",
        "mode": mode,
        "certs": certs,
        "admin": ADMIN,
        "sites": sites,
        "workspace": ws,
    }
    with open(_settings_path(ws), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)
    return settings


def _security(settings: dict) -> list[str]:
    mode = settings["mode"]
    return [] if mode == "clear" else [f"--{mode}", "--certs", settings["certs"]]


def _running(ws: str) -> dict[str, int]:
    try:
        with open(os.path.join(ws, PIDS), encoding="utf-8") as f:
            pids = json.load(f)
    except (OSError, ValueError):
        return {}
    alive = {}
    for name, pid in pids.items():
        try:
            pid = int(pid)
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    continue  # a child of this process that has ended (started by start() here)
            except ChildProcessError:
                pass
            os.kill(pid, 0)
            alive[name] = pid
        except (OSError, ValueError):
            pass
    return alive


def start(ws: str, timeout: float = 60.0) -> dict:
    """Start the POC's server and sites in the background; return once every site is connected.

    Raises:
        ConfigError: no POC in ``ws``, or it is running already; RunFailedError-like ConfigError when the
            federation does not come up within ``timeout`` (its console files are named).
    """
    from ..admin.session import Session, poc_settings

    ws = os.path.abspath(ws)
    settings = poc_settings(ws)
    if _running(ws):
        raise ConfigError(f"the POC in {ws} is running already (`flarelite poc stop -w {ws}` ends it)")
    cli = [sys.executable, "-m", "flarelite.cli"]
    procs: dict[str, int] = {}

    def launch(name: str, args: list[str]) -> None:
        folder = os.path.join(ws, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "console.txt"), "ab") as console:
            proc = subprocess.Popen(
                [*cli, *args],
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # it outlives this command; `poc stop` ends its process group
            )
        procs[name] = proc.pid

    security = _security(settings)
    launch("server", ["server", "--address", settings["address"], "-w", os.path.join(ws, "server"), *security])
    for site in settings["sites"]:
        extra = security or ["--allow-custom-code"]  # clear mode: the POC's own server is trusted
        launch(site, ["client", "--name", site, "--server", settings["address"], "-w", ws, *extra])
    with open(os.path.join(ws, PIDS), "w", encoding="utf-8") as f:
        json.dump(procs, f)
    deadline = time.monotonic() + timeout
    try:
        with Session(workspace=ws, timeout=timeout) as session:
            while True:
                connected = {s["name"] for s in session.get_system_info()["sites"] if s["connected"]}
                if set(settings["sites"]) <= connected:
                    return settings
                if time.monotonic() > deadline:
                    missing = sorted(set(settings["sites"]) - connected)
                    raise ConfigError(f"sites {missing} did not connect within {timeout:.0f}s")
                time.sleep(0.2)
    except Exception as exc:
        stop(ws, quiet=True)
        raise ConfigError(f"the POC did not start: {exc}; see {ws}/<name>/console.txt") from None


def stop(ws: str, quiet: bool = False) -> list[str]:
    """Stop the POC's processes (SIGTERM, a kill after 20 s); return the names that were running."""
    ws = os.path.abspath(ws)
    running = _running(ws)
    for pid in running.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _running(ws):
        time.sleep(0.1)
    for pid in _running(ws).values():
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.unlink(os.path.join(ws, PIDS))
    except OSError:
        pass
    return sorted(running)


def clean(ws: str) -> None:
    """Stop the POC and remove its workspace (only a folder that ``prepare`` made).

    Raises:
        ConfigError: ``ws`` is not a POC workspace.
    """
    ws = os.path.abspath(ws)
    if not os.path.exists(ws):
        return
    if not os.path.exists(_settings_path(ws)):
        raise ConfigError(f"{ws} is not a POC workspace (no poc.json): it is left as it is")
    stop(ws, quiet=True)
    shutil.rmtree(ws)
