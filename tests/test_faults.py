"""Faults: lost connections, killed and frozen sites, a killed server, a killed parent. Every run ends within a
bound with a clear status; no task is lost or run twice; nothing is left behind (processes, sockets, folders)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from support import alive, comp, write_job

from flarelite.errors import RunFailedError
from flarelite.simulator.runner import run_simulation

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy_fixtures", "fault_components.py")
SITES = ["site-1", "site-2", "site-3"]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and Unix sockets")


def fault_job(root, controller: dict | None = None, executor: dict | None = None) -> str:
    folder = write_job(
        root / "jobs",
        [comp("fault_components.RoundsController", **(controller or {}))],
        [{"tasks": ["*"], "executor": comp("fault_components.FaultExecutor", **(executor or {}))}],
    )
    custom = os.path.join(folder, "app", "custom")
    os.makedirs(custom, exist_ok=True)
    shutil.copy(FIXTURE, custom)
    return folder


@pytest.fixture
def fault_dir(monkeypatch):
    folder = tempfile.mkdtemp(prefix="flf")  # short: the Unix sockets of the launched sites go here too
    monkeypatch.setenv("FAULT_DIR", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def rounds(fault_dir) -> list[dict]:
    with open(os.path.join(fault_dir, "rounds.json")) as f:
        return json.load(f)


def runs(fault_dir, site) -> int:
    with open(os.path.join(fault_dir, f"{site}.runs")) as f:
        return len(f.read().splitlines())


def wait_until(check, limit: float, what: str):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {limit}s: {what}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def result_of(ws, site) -> dict:
    with open(os.path.join(ws, site, "run_result.json")) as f:
        return json.load(f)


def all_ok(names=SITES) -> dict:
    return {"status": "ok", "results": {n: "OK" for n in names}}


# a lost connection, in process (memory transport) ---------------------------------------------------------
def run_memory(tmp_path, controller=None, **executor) -> float:
    folder = fault_job(tmp_path, controller, executor)
    start = time.monotonic()
    assert (
        run_simulation(
            folder,
            str(tmp_path / "ws"),
            n_clients=3,
            protocol="memory",
            ready_timeout=20,
            end_timeout=10,
            allowed_classes=["fault_components"],
        )
        == 0
    )
    return time.monotonic() - start


def test_a_replaced_connection_loses_no_task(tmp_path, fault_dir):
    # site-2's result goes down with its old connection; the server never saw that connection go. It used to
    # wait forever (task timeout 0); now the task goes out again and site-2 answers with the result it kept.
    took = run_memory(tmp_path, site="site-2", fault="replaced")
    assert rounds(fault_dir) == [all_ok()]
    assert runs(fault_dir, "site-2") == 1  # answered from what it kept, not run again
    assert took < 10


def test_a_dropped_connection_that_comes_back_gets_its_task_again_not_run_twice(tmp_path, fault_dir):
    took = run_memory(tmp_path, site="site-2", fault="drop")
    assert rounds(fault_dir) == [all_ok()]
    assert runs(fault_dir, "site-2") == 1
    assert took < 10


@pytest.mark.parametrize("method", ["send", "relay"])
def test_send_and_relay_wait_for_a_site_that_comes_back(tmp_path, fault_dir, method):
    took = run_memory(tmp_path, {"method": method}, site="site-2", fault="drop")
    names = ["site-2"] if method == "send" else SITES
    assert rounds(fault_dir) == [all_ok(names)]
    assert runs(fault_dir, "site-2") == 1
    assert took < 10


def test_a_site_gone_for_good_ends_a_task_without_timeout(tmp_path, fault_dir):
    took = run_memory(tmp_path, site="site-2", fault="gone")
    assert rounds(fault_dir) == [{"status": "client_dead", "results": {"site-1": "OK", "site-2": None, "site-3": "OK"}}]
    assert took < 15  # the site-lost bound (3 s) and site-2's own server-lost bound (5 s), not forever


# killed sites, processes --------------------------------------------------------------------------------
def test_a_run_in_which_every_site_died_fails(tmp_path, fault_dir):
    folder = fault_job(tmp_path, executor={"fault": "die_all"})
    start = time.monotonic()
    with pytest.raises(RunFailedError, match="every site died"):
        run_simulation(folder, str(tmp_path / "ws"), n_clients=2, protocol="unix", end_timeout=10)
    assert time.monotonic() - start < 30
    server = result_of(tmp_path / "ws", "server")
    assert server["ok"] is False and "every site died" in server["failure"]
    assert all(fate.startswith("died: ") for fate in server["sites"].values()), server


def test_a_site_killed_between_rounds(tmp_path, fault_dir):
    folder = fault_job(tmp_path, controller={"rounds": 2, "pause": True})

    def kill_between_rounds():
        wait_until(lambda: os.path.exists(os.path.join(fault_dir, "between_1")), 60, "round 1 ends")
        with open(os.path.join(fault_dir, "site-2.running")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        with open(os.path.join(fault_dir, "go_1"), "w"):
            pass

    killer = threading.Thread(target=kill_between_rounds, daemon=True)
    killer.start()
    start = time.monotonic()
    assert run_simulation(folder, str(tmp_path / "ws"), n_clients=3, protocol="unix", end_timeout=10) == 0
    assert time.monotonic() - start < 40
    killer.join(5)
    first, second = rounds(fault_dir)
    assert first == all_ok()
    assert second == {"status": "client_dead", "results": {"site-1": "OK", "site-2": None, "site-3": "OK"}}
    server = result_of(tmp_path / "ws", "server")
    assert server["ok"] is True and server["sites"]["site-2"].startswith("died: "), server
    assert server["sites"]["site-1"] == "ok"


# sites and server launched one by one (as `flarelite server` / `flarelite client` would run) -------------------
class Launched:
    """A server and client processes of a job, on a Unix socket in ``folder``; heartbeats time out in 2 s."""

    def __init__(self, folder: str, job: str, names=SITES, *, lost: float = 10.0, cli: bool = False):
        self.ws = os.path.join(folder, "ws")
        self.sock = os.path.join(folder, "s.sock")
        head = [sys.executable, "-m", "flarelite.cli" if cli else "flarelite.launch"]
        hidden = [] if cli else ["--heartbeat-timeout", "2"]
        server = [*head, "server", job, "-w", self.ws, "--listen", f"unix://{self.sock}", "--clients", ",".join(names)]
        self.folder = folder
        self.server = self._start("server", [*server, "--client-lost-timeout", str(lost), *hidden])
        self.clients = {
            n: self._start(
                n,
                [
                    *head,
                    "client",
                    "--name",
                    n,
                    "--server",
                    f"unix://{self.sock}",
                    "-w",
                    self.ws,
                    "--allow-custom-code",
                    "--server-lost-timeout",
                    "3",
                    *hidden,
                ],
            )
            for n in names
        }

    def _start(self, name, cmd):
        with open(os.path.join(self.folder, f"{name}.err"), "w") as err:
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)

    def errors(self) -> str:
        out = []
        for name in ["server", *self.clients]:
            with open(os.path.join(self.folder, f"{name}.err")) as f:
                out.append(f.read())
        return "\n".join(out)

    def all(self):
        return [self.server, *self.clients.values()]

    def wait(self, limit: float) -> list[int]:
        deadline = time.monotonic() + limit
        try:
            return [p.wait(max(0.1, deadline - time.monotonic())) for p in self.all()]
        finally:
            self.kill()

    def kill(self):
        for p in self.all():
            if p.poll() is None:
                p.kill()
                p.wait()

    def log(self, site="server") -> str:
        try:
            with open(os.path.join(self.ws, site, "log.txt")) as f:
                return f.read()
        except OSError:
            return ""


def running(fault_dir, site) -> bool:
    return os.path.exists(os.path.join(fault_dir, f"{site}.running"))


def release(fault_dir):
    with open(os.path.join(fault_dir, "release"), "w"):
        pass


def test_a_killed_server_ends_every_site_with_a_clear_failure(tmp_path, fault_dir):
    run = Launched(fault_dir, fault_job(tmp_path, executor={"block": SITES}))
    try:
        wait_until(lambda: all(running(fault_dir, n) for n in SITES), 60, "every site runs its task")
        run.server.kill()
        killed = time.monotonic()
        codes = [p.wait(20) for p in run.clients.values()]
        took = time.monotonic() - killed
    finally:
        run.kill()
    assert codes == [1, 1, 1]
    assert took < 12  # the server-lost bound is 3 s
    for n in SITES:
        result = result_of(run.ws, n)
        assert result["ok"] is False and "lost the connection to the server" in result["failure"], result


@pytest.mark.parametrize("frozen", ["short", "long"])
def test_a_frozen_site_either_carries_on_or_comes_back(tmp_path, fault_dir, frozen):
    # short: under the heartbeat timeout (2 s), nobody notices; long: the server drops it, and when it thaws it
    # joins again and gets its task again (which it is still running: it is not run twice)
    run = Launched(fault_dir, fault_job(tmp_path, executor={"block": ["site-2"]}))
    try:
        wait_until(lambda: running(fault_dir, "site-2"), 60, "site-2 runs its task")
        pid = run.clients["site-2"].pid
        os.kill(pid, signal.SIGSTOP)
        if frozen == "short":
            time.sleep(0.5)  # the fault itself: a pause shorter than the heartbeat timeout
        else:
            wait_until(lambda: "site-2 lost its connection" in run.log(), 20, "the server drops frozen site-2")
        os.kill(pid, signal.SIGCONT)
        release(fault_dir)
        codes = run.wait(40)
    finally:
        run.kill()
    assert codes == [0, 0, 0, 0], run.log()[-3000:]
    assert rounds(fault_dir) == [all_ok()]
    assert runs(fault_dir, "site-2") == 1
    if frozen == "long":
        assert "sending it task 'work'" in run.log()


def test_server_and_client_end_cleanly_on_sigterm(tmp_path, fault_dir):
    job = fault_job(tmp_path, executor={"block": SITES})
    run = Launched(fault_dir, job, names=SITES[:2], cli=True)
    try:
        wait_until(lambda: all(running(fault_dir, n) for n in SITES[:2]), 60, "the sites run their tasks")
        run.clients["site-1"].send_signal(signal.SIGTERM)
        start = time.monotonic()
        codes = run.wait(20)
        took = time.monotonic() - start
    finally:
        run.kill()
    assert codes[1] == 143  # site-1: interrupted
    assert codes[0] == 1 and codes[2] == 1  # the run failed, and everyone knows why
    assert took < 10
    assert result_of(run.ws, "site-1")["interrupted"] == "interrupted (SIGTERM)"
    server = result_of(run.ws, "server")
    assert "site site-1 failed: interrupted (SIGTERM)" in server["failure"]
    assert server["sites"]["site-1"] == "failed: interrupted (SIGTERM)"
    assert "Traceback" not in run.errors()


def test_server_sigterm_ends_the_run(tmp_path, fault_dir):
    run = Launched(fault_dir, fault_job(tmp_path, executor={"block": SITES}), names=SITES[:2])
    try:
        wait_until(lambda: all(running(fault_dir, n) for n in SITES[:2]), 60, "the sites run their tasks")
        run.server.send_signal(signal.SIGTERM)
        start = time.monotonic()
        codes = run.wait(20)
        took = time.monotonic() - start
    finally:
        run.kill()
    assert codes == [143, 1, 1]
    assert took < 10
    server = result_of(run.ws, "server")
    assert server["ok"] is False and server["interrupted"] == "interrupted (SIGTERM)"
    assert not os.path.exists(run.sock)  # the server removes its socket file


# the simulator's parent process killed -------------------------------------------------------------------
PARENT = textwrap.dedent(
    """
    import os, shutil, sys, tempfile
    from flarelite.simulator.runner import run_simulation
    with tempfile.TemporaryDirectory(prefix="flj") as tmp:
        job = shutil.copytree(sys.argv[1], os.path.join(tmp, "job"))
        print(tmp, flush=True)
        run_simulation(job, sys.argv[2], n_clients=3, protocol="unix", temp_dirs=[tmp])
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killing_the_simulator_parent_ends_every_site_and_leaves_nothing(tmp_path, fault_dir, sig):
    job = fault_job(tmp_path, executor={"block": SITES})
    err_path = os.path.join(fault_dir, "parent.err")
    with open(err_path, "w") as err_file:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, job, str(tmp_path / "ws")],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
    try:
        job_tmp = parent.stdout.readline().strip()
        wait_until(lambda: all(running(fault_dir, n) for n in SITES), 60, "every site runs its task")
        (forks,) = children_of(parent.pid)  # the fork server (forkserver.py), whose children the sites are
        sites = children_of(forks)
        assert len(sites) == 4
        with open(tmp_path / "ws" / "server" / "log.txt") as f:  # the server names its socket
            sockets = re.findall(r"listening on unix://(\S+) ", f.read())
        parent.send_signal(sig)
        start = time.monotonic()
        wait_until(lambda: not any(alive(p) for p in [*sites, forks]), 15, f"every site process ends after {sig.name}")
        took = time.monotonic() - start
        code = parent.wait(15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
    with open(err_path) as f:
        err = f.read()
    assert took < 10, took
    if sig == signal.SIGKILL:
        assert code == -9
        wait_until(lambda: not os.path.exists(job_tmp), 10, "the server removes the parent's temp folder")
    else:
        assert code == 128 + sig, err[-2000:]
        lines = [line for line in err.splitlines() if "interrupted" in line]
        assert lines == [f"flarelite: interrupted ({sig.name}); stopped 4 site processes"], err[-2000:]
        assert not os.path.exists(job_tmp)
    assert "Traceback" not in err
    assert sockets and not any(os.path.exists(s) for s in sockets)
    assert not any(os.path.exists(os.path.dirname(s)) for s in sockets)
    server = result_of(tmp_path / "ws", "server")
    assert server["ok"] is False and server["interrupted"].startswith("interrupted (")
