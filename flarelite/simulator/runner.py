"""Run a whole job in one process: the server and every client site on threads, over the in-memory transport."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

from ..apis.fl_constant import SiteType, WorkspaceConstants
from ..communication.protocol import site_name_problem
from ..errors import ConfigError, RunFailedError
from ..job_config.models import JobDefinition, load_job
from .options import (
    DEFAULT_MAX_BLOCKED_SITES,
    DEFAULT_MAX_CLIENTS,
    apply_log_config,
    assign_gpus,
    check_log_config,
    check_max_clients,
    check_threads,
    parse_gpu,
)

if TYPE_CHECKING:
    from ..communication.memory import InMemoryHub

_log = logging.getLogger("flarelite.simulator")


def resolve_clients(job: JobDefinition, n_clients: int | None, clients: list[str] | None) -> list[str]:
    """Decide the client site names: ``clients``, else the deploy_map's names, else site-1..site-N."""
    if n_clients is not None and (isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1):
        raise ConfigError(f"n_clients must be a positive int, got {n_clients!r}")
    named = job.named_clients()
    if clients:
        if isinstance(clients, str):
            clients = [c.strip() for c in clients.split(",") if c.strip()]
        bad = [c for c in clients if site_name_problem(c)]
        if bad:
            raise ConfigError(f"invalid client names {bad}: {site_name_problem(bad[0])}")
        if len(set(clients)) != len(clients):
            raise ConfigError(f"client names must be unique, got {clients}")
        if n_clients is not None and n_clients != len(clients):
            raise ConfigError(f"n_clients={n_clients} does not match the {len(clients)} names in clients={clients}")
        names = list(clients)
    elif named and not job.deploys_to_all():
        if n_clients is not None and n_clients != len(named):
            raise ConfigError(
                f"this job deploys apps to named sites {named}; n_clients={n_clients} cannot change that "
                "(leave n_clients out, or build the job with to_clients)"
            )
        names = named
    else:
        count = n_clients if n_clients is not None else max(job.meta.min_clients, len(named), 1)
        names = list(named) + [f"site-{i}" for i in range(1, count + 1) if f"site-{i}" not in named]
        names = names[: max(count, len(named))]
    if len(names) < job.meta.min_clients:
        raise ConfigError(
            f"job {job.meta.name!r} needs at least {job.meta.min_clients} clients, got {len(names)}: {names}"
        )
    missing = [m for m in job.meta.mandatory_clients or [] if m not in names]
    if missing:
        raise ConfigError(f"job {job.meta.name!r}: mandatory clients {missing} are not among the sites {names}")
    for name in names:
        app = job.app_for(name)
        if app.client is None:
            raise ConfigError(f"app {app.name!r} deployed to {name!r} has no client config")
    return names


