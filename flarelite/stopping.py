"""How a site process stops: on SIGTERM or SIGINT, and when the process that started it dies.

A site process started by the simulator is given its parent's pid: on Linux the kernel sends it SIGTERM when
the parent dies (``prctl(PR_SET_PDEATHSIG)``), and on every platform a watcher thread checks the parent pid
(this also covers a parent that died before ``prctl`` was called). Either way the site ends its run as on
SIGTERM: the server is told, the run ends, and the process exits with status 128 + the signal's number. A
run that does not end within ``grace`` seconds of the signal is cut short: the result file is written and the
process exits anyway.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_CHECK_INTERVAL = 0.5


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SiteStopper:
    """Turns SIGTERM/SIGINT (or the parent's death) into one call of ``on_stop(reason)``, with a deadline.

    ``on_stop`` runs on a thread of its own (never inside the signal handler), so it may take locks and send
    frames; it returns False when there is no run to wait for. ``on_deadline(reason)`` runs if the process is
    still there ``grace`` seconds later (at once after False); the process then exits with ``exit_code``.
    """

    def __init__(
        self,
        on_stop: Callable[[str], bool],
        on_deadline: Callable[[str], None],
        *,
        grace: float = 5.0,
        parent_pid: int | None = None,
    ) -> None:
        self.on_stop = on_stop
        self.on_deadline = on_deadline
        self.grace = grace
        self.parent_pid = parent_pid
        self.signum: int | None = None
        self.reason: str | None = None
        self._lock = threading.Lock()

    @property
    def exit_code(self) -> int:
        """128 + the signal's number once stopped by one (0 before)."""
        return 128 + self.signum if self.signum is not None else 0

    def install(self) -> SiteStopper:
        """Handle SIGTERM and SIGINT (main thread only) and start watching the parent, if one was given."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        if self.parent_pid is not None:
            _die_with_parent()
            threading.Thread(target=self._watch_parent, name="parent-watch", daemon=True).start()
        return self

    def stop(self, signum: int, why: str) -> None:
        """Stop the run because of ``signum`` (once; later calls do nothing)."""
        with self._lock:
            if self.signum is not None:
                return
            self.signum = signum
            self.reason = why
        threading.Thread(target=self._run, name="site-stop", daemon=True).start()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            os._exit(self.exit_code)  # a second Ctrl-C: leave now
        self.stop(signum, f"interrupted ({signal_name(signum)})")

    def _watch_parent(self) -> None:
        while self.signum is None:
            if os.getppid() != self.parent_pid:
                self.stop(signal.SIGTERM, f"interrupted (the parent process {self.parent_pid} is gone)")
                return
            time.sleep(PARENT_CHECK_INTERVAL)

    def _run(self) -> None:
        reason = self.reason or "interrupted"
        wait = True
        try:
            wait = self.on_stop(reason)
        finally:
            deadline = time.monotonic() + (self.grace if wait else 0.0)
            while time.monotonic() < deadline:
                time.sleep(0.1)
            try:
                self.on_deadline(reason)
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                os._exit(self.exit_code)


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watcher thread still notices the parent's death
