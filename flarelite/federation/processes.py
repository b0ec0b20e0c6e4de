"""The job processes the long-lived server and its sites start (``python -m flarelite.launch``) and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

ABORT_GRACE = 10.0  # seconds a job process has after SIGTERM before it is killed


def launch_command(role: str, *args: str, options: Any) -> list[str]:
    """``python -m flarelite.launch ROLE ARGS`` with the options every job process gets from ``options`` (the
    server or site starting it: its ``mode``, ``certs``, ``allowed_classes``, ``max_message_size``,
    ``log_config``)."""
    cmd = [sys.executable, "-m", "flarelite.launch", role, *args, "--parent-pid", str(os.getpid())]
    if options.mode != "clear":
        cmd += [f"--{options.mode}", "--certs", os.fspath(options.certs or "")]
    for prefix in options.allowed_classes:
        cmd += ["--allow-class", prefix]
    if options.max_message_size:
        cmd += ["--max-message-size", str(options.max_message_size)]
    if getattr(options, "log_config", None):
        cmd += ["--log-config", options.log_config]
    return cmd


def start(cmd: list[str], console_path: str) -> subprocess.Popen:
    """Start ``cmd`` with its output appended to ``console_path``.

    Raises:
        OSError: it cannot start.
    """
    with open(console_path, "ab") as console:
        return subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def terminate(proc: subprocess.Popen, wait: bool = True) -> None:
    """SIGTERM ``proc``; kill it if it still runs ``ABORT_GRACE`` seconds later (waiting for that, or not)."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
    except OSError:
        return

    def reap() -> None:
        try:
            proc.wait(ABORT_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    if wait:
        reap()
    else:
        threading.Thread(target=reap, daemon=True).start()


def terminate_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process of ``procs`` at once; wait for them, killing those still there after ABORT_GRACE."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
    for proc in procs:
        terminate(proc)
