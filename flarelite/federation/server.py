"""FederationServer: the long-lived server (``flarelite server --address A -w WS`` with no job folder).

It waits for sites and for jobs. Sites (``flarelite client`` agents, ``federation/site.py``) poll it over the
control calls (``control.py``); admins submit, list, abort and download jobs the same way. A job runs in a fresh
job server process of its own (``python -m flarelite.launch server``, listening on a port or socket of its own
beside the federation's), and every site it is deployed to starts a fresh job client process that joins it:
one job's crash, memory or modules never reach the next. When the job server process ends, the job's status
comes from its ``run_result.json`` and exit status; each site then uploads its job folder, so that ``download``
gets the server's and every site's workspace.

A queued job starts when its sites are connected: the sites its ``deploy_map`` names (or, for ``@ALL``, the
connected ones), at least ``min_clients`` of them, every mandatory one; at most ``max_jobs`` run at once, the
others wait in submission order. ``abort`` stops a job everywhere within seconds (SIGTERM to its processes, a
kill after ``ABORT_GRACE``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from typing import Any

from ..communication.addresses import unix_path
from ..communication.protocol import site_name_problem
from ..errors import ConfigError
from . import jobs as J
from .archive import ArchiveError, pack, unpack
from .control import ADMIN_ROLE, POLL_MAX, Caller, ControlError, ControlServer
from .processes import launch_command, start, terminate, terminate_all
from .transfers import Staging, read_piece

_log = logging.getLogger("flarelite.federation")
SITE_SEEN = 15.0  # seconds after its last poll a site still counts as connected
MAX_JOB_BYTES = 1 << 30  # a submitted job folder, packed
MAX_RESULT_BYTES = 4 << 30  # a site's uploaded job folder


class _Site:
    __slots__ = ("name", "last_seen", "polling", "jobs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_seen = 0.0
        self.polling = 0
        self.jobs: set[str] = set()  # the jobs the site says it runs


class FederationServer:
    """See the module docstring. ``tls``: a TLSConfig; ``certs``: its folder (job servers use the same files)."""

    def __init__(
        self,
        address: str,
        workspace: str,
        *,
        tls: Any,
        certs: str | None = None,
        max_jobs: int = 2,
        allowed_classes: list[str] | tuple[str, ...] = (),
        data_plane: str = "auto",
        max_message_size: int | None = None,
        job_ready_timeout: float = 60.0,
        log_config: str | None = None,
    ) -> None:
        from ..communication.addresses import check_address

        self.address = check_address(address, "--address", listening=True)
        self.workspace = os.path.abspath(workspace)
        self.tls = tls
        self.mode = getattr(tls, "mode", "clear")
        self.certs = certs
        if max_jobs < 1:
            raise ConfigError(f"--max-jobs must be at least 1, got {max_jobs}")
        self.max_jobs = max_jobs
        self.allowed_classes = list(allowed_classes)
        self.data_plane = data_plane
        self.max_message_size = max_message_size
        self.log_config = log_config  # -l, passed on to every job process
        self.job_ready_timeout = job_ready_timeout
        self.store = J.JobStore(os.path.join(self.workspace, "jobs"))
        self.staging = Staging(os.path.join(self.workspace, ".staging"), max(MAX_JOB_BYTES, MAX_RESULT_BYTES))
        self._lock = threading.Condition()
        self._sites: dict[str, _Site] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._aborting: set[str] = set()
        self._stopped = threading.Event()
        self._job_socket_dir = self._socket_dir()
        self._control = ControlServer(self.address, tls, self._handle, log=_log)
        self._scheduler = threading.Thread(target=self._schedule_loop, name="federation-jobs", daemon=True)

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        for job_id in self.store.recover():
            _log.warning("job %s was running when the server stopped: FINISHED:ABNORMAL", job_id)
        self._control.start()
        self._scheduler.start()
        local_only = self.mode != "mtls"
        _log.info(
            "flarelite server at %s (%s), workspace %s; %s",
            self.address,
            self.mode,
            self.workspace,
            "the admin API is local only (this machine), since there is no mTLS"
            if local_only
            else "admins need a certificate with the admin role",
        )

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._lock:
            procs = dict(self._procs)
            self._lock.notify_all()
        terminate_all(list(procs.values()))
        self._control.stop()

    # the control calls ---------------------------------------------------------------------------------
    def _handle(self, caller: Caller, op: str, args: dict) -> Any:
        if op == "ping":
            return {"server": "flarelite", "mode": self.mode, "you": caller.name, "role": caller.role}
        if op in _SITE_OPS:
            self._check_site(caller)
            return getattr(self, f"_site_{op}")(caller.name, args)
        if op in _ADMIN_OPS:
            self._check_admin(caller, op)
            return getattr(self, f"_admin_{op}")(caller, args)
        if op == "put":
            if caller.role != ADMIN_ROLE:
                self._check_site(caller)
                if not self.store.owes_results(caller.name):
                    raise ControlError(
                        f"{caller.name} has no job results to upload here (jobs come from admins: an admin "
                        "certificate under mTLS, else a caller on the server's machine)"
                    )
            return self.staging.put(
                caller.name, args.get("token"), args.get("offset"), args.get("data"), bool(args.get("final"))
            )
        raise ControlError(f"unknown request {op!r}")

    def _check_site(self, caller: Caller) -> None:
        if self.mode == "mtls" and not caller.verified:
            raise ControlError("this server needs a client certificate from the project CA (mTLS)")
        if caller.role == ADMIN_ROLE and self.mode == "mtls":
            raise ControlError(f"{caller.name} has an admin certificate; a site needs a site certificate")
        problem = site_name_problem(caller.name)
        if problem:
            raise ControlError(f"{caller.name!r} cannot be a site: {problem}")

    def _check_admin(self, caller: Caller, op: str) -> None:
        if caller.role == ADMIN_ROLE:
            return
        if self.mode == "mtls":
            raise ControlError(
                f"{op}: {caller.name or 'this caller'} has no admin certificate (a certificate with the admin role "
                "from the project CA, made by `flarelite provision` for an admin participant)"
            )
        raise ControlError(
            f"{op}: the admin API of this server is local only (it runs without mTLS): call it from the server's "
            "machine (its Unix socket or 127.0.0.1), or run the federation with --mtls and admin certificates"
        )

    # sites
    def _site_poll(self, name: str, args: dict) -> dict:
        """What site ``name`` must do: ``{"start": [jobs], "abort": [job ids]}``, as soon as there is something.

        Level-triggered: the answer compares the jobs the site says it runs (``jobs``) with the jobs deployed to
        it that have not ended there, every time; a reply lost with a dead connection is simply made again.
        """
        reported = args.get("jobs") or {}
        if not isinstance(reported, dict):
            raise ControlError("poll: 'jobs' is {job id: state}")
        running = {str(k) for k in list(reported)[:64]}
        done = {str(k) for k in list(args.get("done") or [])[:1024]}
        wait = min(POLL_MAX, max(0.0, float(args.get("wait", 0))))
        deadline = time.monotonic() + wait
        with self._lock:
            site = self._sites.get(name)
            if site is None:
                site = self._sites[name] = _Site(name)
                _log.info("site %s connected", name)
                self._lock.notify_all()
            site.jobs = running
            site.polling += 1
            try:
                while True:
                    wanted = self._wanted(name)
                    start = [job for job_id, job in wanted.items() if job_id not in running and job_id not in done]
                    abort = sorted(running - set(wanted))
                    left = deadline - time.monotonic()
                    if start or abort or left <= 0 or self._stopped.is_set():
                        return {"start": start, "abort": abort}
                    self._lock.wait(left)
            finally:
                site.polling -= 1
                site.last_seen = time.monotonic()

    def _wanted(self, name: str) -> dict[str, dict]:
        """The jobs site ``name`` should be running now: active, deployed to it, not ended there."""
        wanted = {}
        for job_id in self._procs:
            record = self.store.get(job_id)
            if record and name in record.get("sites", []) and name not in record.get("site_status", {}):
                wanted[job_id] = {"job_id": job_id, "job_name": record["name"], "server": record.get("job_server")}
        return wanted

    def _site_results(self, name: str, args: dict) -> dict:
        job_id = str(args.get("job_id"))
        record = self.store.get(job_id)
        if record is None or name not in record.get("sites", []):
            raise ControlError(f"{name} ran no job {job_id!r} here")
        if record.get("results", {}).get(name) == "uploaded":
            raise ControlError(f"{name} uploaded its results of job {job_id} already")
        archive = self.staging.take(name, args.get("token"))
        dest = os.path.join(self.store.folder(job_id), "workspace", name)
        try:
            shutil.rmtree(dest, ignore_errors=True)
            unpack(archive, dest, max_bytes=MAX_RESULT_BYTES)
        except ArchiveError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            self.store.set_result(job_id, name, f"refused: {exc}")
            raise ControlError(f"the results of {name} for job {job_id} were refused: {exc}") from None
        finally:
            os.unlink(archive)
        self.store.set_result(job_id, name, "uploaded")
        self._drop_download(job_id)
        return {"stored": dest}

    def _site_ended(self, name: str, args: dict) -> dict:
        job_id = str(args.get("job_id"))
        record = self.store.get(job_id)
        if record is None or name not in record.get("sites", []):
            raise ControlError(f"{name} ran no job {job_id!r} here")
        self.store.update(job_id, **{"site_status": {**record.get("site_status", {}), name: str(args.get("status"))}})
        with self._lock:
            self._lock.notify_all()
        return {}

    # admins
    def _admin_submit(self, caller: Caller, args: dict) -> dict:
        from ..job_config.models import load_job

        archive = self.staging.take(caller.name, args.get("token"))
        job_id = str(uuid.uuid4())
        folder = self.store.folder(job_id)
        job_dir = os.path.join(folder, "job")
        try:
            unpack(archive, job_dir, max_bytes=MAX_JOB_BYTES)
            job = load_job(job_dir)
        except (ArchiveError, ConfigError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ControlError(f"the job is not valid: {exc}") from None
        finally:
            os.unlink(archive)
        record = {
            "job_id": job_id,
            "name": job.meta.name,
            "status": J.SUBMITTED,
            "submitter": caller.name,
            "submit_time": time.time(),
            "min_clients": job.meta.min_clients,
            "mandatory_clients": list(job.meta.mandatory_clients or []),
            "deploy_map": {k: list(v) for k, v in job.meta.deploy_map.items()},
            "named_sites": job.named_clients() if not job.deploys_to_all() else [],
            "sites": [],
            "results": {},
            "failure": None,
        }
        self.store.add(record)
        _log.info("job %s (%s) submitted by %s", job_id, job.meta.name, caller.name)
        with self._lock:
            self._lock.notify_all()
        return {"job_id": job_id}

    def _admin_list(self, caller: Caller, args: dict) -> list[dict]:
        return [_summary(r) for r in self.store.all()]

    def _admin_meta(self, caller: Caller, args: dict) -> dict:
        record = self.store.get(str(args.get("job_id")))
        if record is None:
            raise ControlError(f"no job {args.get('job_id')!r} on this server (see `flarelite job list`)")
        return record

    def _admin_abort(self, caller: Caller, args: dict) -> dict:
        job_id = str(args.get("job_id"))
        record = self._admin_meta(caller, args)
        if record["status"] in J.FINISHED:
            raise ControlError(f"job {job_id} has ended already ({record['status']})")
        _log.info("job %s: aborted by %s", job_id, caller.name)
        with self._lock:
            proc = self._procs.get(job_id)
            self._aborting.add(job_id)
            if proc is None:  # queued: it never starts
                self.store.update(job_id, status=J.FINISHED_ABORTED, end_time=time.time(), failure="aborted")
                return {"status": J.FINISHED_ABORTED}
            self._lock.notify_all()  # the sites hear of it when the job server has ended (see _watch)
        terminate(proc, wait=False)
        return {"status": "aborting"}

    def _admin_download(self, caller: Caller, args: dict) -> dict:
        record = self._admin_meta(caller, args)
        job_id = record["job_id"]
        folder = self.store.folder(job_id)
        archive = os.path.join(folder, "download.tar.gz")
        if args.get("offset", 0) == 0 or not os.path.exists(archive):
            if record["status"] not in J.FINISHED:
                raise ControlError(f"job {job_id} is {record['status']}: its results come when it ends")
            staging = os.path.join(folder, "download")
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
            shutil.copy(os.path.join(folder, J.RECORD), os.path.join(staging, J.RECORD))
            workspace = os.path.join(folder, "workspace")
            if os.path.isdir(workspace):
                shutil.copytree(workspace, os.path.join(staging, "workspace"), symlinks=True)
            pack(staging, archive + ".tmp")
            os.replace(archive + ".tmp", archive)
            shutil.rmtree(staging, ignore_errors=True)
        piece = read_piece(archive, args.get("offset", 0))
        piece["missing"] = [s for s in record.get("sites", []) if record.get("results", {}).get(s) != "uploaded"]
        return piece

    def _admin_system(self, caller: Caller, args: dict) -> dict:
        now = time.monotonic()
        with self._lock:
            sites = [
                {"name": s.name, "connected": self._connected(s, now), "jobs": sorted(s.jobs)}
                for s in sorted(self._sites.values(), key=lambda s: s.name)
            ]
        records = self.store.all()
        return {
            "server": {"address": self.address, "mode": self.mode, "workspace": self.workspace},
            "sites": sites,
            "running": [_summary(r) for r in records if r["status"] in J.ACTIVE],
            "queued": [_summary(r) for r in records if r["status"] == J.SUBMITTED],
        }

    def _drop_download(self, job_id: str) -> None:
        try:
            os.unlink(os.path.join(self.store.folder(job_id), "download.tar.gz"))
        except OSError:
            pass

    # scheduling ----------------------------------------------------------------------------------------
    @staticmethod
    def _connected(site: _Site, now: float) -> bool:
        return site.polling > 0 or now - site.last_seen < SITE_SEEN

    def connected_sites(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return sorted(s.name for s in self._sites.values() if self._connected(s, now))

    def _schedule_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._schedule_once()
            except Exception:
                _log.exception("the job scheduler failed; it goes on")
            with self._lock:
                self._lock.wait(1.0)

    def _schedule_once(self) -> None:
        for record in self.store.queued():
            with self._lock:
                if len(self._procs) >= self.max_jobs:
                    return
            targets = self._targets(record)
            if targets is not None:
                self._start_job(record, targets)

    def _targets(self, record: dict) -> list[str] | None:
        """The sites to run ``record`` on now, or None while it must wait (the reason goes into the record)."""
        connected = set(self.connected_sites())
        named = record.get("named_sites") or []
        pool = [s for s in named if s in connected] if named else sorted(connected)
        missing = [s for s in record.get("mandatory_clients", []) if s not in connected]
        need = max(1, record.get("min_clients") or (len(named) if named else 1))
        if missing or len(pool) < need:
            why = f"waiting for sites: {len(pool)} of {need} connected" + (
                f", mandatory {missing} missing" if missing else ""
            )
            if record.get("waiting") != why:
                self.store.update(record["job_id"], waiting=why)
            return None
        return pool

    def _job_address(self, job_id: str) -> str:
        if self._job_socket_dir is not None:
            return f"unix://{os.path.join(self._job_socket_dir, 'j-' + job_id[:8] + '.sock')}"
        host = self.address.rpartition(":")[0]
        bind = host.strip("[]") if host not in ("0.0.0.0", "[::]") else ("127.0.0.1" if host == "0.0.0.0" else "::1")
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((bind, 0))
            port = s.getsockname()[1]
        return f"{host}:{port}"

    def _socket_dir(self) -> str | None:
        path = unix_path(self.address)
        return os.path.dirname(os.path.abspath(path)) if path is not None else None

    def _start_job(self, record: dict, targets: list[str]) -> None:
        job_id = record["job_id"]
        folder = self.store.folder(job_id)
        listen = self._job_address(job_id)
        run_ws = os.path.join(folder, "workspace")
        os.makedirs(run_ws, exist_ok=True)
        cmd = launch_command(
            "server",
            os.path.join(folder, "job"),
            "--listen",
            listen,
            "-w",
            run_ws,
            "--job-id",
            job_id,
            "--clients",
            ",".join(targets),
            "--ready-timeout",
            str(self.job_ready_timeout),
            "--data-plane",
            self.data_plane,
            options=self,
        )
        try:
            proc = start(cmd, os.path.join(folder, "server_console.txt"))
        except OSError as exc:
            self.store.update(job_id, status=J.FAILED_TO_RUN, failure=f"the job server could not start: {exc}")
            return
        self.store.update(
            job_id,
            status=J.RUNNING,
            sites=targets,
            start_time=time.time(),
            job_server=listen,
            waiting=None,
            results={s: "pending" for s in targets},
        )
        _log.info("job %s (%s) started on %s", job_id, record["name"], ", ".join(targets))
        with self._lock:
            self._procs[job_id] = proc
            self._lock.notify_all()  # polls of its sites answer with it (see _site_poll)
        threading.Thread(target=self._watch, args=(job_id, proc), name=f"job-{job_id[:8]}", daemon=True).start()

    def _watch(self, job_id: str, proc: subprocess.Popen) -> None:
        import json

        rc = proc.wait()
        result_file = os.path.join(self.store.folder(job_id), "workspace", "server", "run_result.json")
        failure = None
        try:
            with open(result_file, encoding="utf-8") as f:
                failure = json.load(f).get("failure")
        except (OSError, ValueError):
            failure = f"the job server ended with exit status {rc} and wrote no result"
        with self._lock:
            aborted = job_id in self._aborting
            self._aborting.discard(job_id)
            self._procs.pop(job_id, None)
            self._lock.notify_all()  # a site whose job process still runs is told to stop it (see _site_poll)
        if aborted:
            status = J.FINISHED_ABORTED
        elif rc == 0 and failure is None:
            status = J.FINISHED_COMPLETED
        else:
            status = J.FINISHED_EXECUTION_EXCEPTION
        self.store.update(job_id, status=status, end_time=time.time(), failure=failure, exit_code=rc)
        _log.info("job %s: %s%s", job_id, status, f" ({failure})" if failure and not aborted else "")


_SITE_OPS = ("poll", "results", "ended")
_ADMIN_OPS = ("submit", "list", "meta", "abort", "download", "system")


def _summary(record: dict) -> dict:
    keys = ("job_id", "name", "status", "submitter", "submit_time", "start_time", "end_time", "sites", "failure")
    summary = {k: record.get(k) for k in keys}
    if record.get("status") == J.SUBMITTED and record.get("waiting"):
        summary["waiting"] = record["waiting"]
    return summary
