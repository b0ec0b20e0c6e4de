"""``flarelite job submit|list|status|abort|download`` and ``flarelite admin``: the admin's commands.

Each reaches the server as ``flarelite client`` does (``--server HOST:PORT`` with ``--mtls --certs DIR`` and
``--name`` for the admin's certificate), or through a POC workspace with ``-w WS`` alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

from ..federation.jobs import FINISHED


def _session(args: argparse.Namespace):
    from .session import Session

    if not args.server and not args.workspace:
        from ..errors import ConfigError

        raise ConfigError("say which server: --server HOST:PORT (or unix:///path), or -w POC_WORKSPACE")
    return Session(
        args.server,
        name=args.name,
        mode=args.mode,
        certs=args.certs,
        workspace=args.workspace,
        timeout=args.timeout,
    )


def _when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _printed_json(args: argparse.Namespace, value: object) -> bool:
    """With ``--json``, print ``value`` as JSON (for scripts) and return True."""
    if args.json:
        print(json.dumps(value, indent=1))
    return bool(args.json)


def _submit(args: argparse.Namespace) -> int:
    with _session(args) as s:
        job_id = s.submit_job(args.job_folder)
        if args.wait:
            said = None
            while (meta := s.get_job_meta(job_id))["status"] not in FINISHED:
                line = meta.get("waiting") if meta["status"] == "SUBMITTED" else meta["status"]
                if line and line != said:
                    print(f"job {job_id}: {line}", flush=True)
                    said = line
                time.sleep(0.25)
            print(f"job {job_id}: {meta['status']}" + (f" ({meta['failure']})" if meta.get("failure") else ""))
    print(job_id)  # the last line: scripts take it
    return 0


def _list(args: argparse.Namespace) -> int:
    with _session(args) as s:
        jobs = s.list_jobs()
    if _printed_json(args, jobs):
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'job id':<36}  {'name':<20}  {'status':<28}  {'submitted':<19}  sites")
    for job in jobs:
        print(
            f"{job['job_id']:<36}  {str(job['name'])[:20]:<20}  {job['status']:<28}  {_when(job['submit_time']):<19}  "
            f"{','.join(job.get('sites') or []) or '-'}"
        )
        if job.get("waiting"):
            print(f"{'':<38}{job['waiting']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    with _session(args) as s:
        meta = s.get_job_meta(args.job_id)
    if _printed_json(args, meta):
        return 0
    print(f"job {meta['job_id']} ({meta['name']}): {meta['status']}")
    for key in ("submitter", "waiting", "failure"):
        if meta.get(key):
            print(f"  {key}: {meta[key]}")
    for key in ("submit_time", "start_time", "end_time"):
        if meta.get(key):
            print(f"  {key.replace('_time', '')}: {_when(meta[key])}")
    if meta.get("sites"):
        results = meta.get("results", {})
        print("  sites: " + ", ".join(f"{s} (results {results.get(s, '-')})" for s in meta["sites"]))
    return 0 if meta["status"] != "FINISHED:EXECUTION_EXCEPTION" else 1


def _abort(args: argparse.Namespace) -> int:
    with _session(args) as s:
        s.abort_job(args.job_id)
        if args.wait:
            meta = s.wait_for_job(args.job_id, timeout=60)
            print(f"job {args.job_id}: {meta['status']}")
            return 0
    print(f"job {args.job_id}: aborting")
    return 0


def _download(args: argparse.Namespace) -> int:
    with _session(args) as s:
        path = s.download_job_result(args.job_id, args.output)
    print(f"job {args.job_id}: results in {path} (server/ and each site's folder under workspace/)")
    print(path)
    return 0


def _admin(args: argparse.Namespace) -> int:
    with _session(args) as s:
        info = s.get_system_info()
    if _printed_json(args, info):
        return 0
    server = info["server"]
    print(f"server {server['address']} ({server['mode']}), workspace {server['workspace']}")
    sites = info["sites"]
    connected = [x for x in sites if x["connected"]]
    print(f"sites: {len(connected)} connected" + (f" of {len(sites)} seen" if len(sites) != len(connected) else ""))
    for site in sites:
        jobs = f", running {', '.join(j[:8] for j in site['jobs'])}" if site["jobs"] else ""
        print(f"  {site['name']}: {'connected' if site['connected'] else 'gone'}{jobs}")
    for label in ("running", "queued"):
        print(f"jobs {label}: {len(info[label])}")
        for job in info[label]:
            extra = f" - {job['waiting']}" if job.get("waiting") else ""
            print(f"  {job['job_id']} {job['name']} {job['status']}{extra}")
    return 0


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=None, help="the server's address: host:port or unix:///path.sock")
    p.add_argument("-w", "--workspace", default=None, help="a POC workspace (flarelite poc prepare): its server")
    p.add_argument("--name", default=None, help="the admin's name (its certificate <name>.crt under mTLS)")
    security = p.add_mutually_exclusive_group()
    security.add_argument("--tls", dest="mode", action="store_const", const="tls", help="TLS: the server is verified")
    security.add_argument("--mtls", dest="mode", action="store_const", const="mtls", help="mutual TLS (admin cert)")
    p.set_defaults(mode=None)
    p.add_argument("--certs", default=None, help="folder with ca.crt and the admin's certificate and key")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server and for each call")


def add_admin_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``job`` (submit, list, status, abort, download) and ``admin`` to the ``flarelite`` command."""
    job = sub.add_parser("job", help="submit, list, watch, abort and download jobs on a long-lived server")
    actions = job.add_subparsers(dest="job_command", required=True)
    p = actions.add_parser("submit", help="send a job folder (e.g. made by FedJob.export_job); prints its id last")
    p.add_argument("job_folder")
    p.add_argument("--wait", action="store_true", help="wait for the job to end and print its status first")
    _connection(p)
    p.set_defaults(func=_submit)
    p = actions.add_parser("list", help="the server's jobs, oldest first")
    p.add_argument("--json", action="store_true")
    _connection(p)
    p.set_defaults(func=_list)
    for name, func, text in (
        ("status", _status, "one job's status, sites and results"),
        ("abort", _abort, "stop a job on the server and every site (a queued one never starts)"),
        ("download", _download, "the ended job's results, logs and workspaces of the server and each site"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("job_id")
        if name == "status":
            p.add_argument("--json", action="store_true")
        if name == "abort":
            p.add_argument("--wait", action="store_true", help="wait until the job has ended")
        if name == "download":
            p.add_argument("-o", "--output", default=".", help="folder to put <job id>/ in (default: here)")
        _connection(p)
        p.set_defaults(func=func)
    admin = sub.add_parser("admin", help="the long-lived server's state: sites connected, jobs running and queued")
    admin.add_argument("--json", action="store_true")
    _connection(admin)
    admin.set_defaults(func=_admin)
