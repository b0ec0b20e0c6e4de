"""Run one site of a job in this process, over gRPC: ``python -m flarelite.launch server|client ...``.

The simulator starts one such process per site; ``flarelite server`` and ``flarelite client`` call the same
functions. A site process works in its own folder (``WS/<site>``), logs to ``WS/<site>/log.txt`` and to the
console, writes ``WS/<site>/run_result.json``, and exits 0 when the run succeeded, 1 when it failed, and
128 + the signal's number when SIGTERM or SIGINT (or, for the simulator's processes, the death of the process
that started them: ``--parent-pid``) ended it. ``run_result.json`` says what happened:
``{"ok": bool, "failure": str | None, "sites": {site: fate}, "interrupted": str | None}``, the fates being
``"ok"``, ``"died: <why>"``, ``"failed: <why>"`` or ``"not part of the run"`` (the server's file lists every
site; a client's lists itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .apis.fl_constant import SiteType, WorkspaceConstants
from .errors import ConfigError, FlareliteError

RESULT_FILE = "run_result.json"


def tls_config(mode: str, certs_dir: str | None, name: str) -> Any:
    """The TLSConfig of site ``name`` for ``mode``, with its files from ``certs_dir`` (made by flarelite provision)."""
    from .communication.grpc.tls import TLSConfig

    if mode == "clear":
        if certs_dir:
            raise ConfigError("--certs was given but the mode is clear: add --tls or --mtls, or drop --certs")
        return TLSConfig("clear")
    if not certs_dir:
        raise ConfigError(f"mode {mode} needs --certs DIR (make one with: flarelite provision PROJECT.json -o DIR)")
    if name == SiteType.SERVER:  # the server presents the certificate of the name its project file gave it
        from .communication.grpc.tls import recorded_server_name

        name = recorded_server_name(os.fspath(certs_dir)) or name
    return TLSConfig.from_dir(mode, certs_dir, name)


def grpc_protocol(name: str, **options: Any) -> Any:
    """A GrpcCommunicationProtocol (imported here so that flarelite's import never loads grpc)."""
    from .communication.grpc import GrpcCommunicationProtocol

    return GrpcCommunicationProtocol(name, **options)


def _write_result(folder: str, failure: str | None, sites: dict[str, str], interrupted: str | None = None) -> None:
    result = {"ok": failure is None, "failure": failure, "sites": sites, "interrupted": interrupted}
    tmp = os.path.join(folder, RESULT_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(folder, RESULT_FILE))


def _stopper(runtime: Any, folder: str, parent_pid: int | None, sites: Any) -> Any:
    """Handle SIGTERM/SIGINT and the parent's death: end ``runtime``'s run, write the result on a late exit."""
    from .stopping import SiteStopper

    def on_stop(reason: str) -> bool:
        runtime.log.warning("%s: ending the run", reason)
        joined = runtime.joined()  # a site still looking for its server has no run to end: it leaves at once
        runtime.interrupt(reason)
        return joined

    def on_deadline(reason: str) -> None:
        runtime.log.warning("%s: exiting now (the run did not end in time, or had not started)", reason)
        _write_result(folder, runtime.failure or reason, sites(), reason)

    return SiteStopper(on_stop, on_deadline, parent_pid=parent_pid).install()


def _remove_own_files(listen: str, temp_dirs: Any, parent_pid: int | None) -> None:
    """The server's socket file goes with it; the parent's temporary folders too when the parent is gone."""
    import shutil
    import stat

    if listen.startswith("unix://"):
        path = listen[len("unix://") :]
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        for folder in temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)


