"""Recipe and ExecEnv: a job built from a few arguments, and where it runs (SimEnv, PocEnv).

A recipe wraps one FedJob (``recipe._job``; ``recipe.name`` is the job's name). Its server side is built when
the recipe is made; its client side is built lazily, when the recipe is exported or run: one app for all the
clients, or one app per site after ``set_per_site_config(recipe, {site: {...}})``. What the ``add_client_*``
methods add goes to every client (or to the named ones) of whichever layout that is.

``recipe.execute(env)`` runs the job, unless the command line had ``--export``: then the job is exported to
``--export-dir`` (default ``./fl_job``), a line says where, and ``SystemExit(0)`` ends the script. Importing this
module removes ``--export``, ``--export-dir DIR`` and ``--export-dir=DIR`` from ``sys.argv`` (with a warning),
so the script's own argument parser does not see them.

Differences from NVFlare 2.9.0:

- ``add_client_input_filter`` / ``add_client_output_filter`` / ``add_server_input_filter`` /
  ``add_server_output_filter`` with ``tasks=None`` put the filter on every task, as their documentation says;
  NVFlare 2.9.0 raises ``TypeError: 'NoneType' object is not iterable`` there.
- ``enable_log_streaming``, ``enable_tensor_streaming``, ``add_decomposers`` and the secret scanning of recipe
  arguments are not part of flarelite's Recipe.
"""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from ..apis.fl_constant import SiteType
from ..errors import ConfigError
from ..job_config.api import FedJob
from ..job_config.defs import FilterType

if TYPE_CHECKING:
    from .run import Run

_log = logging.getLogger("flarelite.recipe")

EXPORT_FLAG = "--export"
EXPORT_DIR_FLAG = "--export-dir"
DEFAULT_EXPORT_DIR = "./fl_job"
PER_SITE_CONFIG_KEYS = (
    "train_script",
    "train_args",
    "launch_external_process",
    "command",
    "framework",
    "server_expected_format",
    "params_transfer_type",
    "launch_once",
    "launch_timeout",
    "shutdown_timeout",
)


def take_export_args(argv: list[str]) -> tuple[bool, str | None]:
    """Remove ``--export`` and ``--export-dir DIR`` / ``--export-dir=DIR`` from ``argv`` (in place).

    Returns:
        ``(export asked for, the export dir or None)``.

    Raises:
        ValueError: ``--export-dir`` is the last argument (it has no folder).
    """
    export, export_dir = False, None
    kept: list[str] = argv[:1]
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == EXPORT_FLAG:
            export = True
        elif arg == EXPORT_DIR_FLAG:
            if i + 1 >= len(argv):
                raise ValueError(f"{EXPORT_DIR_FLAG} needs a folder: {EXPORT_DIR_FLAG} DIR")
            export_dir = argv[i + 1]
            i += 1
        elif arg.startswith(EXPORT_DIR_FLAG + "="):
            export_dir = arg[len(EXPORT_DIR_FLAG) + 1 :]
        else:
            kept.append(arg)
        i += 1
    argv[:] = kept
    return export, export_dir


def _take_process_export_args() -> tuple[bool, str | None]:
    before = list(sys.argv)
    try:
        found = take_export_args(sys.argv)
    except ValueError as exc:
        _log.warning("ignored the command line's export options: %s", exc)
        return False, None
    if sys.argv != before:
        removed = [a for a in before if a not in sys.argv]
        _log.warning(
            "flarelite.recipe removed %s from sys.argv: recipe.execute() exports the job instead of running it", removed
        )
    return found


_EXPORT, _EXPORT_DIR = _take_process_export_args()


def export_requested() -> tuple[bool, str]:
    """Return ``(True, dir)`` when this process's command line asked for ``--export`` (dir: ``--export-dir``)."""
    return _EXPORT, _EXPORT_DIR or DEFAULT_EXPORT_DIR


class ExecEnv(ABC):
    """Where a recipe's job runs: ``deploy`` it, then ask for its status and result."""

    def __init__(self, extra: dict | None = None) -> None:
        """Keep ``extra`` (a dict of extra properties, read with ``get_extra_prop``).

        Raises:
            ValueError: ``extra`` is not a dict.
        """
        if not extra:
            extra = {}
        if not isinstance(extra, dict):
            raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
        self.extra = extra

    def get_extra_prop(self, prop_name: str, default: Any = None) -> Any:
        """Return the extra property ``prop_name``, or ``default``."""
        return self.extra.get(prop_name, default)

    @abstractmethod
    def deploy(self, job: FedJob) -> str:
        """Deploy ``job``; return its job id."""

    @abstractmethod
    def get_job_status(self, job_id: str) -> str | None:
        """Return the job's status, or None where the environment cannot tell."""

    @abstractmethod
    def abort_job(self, job_id: str) -> None:
        """Abort the job."""

    @abstractmethod
    def get_job_result(self, job_id: str, timeout: float = 0.0) -> str | None:
        """Wait (``timeout`` seconds; 0: no limit) for the job; return its result folder, or None if not done."""

    def stop(self, clean_up: bool = False) -> None:
        """Release what the environment holds (``clean_up``: its workspace too); nothing to do by default."""


