"""SimEnv: run a recipe's job in flarelite's simulator, synchronously, in ``<workspace_root>/<job name>``.

``WORKSPACE_ROOT`` is ``/tmp/flarelite/simulation`` (NVFlare's default is ``/tmp/nvflare/simulation``); the
environment variable ``FLARELITE_SIMULATOR_WORKSPACE_ROOT`` overrides ``workspace_root`` (as
``NVFLARE_SIMULATOR_WORKSPACE_ROOT`` does in NVFlare). ``deploy`` returns once the run is over.

Workspace layout: ``<root>/<job>/<site>/`` for the server and each site (``log.txt`` ...); what the workflows and
receivers write goes to the server's folder ``<root>/<job>/server/`` (``models/server.npy`` of the numpy
persistor, ``tb_events/<site>/``, ``cross_site_val/``, ``metrics/``). NVFlare puts these one level deeper, in
``<root>/<job>/server/simulate_job/``. The PyTorch persistor writes into the server's app folder; see
``flarelite.app_opt.pt.file_model_persistor`` for where that is in the simulator.

``protocol`` (a flarelite keyword): ``"unix"`` (default: one process per site, gRPC over Unix sockets),
``"grpc"`` (processes over TCP on 127.0.0.1) or ``"memory"`` (every site on threads of this process).
"""

from __future__ import annotations

import logging
import os

from ..job_config.api import FedJob
from .spec import ExecEnv

_log = logging.getLogger("flarelite.recipe")

WORKSPACE_ROOT = "/tmp/flarelite/simulation"
WORKSPACE_ROOT_ENV = "FLARELITE_SIMULATOR_WORKSPACE_ROOT"
PROTOCOLS = ("unix", "grpc", "memory")


class SimEnv(ExecEnv):
    """Runs the job in the simulator when deployed; the result is ``<workspace_root>/<job name>``."""

    def __init__(
        self,
        *,
        num_clients: int = 0,
        clients: list[str] | None = None,
        num_threads: int | None = None,
        gpu_config: str | None = None,
        log_config: str | None = None,
        workspace_root: str = WORKSPACE_ROOT,
        extra: dict | None = None,
        protocol: str = "unix",
    ) -> None:
        """Simulate ``num_clients`` sites (``site-1``...) or the sites named in ``clients``.

        ``num_threads`` defaults to the number of clients (flarelite runs every site at once anyway);
        ``gpu_config`` and ``log_config`` are passed to ``FedJob.simulator_run`` as ``gpu`` and ``log_config``.

        Raises:
            ValueError: neither ``num_clients > 0`` nor a non-empty ``clients``, the two disagree, or an argument
                has the wrong type or value.
        """
        super().__init__(extra)
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0:
            raise ValueError(f"num_clients must be an int >= 0, got {num_clients!r}")
        if clients is not None and (
            not isinstance(clients, list) or not all(isinstance(c, str) and c for c in clients)
        ):
            raise ValueError(f"clients must be a list of site names, got {clients!r}")
        if clients and len(set(clients)) != len(clients):
            raise ValueError(f"clients has duplicates: {clients}")
        if not clients and num_clients <= 0:
            raise ValueError("SimEnv needs num_clients > 0 or a non-empty list of clients")
        if clients and num_clients and num_clients != len(clients):
            raise ValueError(f"num_clients={num_clients} does not match the {len(clients)} clients {clients}")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        override = os.environ.get(WORKSPACE_ROOT_ENV)
        if override:
            if override != workspace_root:
                _log.warning("%s=%s overrides workspace_root=%s", WORKSPACE_ROOT_ENV, override, workspace_root)
            workspace_root = override
        if not isinstance(workspace_root, (str, os.PathLike)) or not str(workspace_root):
            raise ValueError(f"workspace_root must be a folder path, got {workspace_root!r}")
        self.clients = list(clients) if clients else None
        self.num_clients = len(clients) if clients else num_clients
        self.num_threads = num_threads if num_threads is not None else self.num_clients
        self.gpu_config = gpu_config
        self.log_config = log_config
        self.workspace_root = os.path.abspath(os.fspath(workspace_root))
        self.protocol = protocol

    def deploy(self, job: FedJob) -> str:
        """Run ``job`` in ``<workspace_root>/<job name>`` until it ends; return the job id (its name).

        Raises:
            ValueError: the job names its sites (per-site apps) and they disagree with this environment's.
            ConfigError: the job cannot be exported or run as configured.
            RunFailedError: the run failed (a RuntimeError).
        """
        named = [c for c in job.clients if c != "@ALL"]
        n_clients, clients = self.num_clients, self.clients
        if named:
            if clients is None:
                if self.num_clients != len(named):
                    raise ValueError(
                        f"job {job.name!r} has apps for the sites {named}, but SimEnv(num_clients={self.num_clients}) "
                        f"would simulate {self.num_clients} sites; use SimEnv(clients={named}) or num_clients="
                        f"{len(named)}"
                    )
                clients = named
            n_clients = None
        workspace = os.path.join(self.workspace_root, job.name)
        job.simulator_run(
            workspace=workspace,
            n_clients=None if clients else n_clients,
            clients=clients,
            threads=self.num_threads,
            gpu=self.gpu_config,
            log_config=self.log_config,
            protocol=self.protocol,
        )
        return job.name

    def get_job_status(self, job_id: str) -> str | None:
        """None: the simulation is over when ``deploy`` returns (its outcome was ``deploy``'s return or error)."""
        _log.info("SimEnv runs the job to its end inside deploy(); there is no status to get for %s", job_id)
        return None

    def abort_job(self, job_id: str) -> None:
        """Nothing to abort: the simulation ended before ``deploy`` returned."""
        _log.info("SimEnv cannot abort %s: the simulation ended before deploy() returned", job_id)

    def get_job_result(self, job_id: str, timeout: float = 0.0) -> str | None:
        """Return the job's workspace, ``<workspace_root>/<job id>``."""
        return os.path.join(self.workspace_root, job_id)