def run_server(
    job_folder: str,
    workspace: str,
    *,
    clients: list[str] | None,
    listen: str,
    tls: Any,
    job_id: str = WorkspaceConstants.SIMULATE_JOB_ID,
    min_clients: int | None = None,
    ready_timeout: float = 120.0,
    end_timeout: float = 30.0,
    allowed_classes: list[str] | tuple[str, ...] = (),
    client_lost_timeout: float = 10.0,
    heartbeat_timeout: float | None = None,
    parent_pid: int | None = None,
    temp_dirs: list[str] | tuple[str, ...] = (),
    max_message_size: int | str | None = None,
    max_concurrent_tasks: int | None = None,
    data_plane: str = "auto",
) -> int:
    """Run the job's server site; return 0 when the run succeeded.

    ``clients`` names the sites the run waits for; None means the job's named sites, or, for a job deployed
    to ``@ALL``, whichever sites join until ``min_clients`` (default: the job's) are ready. Sites that join
    without a job of their own get their app (config and custom code) shipped over their connection.
    ``allowed_classes``: class paths or module prefixes the job config may name beyond flarelite's and the job's
    custom/ modules (added to ``WS/server/local/resources.json``'s ``class_allow_list``).
    ``max_message_size``: the largest message (bytes, or a size like ``"4G"``) the server accepts and relays
    (default 2 GiB). ``max_concurrent_tasks``: at most that many client tasks out at once (the simulator's
    ``threads``; None: no limit). ``data_plane``: ``"auto"`` (sites on this machine exchange frames with the server
    over a data channel beside gRPC) or ``"grpc"`` (gRPC only).
    """
    from .job_config.models import load_job
    from .runtime.allowlist import ClassPolicy
    from .runtime.apps import copy_app, pack_app
    from .runtime.logs import open_site_log, setup_logging
    from .runtime.server import ServerRuntime

    job = load_job(job_folder)
    folder = os.path.join(os.path.abspath(workspace), SiteType.SERVER)
    os.makedirs(folder, exist_ok=True)
    setup_logging()
    open_site_log(SiteType.SERVER, folder)
    app = job.app_for(SiteType.SERVER)
    if app.server is None:
        raise ConfigError(f"app {app.name!r} deployed to the server has no server config")
    _use_custom(app.custom_dir)
    if clients is None and job.named_clients() and not job.deploys_to_all():
        clients = job.named_clients()
    packed: dict[str, dict] = {}

    def app_for_client(name: str) -> dict | None:
        try:
            client_app = job.app_for(name)
        except ConfigError:
            return None
        if client_app.client is None:
            return None
        if client_app.name not in packed:
            packed[client_app.name] = pack_app(client_app.name, client_app.client.model_dump(), client_app.custom_dir)
        return packed[client_app.name]

    server = ServerRuntime(
        job_id=job_id,
        protocol=grpc_protocol(
            SiteType.SERVER,
            listen=listen,
            tls=tls,
            max_message_size=max_message_size,  # checked by the endpoint (ConfigError)
            data_plane=data_plane,
            **_heartbeat(heartbeat_timeout),
        ),
        run_dir=folder,
        workspace_root=os.path.abspath(workspace),
        app_config=app.server.model_dump(),
        clients=clients,
        min_clients=min_clients or job.meta.min_clients,
        mandatory_clients=job.meta.mandatory_clients,
        app_for_client=app_for_client,
        ready_timeout=ready_timeout,
        end_timeout=end_timeout,
        class_policy=ClassPolicy.for_site(folder, allowed=allowed_classes, custom_dirs=[app.custom_dir]),
        app_dir=copy_app(app.path, folder),
        client_lost_timeout=client_lost_timeout,
        max_concurrent_tasks=max_concurrent_tasks,
    )
    stopper = _stopper(server, folder, parent_pid, server.site_fates)
    try:
        failure = server.run()
    finally:
        _remove_own_files(listen, temp_dirs, parent_pid)
    _write_result(folder, failure, server.site_fates(), stopper.reason)
    return stopper.exit_code or (0 if failure is None else 1)


