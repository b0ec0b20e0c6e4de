"""SiteAgent: a site that stays connected to a long-lived server (``flarelite client`` against a
``flarelite server`` started without a job) and runs each job it is deployed to in a fresh process.

The agent polls the server (``poll``, a long poll of up to 10 s, which is also how the server knows the site is
connected); the reply names the jobs to start and to stop. Starting one launches ``python -m flarelite.launch
client`` for that job, in ``WS/<site>/jobs/<job id>/``; it joins the job's own server, which ships the app. When
that process ends, the agent uploads the job's folder to the server and reports how it ended. A job to stop
(aborted, or ended on the server) has its process stopped (SIGTERM, a kill 10 s later). When the server cannot
be reached the agent says so every few seconds and keeps trying: a server restart costs the site nothing but the
jobs that were running.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from typing import Any

from ..errors import ConnectError
from .archive import pack
from .control import POLL_MAX, ControlClient, ControlError
from .processes import launch_command, start, terminate, terminate_all
from .transfers import upload

_log = logging.getLogger("flarelite.federation")


class SiteAgent:
    """See the module docstring. ``tls``: this site's TLSConfig; ``certs``: its folder (job processes use it)."""

    def __init__(
        self,
        name: str,
        server: str,
        workspace: str,
        *,
        tls: Any,
        certs: str | None = None,
        allow_custom_code: bool = False,
        allowed_classes: list[str] | tuple[str, ...] = (),
        data_plane: str = "auto",
        max_message_size: int | None = None,
        connect_timeout: float = 0.0,
        log_config: str | None = None,
    ) -> None:
        self.name = name
        self.server = server
        self.folder = os.path.join(os.path.abspath(workspace), name)
        self.tls = tls
        self.mode = getattr(tls, "mode", "clear")
        self.certs = certs
        self.allow_custom_code = allow_custom_code
        self.allowed_classes = list(allowed_classes)
        self.data_plane = data_plane
        self.max_message_size = max_message_size
        self.log_config = log_config  # -l, passed on to every job process
        self.connect_timeout = connect_timeout
        self.client = ControlClient(server, tls, name)
        self._jobs: dict[str, subprocess.Popen] = {}
        self._done: set[str] = set()  # jobs this agent ran to their end (never started again)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.failure: str | None = None

    def stop(self) -> None:
        """Stop polling and end every job process of this site."""
        self._stopped.set()
        with self._lock:
            procs = list(self._jobs.values())
        terminate_all(procs)

    def run(self) -> int:
        """Poll and run jobs until ``stop``; return 0 (1 when the server never answered within connect_timeout)."""
        os.makedirs(self.folder, exist_ok=True)
        started = time.monotonic()
        connected = False
        last_said = 0.0
        while not self._stopped.is_set():
            with self._lock:
                running = {job_id: "running" for job_id, proc in self._jobs.items() if proc.poll() is None}
                done = sorted(self._done)
            try:
                todo = self.client.call("poll", timeout=POLL_MAX + 10, jobs=running, done=done, wait=POLL_MAX)
            except ConnectError as exc:
                now = time.monotonic()
                if connected:
                    _log.warning("%s: lost the server at %s (%s); trying again", self.name, self.server, exc)
                    connected = False
                    last_said = now
                elif now - last_said >= 5:
                    _log.warning("%s: waiting for the flarelite server at %s: %s", self.name, self.server, exc)
                    last_said = now
                if not connected and self.connect_timeout and now - started > self.connect_timeout:
                    self.failure = f"no flarelite server answered at {self.server} within {self.connect_timeout:.0f}s"
                    _log.error("%s: %s", self.name, self.failure)
                    self.stop()
                    return 1
                self._stopped.wait(1.0)
                continue
            except ControlError as exc:  # refused: wrong certificate, name... nothing will change by waiting
                self.failure = f"the server at {self.server} refused {self.name}: {exc}"
                _log.error("%s", self.failure)
                self.stop()
                return 1
            if not connected:
                _log.info("%s: connected to the flarelite server at %s", self.name, self.server)
                connected = True
                started = time.monotonic()
            for job in todo.get("start", []):
                self._start(str(job["job_id"]), str(job["server"]), str(job.get("job_name", "")))
            for job_id in todo.get("abort", []):
                with self._lock:
                    proc = self._jobs.get(job_id)
                if proc is not None and proc.poll() is None:
                    _log.info("%s: job %s was aborted or has ended on the server: stopping it", self.name, job_id)
                    terminate(proc, wait=False)
        return 0

    def _start(self, job_id: str, server: str, job_name: str) -> None:
        with self._lock:
            if job_id in self._jobs or job_id in self._done:
                return
        ws = os.path.join(self.folder, "jobs", job_id)
        os.makedirs(ws, exist_ok=True)
        args = ["--name", self.name, "--server", server, "-w", ws, "--job-id", job_id, "--connect-timeout", "30"]
        args += ["--data-plane", self.data_plane] + (["--allow-custom-code"] if self.allow_custom_code else [])
        cmd = launch_command(
            "client",
            *args,
            options=self,
        )
        try:
            proc = start(cmd, os.path.join(ws, "console.txt"))
        except OSError as exc:
            _log.error("%s: job %s could not start: %s", self.name, job_id, exc)
            with self._lock:
                self._done.add(job_id)
            self._report(job_id, f"could not start: {exc}", ws)
            return
        _log.info("%s: job %s (%s) started", self.name, job_id, job_name)
        with self._lock:
            self._jobs[job_id] = proc
        threading.Thread(target=self._watch, args=(job_id, proc, ws), name=f"job-{job_id[:8]}", daemon=True).start()

    def _watch(self, job_id: str, proc: subprocess.Popen, ws: str) -> None:
        rc = proc.wait()
        status = "ok" if rc == 0 else f"exit status {rc}"
        _log.info("%s: job %s ended (%s)", self.name, job_id, status)
        with self._lock:
            self._done.add(job_id)
        try:
            self._report(job_id, status, ws)
        finally:
            with self._lock:
                self._jobs.pop(job_id, None)

    def _report(self, job_id: str, status: str, ws: str) -> None:
        """Upload the job's folder and say how it ended; retried while the server is away (up to a minute)."""
        deadline = time.monotonic() + 60
        with tempfile.TemporaryDirectory(prefix="flarelite-results-") as tmp:
            archive = os.path.join(tmp, "results.tar.gz")
            site_dir = os.path.join(ws, self.name)
            pack(site_dir if os.path.isdir(site_dir) else ws, archive)
            while not self._stopped.is_set():
                try:
                    self.client.call("ended", job_id=job_id, status=status)
                    token = upload(self.client, archive)
                    self.client.call("results", job_id=job_id, token=token, timeout=120)
                    return
                except ConnectError as exc:
                    if time.monotonic() > deadline:
                        _log.error("%s: the results of job %s could not be sent: %s", self.name, job_id, exc)
                        return
                    time.sleep(1.0)
                except ControlError as exc:
                    _log.error("%s: the server refused the results of job %s: %s", self.name, job_id, exc)
                    return