class _ClientOp:
    """Something for the clients, kept until the client apps are built: an object, app parameters or a file."""

    def __init__(self, kind: str, payload: Any, clients: list[str] | None, kwargs: dict[str, Any]) -> None:
        self.kind = kind
        self.payload = payload
        self.clients = clients
        self.kwargs = kwargs


class Recipe(ABC):
    """A job made from a few arguments; ``export`` it, or ``run``/``execute`` it in an ExecEnv."""

    def __init__(self, job: FedJob) -> None:
        """Wrap ``job`` (the recipe's server side is already in it).

        Raises:
            TypeError: ``job`` is not a FedJob.
        """
        if not isinstance(job, FedJob):
            raise TypeError(f"a Recipe wraps a FedJob, got {type(job).__name__}")
        self._job = job
        self.name = job.name
        self._client_ops: list[_ClientOp] = []
        self._per_site_config: dict[str, dict[str, Any]] | None = None
        self._materialized = False
        self._client_defaults: dict[str, Any] | None = None  # subclasses set it: what _make_client_runner gets

    @property
    def job(self) -> FedJob:
        """The FedJob the recipe builds."""
        return self._job

    # --- the client side, built lazily ----------------------------------------------------------------
    def _make_client_runner(self, config: dict[str, Any]) -> Any:
        """Return the executor for one client app from ``config`` (``_client_defaults`` + per-site values)."""
        raise NotImplementedError(f"{type(self).__name__} has client defaults but no _make_client_runner")

    def configured_sites(self) -> list[str]:
        """Return the sites named by ``set_per_site_config`` (empty: one app for all the clients)."""
        return list(self._per_site_config or {})

    def _set_per_site_config(self, config: dict[str, dict[str, Any]]) -> None:
        if self._materialized:
            raise RuntimeError(
                f"recipe {self.name!r}: the client apps were already built (by export or run); "
                "call set_per_site_config before exporting or running the recipe"
            )
        if not isinstance(config, dict) or not config:
            raise ValueError(f"per-site config must be a non-empty dict {{site: {{...}}}}, got {config!r}")
        checked: dict[str, dict[str, Any]] = {}
        for site, values in config.items():
            if not isinstance(site, str) or not site or site in (SiteType.SERVER, SiteType.ALL):
                raise ValueError(f"per-site config keys must be client site names, got {site!r}")
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise ValueError(f"per-site config for {site!r} must be a dict, got {type(values).__name__}")
            unknown = sorted(set(values) - set(PER_SITE_CONFIG_KEYS))
            if unknown:
                raise ValueError(
                    f"per-site config for {site!r}: unknown keys {unknown}; the keys are {list(PER_SITE_CONFIG_KEYS)}"
                )
            checked[site] = dict(values)
        self._per_site_config = checked

    def _site_config(self, site: str | None) -> dict[str, Any]:
        config = dict(self._client_defaults or {})
        if site is not None and self._per_site_config:
            config.update({k: v for k, v in self._per_site_config.get(site, {}).items() if v is not None})
        return config

    def _client_targets(self, clients: list[str] | None) -> list[str]:
        if clients:
            return list(clients)
        return self.configured_sites() or [SiteType.ALL]

    def _apply(self, op: _ClientOp) -> None:
        for target in self._client_targets(op.clients):
            if op.kind == "object":
                self._job.to(op.payload, target, **op.kwargs)
            elif op.kind == "params":
                self._job.to(dict(op.payload), target)
            else:
                self._job.add_file_to(op.payload, target)

    def _client_op(self, kind: str, payload: Any, clients: list[str] | None, **kwargs: Any) -> None:
        if clients is not None and (
            not isinstance(clients, list) or not clients or not all(isinstance(c, str) and c for c in clients)
        ):
            raise ValueError(f"clients must be a non-empty list of site names or None (all clients), got {clients!r}")
        op = _ClientOp(kind, payload, clients, kwargs)
        if self._materialized:
            self._apply(op)
        else:
            self._client_ops.append(op)

    def finalize(self) -> None:
        """Build the client apps (once): the client executor(s), then what the ``add_client_*`` methods added.

        Raises:
            ConfigError: a site's training script does not exist, or the job refuses a client component.
        """
        if self._materialized:
            return
        sites = self.configured_sites()
        runners: list[tuple[str, Any]] = []
        if self._client_defaults is not None:
            for site in sites or [None]:
                config = self._site_config(site)
                script = config.get("train_script")
                if isinstance(script, str) and not os.path.exists(script):
                    where = f"site {site!r}" if site else "the clients"
                    raise ConfigError(
                        f"recipe {self.name!r}: the training script {script!r} for {where} does not exist "
                        f"(resolved to {os.path.abspath(script)}); give its path relative to {os.getcwd()} or absolute"
                    )
                runners.append((site or SiteType.ALL, self._make_client_runner(config)))
        for target, runner in runners:
            self._job.to(runner, target)
        for op in self._client_ops:
            self._apply(op)
        self._client_ops = []
        self._materialized = True

    # --- filters, app parameters, files ---------------------------------------------------------------
    def add_client_input_filter(
        self, filter: Any, tasks: list[str] | None = None, clients: list[str] | None = None
    ) -> None:
        """Filter the task data arriving on the clients (``tasks=None``: every task; ``clients=None``: all)."""
        self._client_op("object", filter, clients, filter_type=FilterType.TASK_DATA, tasks=tasks)

    def add_client_output_filter(
        self, filter: Any, tasks: list[str] | None = None, clients: list[str] | None = None
    ) -> None:
        """Filter the results the clients send (``tasks=None``: every task; ``clients=None``: all)."""
        self._client_op("object", filter, clients, filter_type=FilterType.TASK_RESULT, tasks=tasks)

    def add_server_output_filter(self, filter: Any, tasks: list[str] | None = None) -> None:
        """Filter the task data leaving the server (``tasks=None``: every task)."""
        self._job.to_server(filter, filter_type=FilterType.TASK_DATA, tasks=tasks)

    def add_server_input_filter(self, filter: Any, tasks: list[str] | None = None) -> None:
        """Filter the results arriving on the server (``tasks=None``: every task)."""
        self._job.to_server(filter, filter_type=FilterType.TASK_RESULT, tasks=tasks)

    def add_client_config(self, config: dict[str, Any], clients: list[str] | None = None) -> None:
        """Add top-level keys to the client apps' config (``clients=None``: all)."""
        if not isinstance(config, dict):
            raise ValueError(f"add_client_config: config must be a dict, got {type(config).__name__}")
        self._client_op("params", dict(config), clients)

    def add_server_config(self, config: dict[str, Any]) -> None:
        """Add top-level keys to the server app's config."""
        if not isinstance(config, dict):
            raise ValueError(f"add_server_config: config must be a dict, got {type(config).__name__}")
        self._job.to_server(dict(config))

    def add_client_file(self, file_path: str, clients: list[str] | None = None) -> None:
        """Copy a file or folder into the client apps' ``custom/`` folder (``clients=None``: all)."""
        if not isinstance(file_path, str) or not os.path.exists(file_path):
            raise ConfigError(f"add_client_file: {file_path!r} does not exist")
        self._client_op("file", os.path.abspath(file_path), clients)

    def add_server_file(self, file_path: str) -> None:
        """Copy a file or folder into the server app's ``custom/`` folder."""
        self._job.add_file_to_server(file_path)

    # --- export and run -------------------------------------------------------------------------------
    def process_env(self, env: ExecEnv) -> None:
        """Adapt the job to ``env`` before it is exported or deployed (nothing by default)."""

    def _add_exec_params(self, server_exec_params: dict | None, client_exec_params: dict | None) -> None:
        if server_exec_params:
            self.add_server_config(server_exec_params)
        if client_exec_params:
            self.add_client_config(client_exec_params)

    def export(
        self,
        job_dir: str,
        server_exec_params: dict | None = None,
        client_exec_params: dict | None = None,
        env: ExecEnv | None = None,
    ) -> str:
        """Write the job folder ``<job_dir>/<name>``; return its path.

        ``server_exec_params`` / ``client_exec_params`` are added to the apps' configs first.
        """
        self._add_exec_params(server_exec_params, client_exec_params)
        if env is not None:
            self.process_env(env)
        self.finalize()
        return self._job.export_job(job_dir)

    def run(self, env: ExecEnv, server_exec_params: dict | None = None, client_exec_params: dict | None = None) -> Run:
        """Deploy the job with ``env.deploy`` and return its Run (job id, status, result)."""
        from .run import Run

        if not isinstance(env, ExecEnv):
            raise TypeError(f"env must be an ExecEnv (SimEnv, PocEnv), got {type(env).__name__}")
        self._add_exec_params(server_exec_params, client_exec_params)
        self.process_env(env)
        self.finalize()
        job_id = env.deploy(self._job)
        return Run(env, job_id)

    def execute(
        self, env: ExecEnv, server_exec_params: dict | None = None, client_exec_params: dict | None = None
    ) -> Run:
        """Run the job in ``env`` (see ``run``), or, when the command line had ``--export``, export it and exit.

        Raises:
            SystemExit: with status 0, after exporting to ``--export-dir`` (default ``./fl_job``).
        """
        export, export_dir = export_requested()
        if export:
            path = self.export(export_dir, server_exec_params, client_exec_params, env=env)
            print(f"flarelite: exported job {self.name!r} to {path}")
            raise SystemExit(0)
        return self.run(env, server_exec_params, client_exec_params)