def run_client(
    job_folder: str | None,
    workspace: str,
    *,
    name: str,
    server: str,
    tls: Any,
    job_id: str = WorkspaceConstants.SIMULATE_JOB_ID,
    connect_timeout: float = 60.0,
    direct_p2p: bool = False,
    p2p_listen: str | None = None,
    p2p_advertise: str | None = None,
    allowed_classes: list[str] | tuple[str, ...] = (),
    allow_custom_code: bool = False,
    server_lost_timeout: float = 30.0,
    heartbeat_timeout: float | None = None,
    parent_pid: int | None = None,
    max_message_size: int | str | None = None,
    data_plane: str = "auto",
) -> int:
    """Run client site ``name``; with no ``job_folder`` its app comes from the server. Return 0 on success.

    Joining a server means running the code it ships (the app's custom/ modules): the site runs it only when
    the server is authenticated (``tls`` in tls or mtls mode, against the project CA) or ``allow_custom_code``
    is set; otherwise it refuses the app and tells the server why. ``allowed_classes``: class paths or module
    prefixes the app's config may name beyond flarelite's and custom/'s (added to
    ``WS/<name>/local/resources.json``'s ``class_allow_list``).

    ``direct_p2p``: the site also listens (``p2p_listen``) and exchanges frames with peers directly, falling
    back to the server's relay when a direct connection fails. ``connect_timeout``: how long (seconds) the site
    waits for the server at start, saying every few seconds what it waits for. ``max_message_size``: the
    largest message (bytes, or a size like ``"4G"``) the site accepts (default 2 GiB). ``data_plane``:
    ``"auto"`` (with a server on this machine, frames to and from it take a data channel beside gRPC) or
    ``"grpc"`` (gRPC only).
    """
    from .communication.protocol import site_name_problem
    from .runtime.allowlist import ClassPolicy
    from .runtime.apps import copy_app
    from .runtime.client import ClientRuntime
    from .runtime.logs import open_site_log, setup_logging

    problem = site_name_problem(name)
    if problem:
        raise ConfigError(f"--name {name!r} cannot be a site's name: {problem}")
    folder = os.path.join(os.path.abspath(workspace), name)
    os.makedirs(folder, exist_ok=True)
    setup_logging()
    open_site_log(name, folder)
    app_config = None
    app_dir = None
    custom_dirs: list[str] = []
    if job_folder is not None:
        from .job_config.models import load_job

        app = load_job(job_folder).app_for(name)
        if app.client is None:
            raise ConfigError(f"app {app.name!r} deployed to {name!r} has no client config")
        _use_custom(app.custom_dir)
        app_config = app.client.model_dump()
        app_dir = copy_app(app.path, folder)
        custom_dirs.append(app.custom_dir)
    authenticated = getattr(tls, "mode", tls) in ("tls", "mtls")
    client = ClientRuntime(
        name=name,
        job_id=job_id,
        protocol=grpc_protocol(
            name,
            server=server,
            tls=tls,
            connect_timeout=connect_timeout,
            direct_p2p=direct_p2p,
            p2p_listen=p2p_listen,
            p2p_advertise=p2p_advertise,
            max_message_size=max_message_size,  # checked by the endpoint (ConfigError)
            data_plane=data_plane,
            **_heartbeat(heartbeat_timeout),
        ),
        run_dir=folder,
        workspace_root=os.path.abspath(workspace),
        app_config=app_config,
        join_timeout=connect_timeout,
        server_lost_timeout=server_lost_timeout,
        class_policy=ClassPolicy.for_site(folder, allowed=allowed_classes, custom_dirs=custom_dirs),
        allow_custom_code=allow_custom_code or authenticated,
        app_dir=app_dir,
    )

    def fate() -> dict[str, str]:
        return {name: "ok" if client.failure is None else f"failed: {client.failure}"}

    stopper = _stopper(client, folder, parent_pid, fate)
    failure = client.run()
    _write_result(folder, failure, fate(), stopper.reason)
    return stopper.exit_code or (0 if failure is None else 1)


def size_argument(text: str) -> int:
    """argparse type of ``--max-message-size``: bytes, or a size with K, M, G or T (binary)."""
    from .communication.sizes import max_message_size

    try:
        return max_message_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_allow_class(p: argparse.ArgumentParser) -> None:
    """The ``--allow-class PREFIX`` option (repeatable) of every command that builds a job's components."""
    p.add_argument(
        "--allow-class",
        dest="allowed_classes",
        action="append",
        default=[],
        metavar="PREFIX",
        help="let the job config build classes under PREFIX (e.g. torch.nn or mypkg.models.Net); repeatable. "
        "flarelite's classes and the job's custom/ modules are always allowed; see also WS/<site>/local/resources.json",
    )


def add_max_message_size(p: argparse.ArgumentParser) -> None:
    """The ``--max-message-size`` option, the same on every command that runs sites."""
    p.add_argument(
        "--max-message-size",
        type=size_argument,
        default=None,
        metavar="SIZE",
        help="largest message a site accepts: bytes or a size like 512K, 64M, 4G (binary units; default 2G)",
    )


