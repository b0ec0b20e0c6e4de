"""PocEnv: run a recipe's job as a proof-of-concept deployment on this machine (a server and N client processes).

``deploy`` exports the job into ``<poc_workspace>/<job name>/jobs/<job name>/`` and starts, in the background, the
same machinery as ``flarelite poc``: a server process and one process per site, talking gRPC over 127.0.0.1
(or Unix sockets with ``protocol="unix"``), each client receiving its app from the server. It returns at once
with the job id (the job's name); ``get_job_status`` then says ``"RUNNING"``, ``"FINISHED:COMPLETED"``,
``"FINISHED:ABORTED"`` or ``"FINISHED:EXECUTION_EXCEPTION"`` (NVFlare's job status strings), and
``get_job_result`` waits for the end and returns the run's workspace ``<poc_workspace>/<job name>`` (a folder per
site, with its ``log.txt``; the server's results in ``server/``; the server's app folder, where the PyTorch
persistor saves ``FL_global_model.pt``, is ``server/app_server`` or ``server/app``).

The POC workspace is ``poc_workspace``, else the environment variable ``FLARELITE_POC_WORKSPACE``, else
``/tmp/flarelite/poc`` (NVFlare: ``NVFLARE_POC_WORKSPACE``, ``/tmp/nvflare/poc``).

Differences from NVFlare's PocEnv:

- No provisioning, no long-lived POC services and no admin session: each ``deploy`` starts the processes of one
  job, and they end with it. So ``username`` and ``study`` are accepted and unused, ``project_conf_path``,
  ``docker_image`` and ``use_he=True`` are refused (ValueError), and ``gpu_ids`` is not applied.
- The sites build the classes the job's objects were recorded as (what ``FedJob.simulator_run`` allows too).
- The run's processes end when the process that deployed the job ends.
- ``stop(clean_up=True)`` removes the job's run folder (NVFlare removes the whole POC workspace).
- flarelite keywords: ``poc_workspace``, ``protocol`` (``"grpc"`` or ``"unix"``), ``tls`` (``"clear"``, ``"tls"``,
  ``"mtls"``) and ``connect_timeout``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

from ..apis.fl_constant import SiteType
from ..errors import ConfigError
from ..job_config.api import FedJob, _recorded_classes
from .spec import ExecEnv

_log = logging.getLogger("flarelite.recipe")

POC_WORKSPACE = "/tmp/flarelite/poc"
POC_WORKSPACE_ENV = "FLARELITE_POC_WORKSPACE"
MARKER_FILE = "poc_job.json"  # in each run folder PocEnv made: it may remove such a folder
STATUS_RUNNING = "RUNNING"
STATUS_COMPLETED = "FINISHED:COMPLETED"
STATUS_ABORTED = "FINISHED:ABORTED"
STATUS_FAILED = "FINISHED:EXECUTION_EXCEPTION"
ABORT_GRACE = 30.0  # seconds an aborted run gets to stop its sites


class _Deployment:
    """One job PocEnv started: its runner process and folders."""

    def __init__(self, job_id: str, run_dir: str, proc: subprocess.Popen, log_file: str) -> None:
        self.job_id = job_id
        self.run_dir = run_dir
        self.proc = proc
        self.log_file = log_file
        self.aborted = False
        self.reported = False


class PocEnv(ExecEnv):
    """Runs the job as a server and client processes on this machine; status and result as NVFlare's PocEnv."""

    def __init__(
        self,
        *,
        num_clients: int | None = 2,
        clients: list[str] | None = None,
        gpu_ids: list[int] | None = None,
        use_he: bool = False,
        docker_image: str | None = None,
        project_conf_path: str = "",
        username: str = "admin@nvidia.com",
        study: str = "default",
        extra: dict | None = None,
        poc_workspace: str | None = None,
        protocol: str = "grpc",
        tls: str = "clear",
        connect_timeout: float = 60.0,
    ) -> None:
        """Deploy to ``num_clients`` sites (``site-1``...) or to the sites named in ``clients`` (then
        ``num_clients`` is ignored, as in NVFlare).

        Raises:
            ValueError: no clients, ``num_clients`` and ``clients`` disagree, an option flarelite's POC does not
                have (``use_he``, ``docker_image``, ``project_conf_path``), or an invalid value.
        """
        super().__init__(extra)
        if clients is not None and (
            not isinstance(clients, list) or not clients or not all(isinstance(c, str) and c for c in clients)
        ):
            raise ValueError(f"clients must be a non-empty list of site names, got {clients!r}")
        if clients and len(set(clients)) != len(clients):
            raise ValueError(f"clients has duplicates: {clients}")
        if num_clients is not None and (isinstance(num_clients, bool) or not isinstance(num_clients, int)):
            raise ValueError(f"num_clients must be an int or None, got {num_clients!r}")
        if not clients and (num_clients is None or num_clients < 1):
            raise ValueError("PocEnv needs num_clients >= 1 or a non-empty list of clients")
        if use_he:
            raise ValueError("PocEnv(use_he=True): flarelite has no homomorphic encryption")
        if docker_image:
            raise ValueError("PocEnv(docker_image=...): flarelite's POC runs local processes, not containers")
        if project_conf_path:
            raise ValueError(
                "PocEnv(project_conf_path=...): flarelite's POC does not provision a project; to deploy a provisioned "
                "project use `flarelite provision` and `flarelite server` / `flarelite client`"
            )
        if protocol not in ("grpc", "unix"):
            raise ValueError(f"protocol must be 'grpc' (TCP on 127.0.0.1) or 'unix', got {protocol!r}")
        if tls not in ("clear", "tls", "mtls"):
            raise ValueError(f"tls must be 'clear', 'tls' or 'mtls', got {tls!r}")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")
        if gpu_ids:
            _log.info("PocEnv: gpu_ids=%s not applied (flarelite's POC does not assign GPUs)", gpu_ids)
        self.clients = list(clients) if clients else None
        self.num_clients = len(clients) if clients else num_clients
        self.gpu_ids = gpu_ids
        self.username = username
        self.study = study
        workspace = poc_workspace or os.environ.get(POC_WORKSPACE_ENV) or POC_WORKSPACE
        self.poc_workspace = os.path.abspath(os.fspath(workspace))
        self.protocol = protocol
        self.tls = tls
        self.connect_timeout = float(connect_timeout)
        self._deployments: dict[str, _Deployment] = {}

    # --- deploy ---------------------------------------------------------------------------------------
    def _site_names(self, job: FedJob) -> list[str]:
        named = [c for c in job.clients if c != SiteType.ALL]
        if self.clients:
            return list(self.clients)
        if named:
            if self.num_clients != len(named):
                raise ValueError(
                    f"job {job.name!r} has apps for the sites {named}, but PocEnv(num_clients={self.num_clients}) "
                    f"would start {self.num_clients} sites; use PocEnv(clients={named})"
                )
            return named
        return [f"site-{i}" for i in range(1, (self.num_clients or 0) + 1)]

    def _fresh_run_dir(self, job_name: str) -> str:
        run_dir = os.path.join(self.poc_workspace, job_name)
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            if not os.path.isfile(os.path.join(run_dir, MARKER_FILE)):
                raise ConfigError(
                    f"PocEnv: {run_dir} exists and was not made by PocEnv; remove it or choose another poc_workspace"
                )
            shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        return run_dir

    def deploy(self, job: FedJob) -> str:
        """Export ``job`` and start its server and site processes in the background; return the job id.

        A run of the same job that this environment started and that is still going is aborted first.

        Raises:
            ValueError: the job's named sites disagree with this environment's.
            ConfigError: the job cannot be exported, or its run folder is in the way.
        """
        names = self._site_names(job)
        previous = self._deployments.get(job.name)
        if previous is not None and previous.proc.poll() is None:
            _log.warning("PocEnv: job %s is still running from an earlier deploy; aborting it first", job.name)
            self.abort_job(job.name)
        run_dir = self._fresh_run_dir(job.name)
        with open(os.path.join(run_dir, MARKER_FILE), "w", encoding="utf-8") as f:
            json.dump({"job": job.name, "clients": names}, f)
        job_dir = job.export_job(os.path.join(run_dir, "jobs"))
        command = [
            sys.executable,
            "-m",
            "flarelite.recipe._poc_main",
            job_dir,
            run_dir,
            "--clients",
            ",".join(names),
            "--parent-pid",
            str(os.getpid()),
            "--protocol",
            self.protocol,
            "--mode",
            self.tls,
            "--connect-timeout",
            str(self.connect_timeout),
        ]
        command += [f"--allow-class={c}" for c in _recorded_classes(job_dir)]
        log_file = os.path.join(run_dir, "poc_console.txt")
        with open(log_file, "wb") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        self._deployments[job.name] = _Deployment(job.name, run_dir, proc, log_file)
        _log.info("PocEnv: job %s started on %s; console output in %s", job.name, ", ".join(names), log_file)
        return job.name

    # --- status, abort, result ------------------------------------------------------------------------
    def _deployment(self, job_id: str) -> _Deployment:
        found = self._deployments.get(job_id)
        if found is None:
            raise ValueError(f"PocEnv: no job {job_id!r} was deployed here (deployed: {sorted(self._deployments)})")
        return found

    def get_job_status(self, job_id: str) -> str | None:
        """Return ``"RUNNING"``, ``"FINISHED:COMPLETED"``, ``"FINISHED:ABORTED"`` or ``"FINISHED:EXECUTION_EXCEPTION"``.

        Raises:
            ValueError: no job ``job_id`` was deployed by this environment.
        """
        deployment = self._deployment(job_id)
        code = deployment.proc.poll()
        if code is None:
            return STATUS_RUNNING
        if deployment.aborted:
            return STATUS_ABORTED
        if code == 0:
            return STATUS_COMPLETED
        if not deployment.reported:
            deployment.reported = True
            _log.error("PocEnv: job %s failed: %s", job_id, self._failure(deployment))
        return STATUS_FAILED

    @staticmethod
    def _failure(deployment: _Deployment) -> str:
        try:
            with open(os.path.join(deployment.run_dir, SiteType.SERVER, "run_result.json"), encoding="utf-8") as f:
                failure = json.load(f).get("failure")
        except (OSError, ValueError, AttributeError):
            failure = None
        where = f"(see {deployment.log_file} and {deployment.run_dir}/<site>/log.txt)"
        return f"{failure} {where}" if failure else f"exit status {deployment.proc.returncode} {where}"

    def abort_job(self, job_id: str) -> None:
        """Stop the job's processes (SIGTERM: the sites end their run) and wait for them.

        Raises:
            ValueError: no job ``job_id`` was deployed by this environment.
        """
        deployment = self._deployment(job_id)
        if deployment.proc.poll() is not None:
            return
        deployment.aborted = True
        deployment.proc.terminate()
        try:
            deployment.proc.wait(ABORT_GRACE)
        except subprocess.TimeoutExpired:
            _log.error("PocEnv: job %s did not stop within %ss of SIGTERM; killing it", job_id, ABORT_GRACE)
            deployment.proc.kill()
            deployment.proc.wait()

    def get_job_result(self, job_id: str, timeout: float = 0.0) -> str | None:
        """Wait for the job (``timeout`` seconds, 0: no limit); return its run folder, or None if it is still running.

        Raises:
            ValueError: no job ``job_id`` was deployed by this environment.
        """
        deployment = self._deployment(job_id)
        try:
            deployment.proc.wait(timeout if timeout and timeout > 0 else None)
        except subprocess.TimeoutExpired:
            return None
        self.get_job_status(job_id)  # logs a failure once
        return deployment.run_dir

    def stop(self, clean_up: bool = False) -> None:
        """Abort the jobs still running; with ``clean_up`` also remove their run folders."""
        for job_id, deployment in list(self._deployments.items()):
            if deployment.proc.poll() is None:
                self.abort_job(job_id)
            if clean_up and os.path.isfile(os.path.join(deployment.run_dir, MARKER_FILE)):
                shutil.rmtree(deployment.run_dir, ignore_errors=True)
        if clean_up:
            self._deployments.clear()
