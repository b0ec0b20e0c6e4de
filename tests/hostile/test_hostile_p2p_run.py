"""hello-p2p as real processes in clear mode while a Rogue keeps trying to get in as site-2 and as unknown sites.

The honest sites still get their 6 "Received message" lines, every process exits 0, and the Rogue never gets a
Welcome (before the fix it took site-2's place, got its app and tasks, and the run hung).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import pytest
from rogue import Rogue

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITES = ("site-1", "site-2", "site-3")
ROGUE_NAMES = ("site-2\x1b[2J\nFAKE", "site-2", "site-9", "server")  # the first one is logged (rate limit)


def launch(*args: str, cwd: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flarelite.launch", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(path: str, needle: str, timeout: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and needle in open(path, encoding="utf-8").read():
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} did not appear in {path} within {timeout}s")


class Hammer(threading.Thread):
    """Say hello as each of ROGUE_NAMES, over and over, until stopped; count what came back."""

    def __init__(self, target: str) -> None:
        super().__init__(name="rogue-hammer", daemon=True)
        self.target = target
        self.answers: Counter = Counter()
        self.reasons: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            name = ROGUE_NAMES[i % len(ROGUE_NAMES)]
            i += 1
            r = Rogue(self.target, timeout=5)
            try:
                env = r.hello(name, timeout=5)
                kind = env.WhichOneof("body")
                self.answers[(name, kind)] += 1
                if kind == "refused" and len(self.reasons) < 20:
                    self.reasons.append(env.refused.reason)
            except (AssertionError, queue.Empty):
                self.answers[(name, "no answer")] += 1  # the server is stopping, or not listening any more
            finally:
                r.close()
            self.stop.wait(0.03)


@pytest.fixture(scope="module")
def hello_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "hello-p2p", "job.py"), "--export", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_hello_p2p_succeeds_while_a_rogue_keeps_claiming_site_2(tmp_path, hello_job):
    sock_dir = tempfile.mkdtemp(prefix="fl")
    address = f"unix://{sock_dir}/server.sock"
    ws = str(tmp_path / "ws")
    os.makedirs(ws)
    common = ["-w", ws, "--job-id", "hello-p2p"]
    procs: list[subprocess.Popen] = []
    hammer = Hammer(address)
    try:
        procs.append(launch("server", hello_job, *common, "--listen", address, "--clients", ",".join(SITES), cwd=ws))
        procs.append(launch("client", hello_job, *common, "--name", "site-2", "--server", address, cwd=ws))
        wait_for_line(os.path.join(ws, "site-2", "log.txt"), "ready: executors", 60, procs)
        hammer.start()  # from now on, during the gathering and the whole run
        for name in ("site-1", "site-3"):
            procs.append(launch("client", hello_job, *common, "--name", name, "--server", address, cwd=ws))
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        hammer.stop.set()
        hammer.join(15)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)
    codes = [p.returncode for p in procs]
    assert codes == [0, 0, 0, 0], "\n".join(o[-3000:] for o in outs)
    logs = {s: open(os.path.join(ws, s, "log.txt"), encoding="utf-8").read() for s in SITES}
    received = {s: text.count("Received message from") for s, text in logs.items()}
    assert received == {"site-1": 2, "site-2": 2, "site-3": 2}, received
    welcomed = {name: n for (name, kind), n in hammer.answers.items() if kind == "welcome"}
    assert welcomed == {}, (welcomed, hammer.answers)
    refused = sum(n for (name, kind), n in hammer.answers.items() if kind == "refused")
    assert refused >= len(ROGUE_NAMES), hammer.answers  # it really tried, every name, during the run
    assert any(r.startswith("already connected") for r in hammer.reasons), hammer.reasons
    print(f"rogue: {dict(hammer.answers)}")
    server_log = open(os.path.join(ws, "server", "log.txt"), encoding="utf-8").read()
    assert "refused a connection claiming to be 'site-2\\x1b[2J\\nFAKE'" in server_log  # logged, escaped
    assert "\x1b" not in server_log and "\nFAKE" not in server_log