def add_log_level(p: argparse.ArgumentParser) -> None:
    """``-l/--log-level``: what the console and the log files show (the simulator's ``-l`` values)."""
    p.add_argument(
        "-l",
        "--log-level",
        "--log_config",
        dest="log_config",
        default=None,
        help="concise, full, verbose, a level (debug, info, warning, ...) or a JSON logging dictConfig file",
    )


def apply_log_level(args: argparse.Namespace, site: str) -> None:
    """Apply ``-l`` (when given) in this process, relative files under the site's folder."""
    if getattr(args, "log_config", None):
        from .simulator.options import apply_log_config

        workspace = os.path.abspath(args.workspace or ".")
        apply_log_config(args.log_config, base_dir=os.path.join(workspace, site))


def add_data_plane(p: argparse.ArgumentParser) -> None:
    """``--data-plane auto|tcp|grpc``: the faster channel beside gRPC where it is safe (auto), over TCP in every
    mode (tcp), or gRPC only."""
    from .communication.planes import DATA_PLANES

    p.add_argument(
        "--data-plane",
        choices=DATA_PLANES,
        default="auto",
        help="auto (default): the bulk of large frames between a site and its server (and between sites on a direct "
        "connection) takes a data channel beside gRPC: a Unix socket of this user on this machine, TLS over TCP with "
        "the project's certificates under --mtls; tcp: a TCP channel in every mode (TLS under --tls, plain in clear "
        "mode); grpc: gRPC only",
    )


def _heartbeat(timeout: float | None) -> dict[str, float]:
    return {} if timeout is None else {"heartbeat_timeout": timeout, "heartbeat_interval": timeout / 5}


def _use_custom(custom_dir: str) -> None:
    if os.path.isdir(custom_dir) and custom_dir not in sys.path:
        sys.path.insert(0, custom_dir)


def add_site_arguments(p: argparse.ArgumentParser, role: str, *, deploy: bool) -> None:
    """The options of a server or client site (shared by ``python -m flarelite.launch`` and the CLI)."""
    p.add_argument(
        "-w",
        "--workspace",
        default=None if not deploy else f"./{role}-workspace",
        required=not deploy,
        help="workspace folder (the site works in WS/<site>)",
    )
    security = p.add_mutually_exclusive_group()
    security.add_argument("--tls", dest="mode", action="store_const", const="tls", help="TLS: the server is verified")
    security.add_argument("--mtls", dest="mode", action="store_const", const="mtls", help="mutual TLS")
    security.add_argument("--mode", dest="mode", choices=["clear", "tls", "mtls"], help=argparse.SUPPRESS)
    p.set_defaults(mode="clear")
    p.add_argument("--certs", default=None, help="folder made by `flarelite provision` (ca.crt, <site>.crt/.key)")
    p.add_argument("--job-id", default=None, help="the run's id (default: the job's name)")
    if deploy:
        add_log_level(p)
    add_max_message_size(p)
    add_data_plane(p)
    add_allow_class(p)
    if role == "server":
        if deploy:
            p.add_argument(
                "job_folder",
                nargs="?",
                default=None,
                help="the job folder (meta.json and its apps) to run once; without it the server is long-lived: it "
                "waits for sites and for jobs submitted with `flarelite job submit`",
            )
            p.add_argument(
                "--max-jobs", type=int, default=2, help="long-lived server: how many jobs run at once (default 2)"
            )
        else:
            p.add_argument("job_folder", help="the job folder (meta.json and its apps)")
        p.add_argument(
            "--listen",
            "--address",
            dest="listen",
            required=True,
            help="host:port (e.g. 0.0.0.0:8002) or unix:///abs/path.sock",
        )
        p.add_argument("--clients", default=None, help="comma-separated sites to wait for (default: the job's)")
        p.add_argument("--min-clients", type=int, default=None, help="start once this many sites are ready")
        p.add_argument(
            "--ready-timeout",
            "--connect-timeout",
            dest="ready_timeout",
            type=float,
            default=120.0 if not deploy else 600.0,
            help="seconds to wait for the sites to connect and be ready",
        )
        p.add_argument(
            "--client-lost-timeout",
            type=float,
            default=10.0,
            help="seconds a site that lost its connection has to come back before its tasks end as CLIENT_DEAD",
        )
        p.add_argument("--temp-dir", dest="temp_dirs", action="append", default=[], help=argparse.SUPPRESS)
    else:
        if not deploy:
            p.add_argument("job_folder", nargs="?", default=None)
        p.add_argument("--name", required=True, help="this site's name (its certificate's name under mTLS)")
        p.add_argument("--server", required=True, help="the server's address: host:port or unix:///path.sock")
        p.add_argument("--direct-p2p", action="store_true", help="talk to peers directly, not through the server")
        p.add_argument("--p2p-listen", default=None, help="where to accept peers (default 127.0.0.1:0)")
        p.add_argument("--p2p-advertise", default=None, help="the address peers dial (default: the bound one)")
        p.add_argument(
            "--allow-custom-code",
            action="store_true",
            help="run the custom/ code the server ships even in clear mode, where the server is not authenticated "
            "(with --tls or --mtls it runs anyway: joining a server means running the code it ships)",
        )
        p.add_argument(
            "--connect-timeout",
            type=float,
            default=60.0,
            help="seconds to wait for the server at start (a line every few seconds says what it waits for)",
        )
        p.add_argument(
            "--server-lost-timeout",
            type=float,
            default=30.0,
            help="seconds to wait for the server to come back after a lost connection before the site gives up",
        )


