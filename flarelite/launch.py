"""Run one site of a job in this process, over gRPC: ``python -m flarelite.launch server|client ...``.

The simulator starts one such process per site; ``flarelite server`` and ``flarelite client`` call the same
functions. A site process works in its own folder (``WS/<site>``), logs to ``WS/<site>/log.txt`` and to the
console, writes ``WS/<site>/run_result.json``, and exits 0 when the run succeeded, 1 when it failed.
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
    return TLSConfig.from_dir(mode, certs_dir, name)


def grpc_protocol(name: str, **options: Any) -> Any:
    """A GrpcCommunicationProtocol (imported here so that flarelite's import never loads grpc)."""
    from .communication.grpc import GrpcCommunicationProtocol

    return GrpcCommunicationProtocol(name, **options)


def _write_result(folder: str, failure: str | None) -> None:
    with open(os.path.join(folder, RESULT_FILE), "w", encoding="utf-8") as f:
        json.dump({"ok": failure is None, "failure": failure}, f)


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
) -> int:
    """Run the job's server site; return 0 when the run succeeded.

    ``clients`` names the sites the run waits for; None means the job's named sites, or, for a job deployed
    to ``@ALL``, whichever sites join until ``min_clients`` (default: the job's) are ready. Sites that join
    without a job of their own get their app (config and custom code) shipped over their connection.
    """
    from .job_config.models import load_job
    from .runtime.apps import pack_app
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
        protocol=grpc_protocol(SiteType.SERVER, listen=listen, tls=tls),
        run_dir=folder,
        workspace_root=os.path.abspath(workspace),
        app_config=app.server.model_dump(),
        clients=clients,
        min_clients=min_clients or job.meta.min_clients,
        mandatory_clients=job.meta.mandatory_clients,
        app_for_client=app_for_client,
        ready_timeout=ready_timeout,
        end_timeout=end_timeout,
    )
    failure = server.run()
    _write_result(folder, failure)
    return 0 if failure is None else 1


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
) -> int:
    """Run client site ``name``; with no ``job_folder`` its app comes from the server. Return 0 on success.

    ``direct_p2p``: the site also listens (``p2p_listen``) and exchanges frames with peers directly, falling
    back to the server's relay when a direct connection fails.
    """
    from .runtime.client import ClientRuntime
    from .runtime.logs import open_site_log, setup_logging

    folder = os.path.join(os.path.abspath(workspace), name)
    os.makedirs(folder, exist_ok=True)
    setup_logging()
    open_site_log(name, folder)
    app_config = None
    if job_folder is not None:
        from .job_config.models import load_job

        app = load_job(job_folder).app_for(name)
        if app.client is None:
            raise ConfigError(f"app {app.name!r} deployed to {name!r} has no client config")
        _use_custom(app.custom_dir)
        app_config = app.client.model_dump()
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
        ),
        run_dir=folder,
        workspace_root=os.path.abspath(workspace),
        app_config=app_config,
        join_timeout=connect_timeout,
        server_lost_timeout=30.0,
    )
    failure = client.run()
    _write_result(folder, failure)
    return 0 if failure is None else 1


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
    if role == "server":
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
        p.add_argument("--ready-timeout", type=float, default=120.0 if not deploy else 600.0)
    else:
        if not deploy:
            p.add_argument("job_folder", nargs="?", default=None)
        p.add_argument("--name", required=True, help="this site's name (its certificate's name under mTLS)")
        p.add_argument("--server", required=True, help="the server's address: host:port or unix:///path.sock")
        p.add_argument("--direct-p2p", action="store_true", help="talk to peers directly, not through the server")
        p.add_argument("--p2p-listen", default=None, help="where to accept peers (default 127.0.0.1:0)")
        p.add_argument("--p2p-advertise", default=None, help="the address peers dial (default: the bound one)")


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
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flarelite.launch``."""
    parser = argparse.ArgumentParser(prog="python -m flarelite.launch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("server", "client"):
        add_site_arguments(sub.add_parser(role), role, deploy=False)
    args = parser.parse_args(argv)
    try:
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
