"""The ``flarelite`` command: simulator, check, server, client, poc, job, admin, cert and provision."""

from __future__ import annotations

import argparse
import sys

from .errors import FlareliteError


def _simulator(args: argparse.Namespace) -> int:
    import os
    import time

    from .simulator.runner import run_simulation

    if args.workspace is None:
        name = os.path.basename(os.path.normpath(args.job_folder)) or "job"
        base = f"/tmp/flarelite/simulate_job/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        args.workspace, n = base, 1
        while os.path.exists(args.workspace):
            n += 1
            args.workspace = f"{base}-{n}"
        print(f"flarelite: workspace {args.workspace}", flush=True)

    clients = [c.strip() for c in args.clients.split(",") if c.strip()] if args.clients else None
    run_simulation(
        args.job_folder,
        args.workspace,
        n_clients=args.n_clients,
        clients=clients,
        threads=args.threads,
        protocol=args.protocol,
        tls=args.tls,
        direct_p2p=args.direct_p2p,
        connect_timeout=args.connect_timeout,
        allowed_classes=args.allowed_classes,
        max_message_size=args.max_message_size,
        gpu=args.gpu,
        log_config=args.log_config,
        max_clients=args.max_clients,
        data_plane=args.data_plane,
        max_blocked_sites=args.max_blocked_sites,
    )
    print(f"flarelite: run of {args.job_folder} succeeded; logs in {args.workspace}/<site>/log.txt")
    return 0


def _check(args: argparse.Namespace) -> int:
    import importlib
    import os

    from .job_config.models import load_job
    from .runtime.allowlist import ClassPolicy
    from .runtime.components import component_problems

    job = load_job(args.job_folder)
    problems: list[str] = []
    checked = 0
    for name, app in sorted(job.apps.items()):
        added = app.custom_dir not in sys.path and os.path.isdir(app.custom_dir)
        before = set(sys.modules)
        if added:
            sys.path.insert(0, app.custom_dir)  # as a site imports the app's custom/ modules
        try:
            policy = ClassPolicy(allowed=args.allowed_classes, custom_dirs=[app.custom_dir])
            for side, config in (("server", app.server), ("client", app.client)):
                if config is not None:
                    dump = config.model_dump()
                    checked += 1
                    problems += component_problems(dump, f"app {name!r}, {side} config", policy)
        finally:
            if added:
                sys.path.remove(app.custom_dir)
            custom = os.path.join(os.path.abspath(app.custom_dir), "")
            for module in set(sys.modules) - before:  # apps may hold custom modules of the same name
                if (getattr(sys.modules[module], "__file__", None) or "").startswith(custom):
                    del sys.modules[module]
            importlib.invalidate_caches()
    print(f"{job.meta.name}: apps {sorted(job.apps)}, deploy_map {job.meta.deploy_map}")
    if problems:
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"flarelite: {len(problems)} problem(s) in {args.job_folder}; the run would fail", file=sys.stderr)
        return 1
    print(f"flarelite: every component of the {checked} config(s) imports and takes its arguments")
    return 0


def _server(args: argparse.Namespace) -> int:
    from .launch import apply_log_level

    apply_log_level(args, "server")
    if args.job_folder is None:
        from .federation.run import serve

        return serve(args)
    from .launch import run_site

    return run_site(args, "server")


def _client(args: argparse.Namespace) -> int:
    from .federation.run import agent, is_federation
    from .launch import apply_log_level, run_site, tls_config

    apply_log_level(args, args.name)
    tls = tls_config(args.mode, args.certs, args.name)
    if is_federation(args.server, tls, args.name, args.connect_timeout):
        return agent(args, tls)
    return run_site(args, "client")


def _poc(args: argparse.Namespace) -> int:
    import os

    if args.what in ("prepare", "start", "stop", "clean"):
        return _poc_federation(args)
    args.job_folder = args.what
    if args.workspace is None:
        args.workspace = "/tmp/flarelite/poc"
    from .job_config.models import load_job
    from .simulator.processes import run_processes
    from .simulator.runner import resolve_clients

    job = load_job(args.job_folder)
    names = resolve_clients(job, args.n_clients, None)
    workspace = os.path.abspath(args.workspace)
    os.makedirs(workspace, exist_ok=True)
    run_processes(
        job.folder,
        workspace,
        names,
        protocol=args.protocol,
        tls=args.mode or "clear",
        job_id=job.meta.name,
        ready_timeout=max(120.0, args.connect_timeout),
        end_timeout=30.0,
        connect_timeout=args.connect_timeout,
        allowed_classes=args.allowed_classes,
        max_message_size=args.max_message_size,
        log_config=args.log_config,
    )
    print(f"flarelite: poc run of {job.meta.name} succeeded; logs in {workspace}/<site>/log.txt")
    return 0