def run_simulation(
    job_folder: str,
    workspace: str,
    n_clients: int | None = None,
    clients: list[str] | None = None,
    threads: int | None = None,
    *,
    protocol: str = "unix",
    tls: str = "clear",
    direct_p2p: bool = False,
    job_id: str = WorkspaceConstants.SIMULATE_JOB_ID,
    ready_timeout: float = 120.0,
    end_timeout: float = 30.0,
    hub: InMemoryHub | None = None,
    connect_timeout: float = 60.0,
    allowed_classes: list[str] | tuple[str, ...] = (),
    temp_dirs: list[str] | tuple[str, ...] = (),
    max_message_size: int | str | None = None,
    gpu: str | None = None,
    log_config: str | None = None,
    max_clients: int = DEFAULT_MAX_CLIENTS,
    data_plane: str = "auto",
    max_blocked_sites: int = DEFAULT_MAX_BLOCKED_SITES,
) -> int:
    """Run the job in ``job_folder`` on this machine; return 0 when the run succeeds.

    ``protocol``: ``"unix"`` (default) runs the server and each site as separate processes talking gRPC over
    a Unix socket in the workspace; ``"grpc"`` does the same over TCP on 127.0.0.1; ``"memory"`` runs every
    site on threads of this process over the in-memory transport. ``tls`` (``"clear"``, ``"tls"``,
    ``"mtls"``; gRPC protocols only) secures the connections with certificates made in ``workspace/certs``;
    ``direct_p2p`` (gRPC protocols only) lets sites talk to each other directly instead of through the server.
    Every site is alive for the whole run. ``threads`` (default: every site) is how many sites execute a task
    at once: the server hands out at most that many client tasks at a time and the others take turns, as
    NVFlare's simulator threads do (a synchronous peer-to-peer job needs ``threads`` equal to the number of
    sites; fewer is warned about). ``gpu`` (``"0,1"`` or ``"[0,1],[2]"``) gives site i the i-th group, round robin,
    as its ``CUDA_VISIBLE_DEVICES`` (processes modes; in memory it is warned about and ignored). ``log_config``:
    ``"concise"``, ``"full"``, ``"verbose"``, a level, or a JSON dictConfig file, applied here and in every site
    process (see ``flarelite.simulator.options``). More sites than ``max_clients`` (default 100) is an error.
    Each site gets ``workspace/<site>/`` (its working directory in the processes modes) with its ``log.txt``; a
    workspace holding an earlier run has that run moved to ``workspace/.previous-N`` first (the last 3 are kept;
    ``<site>/local/`` stays, see ``previous_runs``). ``hub`` lets a test reach the in-memory network.
    ``connect_timeout``: how long (seconds) each site waits for the server at start (saying so every few seconds).
    ``allowed_classes``: class paths or module prefixes (``"torch.nn"``, ``"mypkg.models.Net"``) the job config
    may name beyond flarelite's classes and the job's custom/ modules; anything else is refused (see
    ``flarelite.runtime.allowlist``). The sites run the custom/ code their simulator's server ships.
    ``max_message_size``: the largest message any site accepts, in bytes or as a size like ``"64M"`` (binary
    units; default 2 GiB, every protocol); a larger one reaches its receiver as an error, which answers it.
    ``data_plane``: ``"auto"`` (default; with ``protocol="unix"``, or ``"grpc"`` with ``tls="mtls"``, each site and
    the server exchange the bulk of large frames over a data channel beside gRPC, see
    ``flarelite.communication.dataplane``), ``"tcp"`` (with ``protocol="grpc"`` in every tls mode too) or
    ``"grpc"`` (gRPC only).
    ``max_blocked_sites`` (``protocol="memory"``; default 1,000): the sites do not keep threads of their own but
    share two bounded pools (``flarelite.runtime.pool``), so an idle site costs no thread; this many sites may be
    executing a task at once (an executor may block, waiting for its peers: a synchronous peer-to-peer job needs
    every site at once), the others' tasks wait for a thread; as many aux handlers may wait at once (256 at least).
    When every one of those threads waits and nothing finishes for 10 s while more sites' tasks wait, the run fails
    with an error naming this limit; a run that fails otherwise (an executor's own timeout) after sites' tasks had
    to wait for a thread names it too. Ignored, with a warning, by the processes modes.

    ``temp_dirs``: folders the caller made for this run (the exported job), removed by the server's process if
    this process is killed (processes modes). A site that dies while the others finish the workflow does not
    fail the run: it is named in a warning and in ``workspace/server/run_result.json`` (processes modes). A run
    in which every site died, or whose workflow got no result because sites died, fails.

    Raises:
        ConfigError: the job folder or the arguments are invalid.
        RunFailedError: the run failed (a component could not be built, a workflow raised, every site died...).
        RunInterrupted: SIGTERM or SIGINT stopped the run (processes modes; the sites are stopped first).
    """
    if protocol not in ("unix", "grpc", "memory"):
        raise ConfigError(f"protocol must be 'unix', 'grpc' or 'memory', got {protocol!r}")
    from ..communication.planes import check_data_plane

    check_data_plane(data_plane)
    if protocol == "memory" and direct_p2p:
        raise ConfigError("direct_p2p needs a gRPC protocol ('unix' or 'grpc'); in memory every site is direct")
    if protocol == "memory" and data_plane != "auto":
        raise ConfigError(
            f"data_plane={data_plane!r} needs a gRPC protocol ('unix' or 'grpc'); in memory no frame touches a socket"
        )
    if protocol == "memory" and tls != "clear":
        raise ConfigError(f"tls={tls!r} needs a gRPC protocol ('unix' or 'grpc'); the in-memory one has no wire")
    from ..communication.sizes import max_message_size as message_limit

    limit = message_limit(max_message_size)
    if isinstance(max_blocked_sites, bool) or not isinstance(max_blocked_sites, int) or max_blocked_sites < 1:
        raise ConfigError(f"max_blocked_sites must be a positive int, got {max_blocked_sites!r}")
    if protocol != "memory" and max_blocked_sites != DEFAULT_MAX_BLOCKED_SITES:
        _log.warning(
            "max_blocked_sites=%d ignored: with protocol %r every site has a process (and threads) of its own; "
            "it bounds the in-process simulator (protocol='memory')",
            max_blocked_sites,
            protocol,
        )
    workspace = os.path.abspath(workspace)
    if gpu is not None:
        parse_gpu(gpu)  # a bad value fails before anything starts
    if log_config is not None:
        log_config = check_log_config(log_config)
    job = load_job(job_folder)
    names = resolve_clients(job, n_clients, clients)
    check_max_clients(max_clients, names)
    threads = check_threads(threads, len(names))
    concurrency = threads if threads < len(names) else None  # None: no gate, every site at once
    gpus = assign_gpus(names, gpu) if gpu is not None else None
    from .previous_runs import set_aside

    moved = set_aside(workspace)  # only once every option is known good: a typo never pushes out an earlier run
    if moved is not None:
        _log.warning("the workspace %s held an earlier run: moved it to %s", workspace, moved)
    if log_config is not None:
        os.makedirs(workspace, exist_ok=True)
        apply_log_config(log_config, base_dir=workspace)
    if gpus is not None and protocol == "memory":
        _log.warning(
            "gpu=%r ignored: with protocol 'memory' every site shares this process and its devices; per-site GPUs "
            "(CUDA_VISIBLE_DEVICES) need a process per site (protocol 'unix' or 'grpc')",
            gpu,
        )
        gpus = None
    os.makedirs(workspace, exist_ok=True)
    if protocol != "memory":
        from .processes import run_processes

        return run_processes(
            job.folder,
            workspace,
            names,
            protocol=protocol,
            tls=tls,
            job_id=job_id,
            ready_timeout=ready_timeout,
            end_timeout=end_timeout,
            direct_p2p=direct_p2p,
            connect_timeout=connect_timeout,
            allowed_classes=allowed_classes,
            temp_dirs=temp_dirs,
            data_plane=data_plane,
            max_message_size=limit,
            gpus=gpus,
            log_config=log_config,
            max_concurrent_tasks=concurrency,
        )
    # the in-process mode's pieces, loaded only here: the processes mode's parent never needs them
    from ..communication.memory import InMemoryCommunicationProtocol, InMemoryHub
    from ..runtime.allowlist import ClassPolicy
    from ..runtime.apps import copy_app
    from ..runtime.client import ClientRuntime
    from ..runtime.logs import close_site_log, open_site_log, restore_level, setup_logging
    from ..runtime.pool import SharedThreads
    from ..runtime.server import ServerRuntime
    from .processes import SERVER_LOST_TIMEOUT, SITE_LOST_TIMEOUT

    for app in job.apps.values():
        if os.path.isdir(app.custom_dir) and app.custom_dir not in sys.path:
            sys.path.insert(0, app.custom_dir)
    previous_level = setup_logging()
    hub = hub if hub is not None else InMemoryHub()
    server_app = job.app_for(SiteType.SERVER)
    if server_app.server is None:
        raise ConfigError(f"app {server_app.name!r} deployed to the server has no server config")
    site_dirs = {name: os.path.join(workspace, name) for name in [SiteType.SERVER, *names]}
    for name, folder in site_dirs.items():
        open_site_log(name, folder)
    custom_dirs = [app.custom_dir for app in job.apps.values()]  # one process: every app's modules are loaded

    def policy(name: str) -> ClassPolicy:
        return ClassPolicy.for_site(site_dirs[name], allowed=allowed_classes, custom_dirs=custom_dirs)

    server: ServerRuntime | None = None

    def stalled(reason: str) -> None:
        if server is not None:
            server.abort_run(reason)

    shared = SharedThreads(max_blocked_sites, on_stall=stalled)
    try:
        server = ServerRuntime(
            job_id=job_id,
            protocol=InMemoryCommunicationProtocol(SiteType.SERVER, hub=hub, max_message_size=limit),
            run_dir=site_dirs[SiteType.SERVER],
            workspace_root=workspace,
            app_config=server_app.server.model_dump(),
            clients=names,
            ready_timeout=ready_timeout,
            end_timeout=end_timeout,
            class_policy=policy(SiteType.SERVER),
            app_dir=copy_app(server_app.path, site_dirs[SiteType.SERVER]),
            client_lost_timeout=SITE_LOST_TIMEOUT,
            max_concurrent_tasks=concurrency,
        )
        sites = [
            ClientRuntime(
                name=name,
                job_id=job_id,
                protocol=InMemoryCommunicationProtocol(name, hub=hub, max_message_size=limit),
                run_dir=site_dirs[name],
                workspace_root=workspace,
                app_config=job.app_for(name).client.model_dump(),  # type: ignore[union-attr]
                join_timeout=connect_timeout,
                server_lost_timeout=SERVER_LOST_TIMEOUT,
                class_policy=policy(name),
                app_dir=copy_app(job.app_for(name).path, site_dirs[name]),
                threads=shared,
            )
            for name in names
        ]
        server.open()
        for site in sites:
            site.open()
        failures: dict[str, str | None] = {}
        ended = threading.Condition()

        def done(name: str, failure: str | None) -> None:
            with ended:
                failures[name] = failure
                ended.notify_all()

        for site in sites:  # no thread of its own: each site's steps run on the shared pool
            site.start(shared.site_lane(site.name), lambda f, n=site.name: done(n, f))
        failure = server.run()
        with ended:
            ended.wait_for(lambda: len(failures) == len(sites), end_timeout)
            stuck = [site.name for site in sites if site.name not in failures]
        if stuck:
            _log.error("sites still running after the end of the run: %s", stuck)
    finally:
        shared.close()
        for name in site_dirs:
            close_site_log(name)
        restore_level(previous_level)
    if failure is None:  # a site the run went on without (it died) does not fail it: the server named it
        fates = server.site_fates()
        failure = next((f"{n}: {f}" for n, f in failures.items() if f and not fates[n].startswith("died")), None)
        stuck = [name for name in stuck if not fates[name].startswith("died")]
    if failure is not None:
        raise RunFailedError(shared.explain(failure))
    if stuck:
        raise RunFailedError(f"sites did not end: {stuck}")
    return 0