def _process_options(args: argparse.Namespace, role: str) -> dict[str, Any]:
    """The options that control the site process itself (its parent, liveness, what it cleans up)."""
    options: dict[str, Any] = {
        "parent_pid": getattr(args, "parent_pid", None),
        "heartbeat_timeout": getattr(args, "heartbeat_timeout", None),
        "max_message_size": args.max_message_size,
        "data_plane": args.data_plane,
    }
    if role == "server":
        options.update(client_lost_timeout=args.client_lost_timeout, temp_dirs=args.temp_dirs)
        options["max_concurrent_tasks"] = getattr(args, "max_concurrent_tasks", None)
    else:
        options["server_lost_timeout"] = args.server_lost_timeout
    return options


def run_site(args: argparse.Namespace, role: str) -> int:
    """Run the site described by parsed ``args`` (see ``add_site_arguments``)."""
    if role == "server":
        from .job_config.models import load_job

        job_id = args.job_id or load_job(args.job_folder).meta.name
        return run_server(
            args.job_folder,
            args.workspace,
            clients=args.clients.split(",") if args.clients else None,
            listen=args.listen,
            tls=tls_config(args.mode, args.certs, SiteType.SERVER),
            job_id=job_id,
            min_clients=args.min_clients,
            ready_timeout=args.ready_timeout,
            allowed_classes=args.allowed_classes,
            **_process_options(args, role),
        )
    return run_client(
        getattr(args, "job_folder", None),
        args.workspace,
        name=args.name,
        server=args.server,
        tls=tls_config(args.mode, args.certs, args.name),
        job_id=args.job_id or WorkspaceConstants.SIMULATE_JOB_ID,
        direct_p2p=args.direct_p2p,
        p2p_listen=args.p2p_listen,
        p2p_advertise=args.p2p_advertise,
        connect_timeout=args.connect_timeout,
        allowed_classes=args.allowed_classes,
        allow_custom_code=args.allow_custom_code,
        **_process_options(args, role),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flarelite.launch``."""
    parser = argparse.ArgumentParser(prog="python -m flarelite.launch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("server", "client"):
        p = sub.add_parser(role)
        add_site_arguments(p, role, deploy=False)
        # set by the simulator: the process that started this one (this one ends when it dies), and liveness
        p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
        p.add_argument("--heartbeat-timeout", type=float, default=None, help=argparse.SUPPRESS)
        p.add_argument("--log-config", default=None, help=argparse.SUPPRESS)  # the simulator's -l
        if role == "server":  # the simulator's -t: how many sites execute tasks at once
            p.add_argument("--max-concurrent-tasks", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.log_config:
            from .simulator.options import apply_log_config

            site = SiteType.SERVER if args.role == "server" else args.name
            apply_log_config(args.log_config, base_dir=os.path.join(os.path.abspath(args.workspace), site))
        return run_site(args, args.role)
    except FlareliteError as exc:
        print(f"flarelite {args.role}: error: {exc}", file=sys.stderr)
        return 1


def exit_process(code: int) -> None:
    """End this site process with ``code`` once its atexit handlers have run and its output is flushed.

    Skips the interpreter's module teardown (0.1-0.2 s with grpc, numpy and the job's modules loaded),
    which a process that is done anyway does not need.
    """
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