def _poc_federation(args: argparse.Namespace) -> int:
    from .federation import poc

    ws = args.workspace or poc.DEFAULT_WS
    if args.what == "prepare":
        settings = poc.prepare(ws, args.n_clients or 2, mode=args.mode or "mtls", force=args.force)
        print(
            f"flarelite: POC prepared in {settings['workspace']}: server at {settings['address']} ({settings['mode']}),"
        )
        print(
            f"  sites {', '.join(settings['sites'])}, admin {settings['admin']}; start it: flarelite poc start -w {ws}"
        )
    elif args.what == "start":
        settings = poc.start(ws)
        print(f"flarelite: POC running: server at {settings['address']}, sites {', '.join(settings['sites'])}")
        print(f"  submit a job: flarelite job submit JOB_FOLDER -w {ws}; stop it: flarelite poc stop -w {ws}")
    elif args.what == "stop":
        stopped = poc.stop(ws)
        print(f"flarelite: POC stopped ({', '.join(stopped)})" if stopped else f"flarelite: no POC running in {ws}")
    else:
        poc.clean(ws)
        print(f"flarelite: POC workspace {ws} removed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``flarelite`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="flarelite", description="flarelite: run federated jobs")
    parser.add_argument("--version", action="version", version=f"flarelite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulator", help="run an exported job folder on this machine (a process per site by default)")
    sim.add_argument("job_folder", help="the job folder (meta.json and app folders), e.g. made by FedJob.export_job")
    sim.add_argument(
        "-w",
        "--workspace",
        default=None,
        help="workspace folder (default: a fresh /tmp/flarelite/simulate_job/<job>-<date-time>; a folder holding an "
        "earlier run has it moved to WS/.previous-N)",
    )
    sim.add_argument("-n", "--n_clients", type=int, default=None, help="number of clients (site-1..site-N)")
    sim.add_argument("-c", "--clients", default=None, help="comma-separated client names")
    sim.add_argument(
        "-t",
        "--threads",
        type=int,
        default=None,
        help="how many sites execute tasks at once (default: all; fewer make them take turns, which synchronous "
        "peer-to-peer jobs cannot do)",
    )
    sim.add_argument(
        "-gpu",
        "--gpu",
        default=None,
        help="GPU ids, e.g. 0,1 (a device per site, round robin) or [0,1],[2] (groups): each site process gets its "
        "CUDA_VISIBLE_DEVICES (ignored with -p memory)",
    )
    sim.add_argument(
        "-l",
        "--log_config",
        default=None,
        help="log config: concise, full, verbose, a level (info, debug, ...) or a JSON logging dictConfig file",
    )
    sim.add_argument("-m", "--max_clients", type=int, default=100, help="most clients allowed (default 100)")
    sim.add_argument(
        "--max_blocked_sites",
        type=int,
        default=1000,
        help="with -p memory: most sites executing a task at once on the shared threads (default 1000)",
    )
    sim.add_argument(
        "--end_run_for_all",
        action="store_true",
        help="accepted for NVFlare compatibility: flarelite always ends the run (END_RUN) at every site",
    )
    sim.add_argument(
        "-p",
        "--protocol",
        choices=["unix", "grpc", "memory"],
        default="unix",
        help="unix: a process per site over a Unix socket (default); grpc: over TCP loopback; memory: one process",
    )
    sim.add_argument("--tls", choices=["clear", "tls", "mtls"], default="clear", help="secure the gRPC connections")
    sim.add_argument("--direct-p2p", action="store_true", help="sites talk to each other directly, not via the server")
    sim.add_argument("--connect-timeout", type=float, default=60.0, help="seconds a site waits for the server")
    from .launch import add_allow_class, add_data_plane, add_log_level, add_max_message_size, add_site_arguments

    add_allow_class(sim)
    add_max_message_size(sim)
    add_data_plane(sim)
    sim.set_defaults(func=_simulator)
    check = sub.add_parser(
        "check",
        help="validate a job folder: import every component it names (with its custom/ code) and bind its arguments",
    )
    check.add_argument("job_folder")
    add_allow_class(check)
    check.set_defaults(func=_check)

    srv = sub.add_parser(
        "server", help="run a long-lived server that waits for sites and jobs (or, given a job folder, that one job)"
    )
    add_site_arguments(srv, "server", deploy=True)
    srv.set_defaults(func=_server)
    cli = sub.add_parser(
        "client",
        help="join a server as a site: a long-lived one's jobs each run in a fresh process; a one-job "
        "server ships the site's app",
    )
    add_site_arguments(cli, "client", deploy=True)
    cli.set_defaults(func=_client)
    poc = sub.add_parser(
        "poc",
        help="a local federation: `poc prepare -n N`, `poc start`, `poc stop`, `poc clean` (NVFlare's POC); or "
        "`poc JOB_FOLDER` to run one job with a server and N site processes",
        description="prepare -n N: make a POC workspace (certificates, an admin); start: run its server and sites in "
        "the background; stop; clean: stop and remove it. JOB_FOLDER: run that job once as a deployment.",
    )
    poc.add_argument("what", metavar="prepare|start|stop|clean|JOB_FOLDER")
    poc.add_argument("-n", "--n_clients", type=int, default=None, help="number of sites (site-1..site-N)")
    poc.add_argument("-w", "--workspace", default=None, help="the POC workspace (default /tmp/flarelite/poc)")
    poc.add_argument("-p", "--protocol", choices=["unix", "grpc"], default="grpc", help="grpc: TCP on 127.0.0.1")
    poc.add_argument(
        "--mode",
        "--security",
        dest="mode",
        choices=["clear", "tls", "mtls"],
        default=None,
        help="security (prepare: default mtls; a job run: default clear)",
    )
    poc.add_argument("--force", action="store_true", help="prepare: replace a workspace that holds something")
    add_log_level(poc)
    poc.add_argument("--connect-timeout", type=float, default=60.0, help="seconds a site waits for the server")
    add_allow_class(poc)
    add_max_message_size(poc)
    poc.set_defaults(func=_poc)
    from .admin.commands import add_admin_commands
    from .certs import add_cert_commands

    add_admin_commands(sub)
    add_cert_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flarelite`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FlareliteError as exc:
        print(f"flarelite: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flarelite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
