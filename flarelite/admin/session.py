"""Session: submit, watch, abort and download jobs on a long-lived flarelite server.

    from flarelite.admin import Session

    with Session("127.0.0.1:8002") as s:                      # local admin, no mTLS
        job_id = s.submit_job("jobs/hello-numpy/export")
        s.wait_for_job(job_id, timeout=600)
        path = s.download_job_result(job_id)                   # ./<job id>/workspace/{server,site-1,...}

    Session("fl.example.org:8002", name="admin@org.com", mode="mtls", certs="startup/")  # an admin certificate
    Session(workspace="/tmp/flarelite/poc")                  # a POC made by `flarelite poc prepare`

Method names follow NVFlare's FLARE API session (``submit_job``, ``list_jobs``, ``get_job_meta``, ``abort_job``,
``download_job_result``, ``monitor_job``, ``get_system_info``, ``close``).
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
import time
from typing import Any, Callable

from ..errors import ConfigError
from ..federation import jobs as J
from ..federation.archive import pack, unpack
from ..federation.control import ControlClient, ControlError
from ..federation.transfers import download, upload

DEFAULT_ADMIN = "admin@flarelite"
POC_FILE = "poc.json"


class MonitorReturnCode(enum.Enum):
    """What ``monitor_job`` ended with (NVFlare's names)."""

    JOB_FINISHED = 0
    TIMEOUT = 1
    ENDED_BY_CB = 2


def poc_settings(workspace: str) -> dict:
    """The settings ``flarelite poc prepare`` wrote into ``workspace``.

    Raises:
        ConfigError: ``workspace`` holds no POC.
    """
    path = os.path.join(os.path.abspath(workspace), POC_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, ValueError):
        raise ConfigError(
            f"{workspace} holds no POC ({POC_FILE} is missing or unreadable): make one with "
            f"`flarelite poc prepare -n 2 -w {workspace}`"
        ) from None
    return settings


class Session:
    """A connection to a long-lived server as an admin (see the module docstring).

    Parameters:
        server: the server's address (``host:port`` or ``unix:///path``); or give ``workspace``.
        name: the admin's name (under mTLS, the certificate ``<name>.crt`` in ``certs`` is presented).
        mode: ``clear``, ``tls`` or ``mtls`` (the server's); ``certs``: the folder with ``ca.crt`` and the
            admin's certificate (made by ``flarelite provision`` for an admin participant).
        workspace: a POC workspace (``flarelite poc prepare``): its address, mode and admin certificate.
        timeout: seconds a call (and the first contact) may take.

    Raises:
        ConfigError: bad options; ConnectError: the server does not answer within ``timeout``.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        name: str | None = None,
        mode: str | None = None,
        certs: str | None = None,
        workspace: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        from ..launch import tls_config

        if workspace is not None:
            poc = poc_settings(workspace)
            server = server or poc["address"]
            mode = mode or poc["mode"]
            certs = certs or poc.get("certs")
            name = name or poc.get("admin")
        if not server:
            raise ConfigError("Session needs the server's address (server='host:port') or a POC workspace")
        self.name = name or DEFAULT_ADMIN
        self.timeout = timeout
        self.client = ControlClient(server, tls_config(mode or "clear", certs, self.name), self.name)
        self.client.wait_until_up(timeout)

    # NVFlare's names -----------------------------------------------------------------------------------
    def submit_job(self, job_folder: str) -> str:
        """Send the job folder (``meta.json`` and its apps, e.g. made by ``FedJob.export_job``); return its id.

        Raises:
            ConfigError: the folder is not a job (checked here first, and by the server).
            ControlError: the server refused it.
        """
        from ..job_config.models import load_job

        load_job(job_folder)  # a clear error here, before anything is sent
        with tempfile.TemporaryDirectory(prefix="flarelite-submit-") as tmp:
            archive = os.path.join(tmp, "job.tar.gz")
            pack(job_folder, archive, skip=("__pycache__",))
            token = upload(self.client, archive, timeout=self.timeout)
        return str(self.client.call("submit", token=token, timeout=self.timeout)["job_id"])

    def list_jobs(self) -> list[dict]:
        """Every job the server knows: id, name, status, submitter, times, sites, failure (oldest first)."""
        return list(self.client.call("list", timeout=self.timeout))

    def get_job_meta(self, job_id: str) -> dict:
        """The job's whole record (status, sites, results per site, failure...)."""
        return dict(self.client.call("meta", job_id=job_id, timeout=self.timeout))

    def get_job_status(self, job_id: str) -> str:
        """The job's status: SUBMITTED, RUNNING, FINISHED:COMPLETED, FINISHED:ABORTED, FINISHED:ABNORMAL..."""
        return str(self.get_job_meta(job_id)["status"])

    def abort_job(self, job_id: str) -> None:
        """Stop the job on the server and on every site (a queued job never starts)."""
        self.client.call("abort", job_id=job_id, timeout=self.timeout)

    def monitor_job(
        self,
        job_id: str,
        timeout: float = 0.0,
        poll_interval: float = 2.0,
        cb: Callable[..., bool] | None = None,
        *cb_args: Any,
        **cb_kwargs: Any,
    ) -> MonitorReturnCode:
        """Wait for the job to end (``timeout`` 0: no limit); ``cb(session, job_id, meta, ...)`` returning False
        stops the wait."""
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            meta = self.get_job_meta(job_id)
            if cb is not None and not cb(self, job_id, meta, *cb_args, **cb_kwargs):
                return MonitorReturnCode.ENDED_BY_CB
            if meta["status"] in J.FINISHED:
                return MonitorReturnCode.JOB_FINISHED
            if deadline is not None and time.monotonic() >= deadline:
                return MonitorReturnCode.TIMEOUT
            time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic())))

    def wait_for_job(self, job_id: str, timeout: float | None = None, poll_interval: float = 0.25) -> dict:
        """Wait for the job to end; return its record.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds (naming its status then).
        """
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            meta = self.get_job_meta(job_id)
            if meta["status"] in J.FINISHED:
                return meta
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {meta['status']} after {timeout}s")
            time.sleep(poll_interval)

    def download_job_result(self, job_id: str, dest: str | None = None, wait_for_sites: float = 60.0) -> str:
        """Download the ended job's record and workspaces (``server/`` and each site's) into ``dest/<job id>``
        (``dest`` default: the current folder); return that folder.

        Sites upload their folders when their job process ends: this waits up to ``wait_for_sites`` seconds for
        them, then downloads what there is (``job.json`` names any site still missing under ``results``).
        """
        meta = self.get_job_meta(job_id)
        if meta["status"] not in J.FINISHED:
            raise ControlError(f"job {job_id} is {meta['status']}: its results come when it ends (wait_for_job)")
        deadline = time.monotonic() + wait_for_sites
        while time.monotonic() < deadline:
            results = self.get_job_meta(job_id).get("results", {})
            if all(state != "pending" for state in results.values()):
                break
            time.sleep(0.25)
        target = os.path.join(os.path.abspath(dest or "."), meta["job_id"])
        with tempfile.TemporaryDirectory(prefix="flarelite-download-") as tmp:
            archive = os.path.join(tmp, "result.tar.gz")
            download(self.client, "download", archive, timeout=self.timeout, job_id=job_id)
            unpack(archive, target)
        return target

    def get_system_info(self) -> dict:
        """The server (address, mode), its sites (connected or not, their jobs) and the running and queued jobs."""
        return dict(self.client.call("system", timeout=self.timeout))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def new_session(server: str | None = None, **options: Any) -> Session:
    """``Session(server, **options)`` (NVFlare has ``new_secure_session``/``new_insecure_session``)."""
    return Session(server, **options)


__all__ = ["ControlError", "MonitorReturnCode", "Session", "new_session", "poc_settings"]
