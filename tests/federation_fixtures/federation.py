"""A real federation for the tests: a long-lived server and N sites as processes (``flarelite server`` and
``flarelite client``) on a Unix socket in a private temporary folder, and the jobs they run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def export_hello_p2p(dest: str) -> str:
    """The hello-p2p job (3 sites greet each other) exported into ``dest``; return its folder."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "hello-p2p", "job.py"), "--export", dest],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def export_slow_job(dest: str, seconds: float = 120.0) -> str:
    """A job whose task runs for ``seconds`` on every site (unless aborted); return its folder."""
    sys.path.insert(0, HERE)
    try:
        from slow_components import SlowController, SlowExecutor

        from flarelite.job_config.api import FedJob

        job = FedJob(name="slow", min_clients=1)
        job.to_server(SlowController(seconds))
        job.to_clients(SlowExecutor(seconds))
        return job.export_job(dest)
    finally:
        sys.path.remove(HERE)


class Federation:
    """Start/stop/kill the server and sites; ``address`` is the server's; ``security`` extra CLI options."""

    def __init__(self, root: str, sites: int = 3, security: tuple[str, ...] = (), site_certs: bool = False) -> None:
        self.root = root
        sock_dir = os.path.join(root, "s")
        os.makedirs(sock_dir, mode=0o700, exist_ok=True)
        self.address = f"unix://{os.path.join(sock_dir, 'fed.sock')}"
        self.security = list(security)
        self.names = [f"site-{i}" for i in range(1, sites + 1)]
        self.server: subprocess.Popen | None = None
        self.sites: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    def _popen(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(os.path.join(self.root, log_name), "ab")
        self._logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "flarelite.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start_server(self) -> None:
        ws = os.path.join(self.root, "server-ws")
        self.server = self._popen(
            ["server", "--address", self.address, "-w", ws, "--max-jobs", "2", *self.security], "server.out"
        )

    def start_site(self, name: str) -> None:
        ws = os.path.join(self.root, f"{name}-ws")
        extra = ["--allow-custom-code"] if not self.security else self.security
        self.sites[name] = self._popen(
            ["client", "--name", name, "--server", self.address, "-w", ws, "--connect-timeout", "60", *extra],
            f"{name}.out",
        )

    def start(self) -> None:
        self.start_server()
        for name in self.names:
            self.start_site(name)

    def kill_site(self, name: str) -> None:
        proc = self.sites.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)  # the agent and its job processes
        proc.wait(10)

    def stop_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGTERM)
        assert self.server.wait(30) is not None
        self.server = None

    def output(self, name: str) -> str:
        with open(os.path.join(self.root, f"{name}.out"), errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        procs = [p for p in [self.server, *self.sites.values()] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group
            except (ProcessLookupError, PermissionError):
                pass
        for log in self._logs:
            log.close()

    def wait_connected(self, session, names: list[str] | None = None, timeout: float = 60.0) -> None:
        want = set(names or self.names)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = session.get_system_info()
            if want <= {s["name"] for s in info["sites"] if s["connected"]}:
                return
            time.sleep(0.2)
        raise AssertionError(f"sites {sorted(want)} did not connect: {session.get_system_info()['sites']}")
