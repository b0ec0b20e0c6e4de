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
    clients: list[str],
    listen: str,
    tls: Any,
    job_id: str = WorkspaceConstants.SIMULATE_JOB_ID,
    ready_timeout: float = 120.0,
    end_timeout: float = 30.0,
) -> int:
    """Run the job's server site; return 0 when the run succeeded."""
    from .job_config.models import load_job
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
    server = ServerRuntime(
        job_id=job_id,
        protocol=grpc_protocol(SiteType.SERVER, listen=listen, tls=tls),
        run_dir=folder,
        workspace_root=os.path.abspath(workspace),
        app_config=app.server.model_dump(),
        clients=clients,
        ready_timeout=ready_timeout,
        end_timeout=end_timeout,
    )
    failure = server.run()
    _write_result(folder, failure)
    return 0 if failure is None else 1


def run_client(
    job_folder: str,
    workspace: str,
    *,
    name: str,
    server: str,
    tls: Any,
    job_id: str = WorkspaceConstants.SIMULATE_JOB_ID,
    connect_timeout: float = 60.0,
) -> int:
    """Run client site ``name`` of the job; return 0 when the run succeeded."""
    from .job_config.models import load_job
    from .runtime.client import ClientRuntime
    from .runtime.logs import open_site_log, setup_logging

    job = load_job(job_folder)
    folder = os.path.join(os.path.abspath(workspace), name)
    os.makedirs(folder, exist_ok=True)
    setup_logging()
    open_site_log(name, folder)
    app = job.app_for(name)
    if app.client is None:
        raise ConfigError(f"app {app.name!r} deployed to {name!r} has no client config")
    _use_custom(app.custom_dir)
    client = ClientRuntime(
        name=name,
        job_id=job_id,
        protocol=grpc_protocol(name, server=server, tls=tls, connect_timeout=connect_timeout),
        run_dir=folder,
        workspace_root=os.path.abspath(workspace),
        app_config=app.client.model_dump(),
        join_timeout=connect_timeout,
        server_lost_timeout=30.0,
    )
    failure = client.run()
    _write_result(folder, failure)
    return 0 if failure is None else 1


def _use_custom(custom_dir: str) -> None:
    if os.path.isdir(custom_dir) and custom_dir not in sys.path:
        sys.path.insert(0, custom_dir)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flarelite.launch``."""
    parser = argparse.ArgumentParser(prog="python -m flarelite.launch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("server", "client"):
        p = sub.add_parser(role)
        p.add_argument("job_folder")
        p.add_argument("-w", "--workspace", required=True)
        p.add_argument("--mode", choices=["clear", "tls", "mtls"], default="clear")
        p.add_argument("--certs", default=None)
        p.add_argument("--job-id", default=WorkspaceConstants.SIMULATE_JOB_ID)
        if role == "server":
            p.add_argument("--listen", required=True)
            p.add_argument("--clients", required=True, help="comma-separated client names")
            p.add_argument("--ready-timeout", type=float, default=120.0)
        else:
            p.add_argument("--name", required=True)
            p.add_argument("--server", required=True)
    args = parser.parse_args(argv)
    try:
        if args.role == "server":
            return run_server(
                args.job_folder,
                args.workspace,
                clients=args.clients.split(","),
                listen=args.listen,
                tls=tls_config(args.mode, args.certs, SiteType.SERVER),
                job_id=args.job_id,
                ready_timeout=args.ready_timeout,
            )
        return run_client(
            args.job_folder,
            args.workspace,
            name=args.name,
            server=args.server,
            tls=tls_config(args.mode, args.certs, args.name),
            job_id=args.job_id,
        )
    except FlareliteError as exc:
        print(f"flarelite {args.role}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
