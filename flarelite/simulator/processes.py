"""The simulator's processes mode: the server and every client site as separate processes over gRPC."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ..apis.fl_constant import SiteType
from ..errors import ConfigError, RunFailedError
from ..launch import RESULT_FILE

_log = logging.getLogger("flarelite.simulator")
_UNIX_PATH_MAX = 100  # sun_path holds 108 bytes on Linux; keep a margin


def server_address(protocol: str, workspace: str) -> tuple[str, str | None]:
    """Where the server listens: a Unix socket in the workspace (or a short temp dir), or a free loopback port."""
    if protocol == "unix":
        path = os.path.join(workspace, "server.sock")
        tmp = None
        if len(path) > _UNIX_PATH_MAX:
            tmp = tempfile.mkdtemp(prefix="flarelite-")
            path = os.path.join(tmp, "server.sock")
        if os.path.exists(path):
            os.unlink(path)
        return f"unix://{path}", tmp
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}", None


def provision_certs(workspace: str, names: list[str]) -> str:
    """Make a CA and certificates for the server and ``names`` in ``workspace/certs``; return the folder."""
    from ..certs import init_ca, issue

    folder = os.path.join(workspace, "certs")
    init_ca(folder, project="flarelite-simulator", force=True)
    issue(folder, SiteType.SERVER, kind="server", force=True)
    for name in names:
        issue(folder, name, kind="client", force=True)
    return folder


def _pump(proc: subprocess.Popen, sink: object) -> None:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, ""):
        sink.write(line)  # type: ignore[attr-defined]
    proc.stdout.close()


def run_processes(
    job_folder: str,
    workspace: str,
    names: list[str],
    *,
    protocol: str,
    tls: str,
    job_id: str,
    ready_timeout: float,
    end_timeout: float,
    direct_p2p: bool = False,
) -> int:
    """Start the server and one process per client, stream their console output, and wait for the run's end.

    As in a deployment, each client receives its app (config and custom code) from the server; each site
    process works in ``workspace/<site>``.

    Raises:
        RunFailedError: a site failed or its process died; the message says which and why.
    """
    if tls not in ("clear", "tls", "mtls"):
        raise ConfigError(f"tls must be 'clear', 'tls' or 'mtls', got {tls!r}")
    address, tmp = server_address(protocol, workspace)
    certs = provision_certs(workspace, names) if tls != "clear" else None
    common = ["-w", workspace, "--mode", tls, "--job-id", job_id] + (["--certs", certs] if certs else [])
    # as in a deployment, the clients get their app from the server (and do not parse the job themselves)
    server_cmd = ["server", job_folder, *common, "--listen", address, "--clients", ",".join(names)]
    commands = {SiteType.SERVER: [*server_cmd, "--ready-timeout", str(ready_timeout)]}
    for name in names:
        commands[name] = ["client", *common, "--name", name, "--server", address]
        if direct_p2p:
            commands[name].append("--direct-p2p")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: dict[str, subprocess.Popen] = {}
    pumps = []
    try:
        for name, args in commands.items():
            folder = os.path.join(workspace, name)
            os.makedirs(folder, exist_ok=True)
            results = os.path.join(folder, RESULT_FILE)
            if os.path.exists(results):
                os.unlink(results)
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "flarelite.launch", *args],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            pump = threading.Thread(target=_pump, args=(procs[name], sys.stderr), daemon=True)
            pump.start()
            pumps.append(pump)
        codes = _wait(procs, end_timeout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pump in pumps:
            pump.join(5)
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    problems: list[tuple[str, str]] = []  # (site, what went wrong there), the server's first
    for name, code in sorted(codes.items(), key=lambda item: item[0] != SiteType.SERVER):
        if code == 0:
            continue
        reason = _reason(os.path.join(workspace, name, RESULT_FILE))
        if code < 0:
            problems.append((name, f"process killed by signal {-code}"))
        elif reason and any(reason in seen or seen in reason for _, seen in problems):
            continue  # the server told every site why the run ended: say it once
        else:
            problems.append((name, reason or f"process exited with status {code} (see {workspace}/{name}/log.txt)"))
    if len(problems) == 1:
        raise RunFailedError(problems[0][1], site=problems[0][0])
    if problems:
        raise RunFailedError("; ".join(f"{name}: {what}" for name, what in problems))
    return 0


def _wait(procs: dict[str, subprocess.Popen], end_timeout: float) -> dict[str, int]:
    """Wait for the server; then give the clients time to finish before they are killed.

    After a successful run the clients get ``end_timeout``; after a failed one only a few seconds, since a
    client that never reached the server would otherwise wait for it in vain.
    """
    server = procs[SiteType.SERVER]
    while server.poll() is None:
        try:
            server.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + (end_timeout if server.returncode == 0 else min(end_timeout, 3.0))
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.error("%s did not end within %ss of the server; stopping it", name, end_timeout)
            proc.kill()
            proc.wait()
    return {name: proc.returncode for name, proc in procs.items()}


def _reason(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("failure")
    except (OSError, ValueError):
        return None
