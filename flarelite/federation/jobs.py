"""The long-lived server's job records: one folder per job, ``WS/jobs/<id>/`` with ``job.json`` (the record),
``job/`` (the submitted job folder) and ``workspace/`` (the run: ``server/`` and each site's uploaded folder).

Statuses are NVFlare's ``RunStatus`` strings. Records are written atomically, so a server that restarts reads
them back: a queued job is still queued, a job that was running ends as ``FINISHED:ABNORMAL``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

SUBMITTED = "SUBMITTED"
DISPATCHED = "DISPATCHED"
RUNNING = "RUNNING"
FINISHED_COMPLETED = "FINISHED:COMPLETED"
FINISHED_ABORTED = "FINISHED:ABORTED"
FINISHED_EXECUTION_EXCEPTION = "FINISHED:EXECUTION_EXCEPTION"
FINISHED_ABNORMAL = "FINISHED:ABNORMAL"
FAILED_TO_RUN = "FAILED_TO_RUN"
ACTIVE = (DISPATCHED, RUNNING)
FINISHED = (FINISHED_COMPLETED, FINISHED_ABORTED, FINISHED_EXECUTION_EXCEPTION, FINISHED_ABNORMAL, FAILED_TO_RUN)

RECORD = "job.json"


class JobStore:
    """Job records under ``root`` (``WS/jobs``), in memory and on disk; thread-safe."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._lock = threading.RLock()
        self._jobs: dict[str, dict[str, Any]] = {}
        for job_id in sorted(os.listdir(root)):
            path = os.path.join(root, job_id, RECORD)
            try:
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("job_id") == job_id:
                self._jobs[job_id] = record

    def folder(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._jobs[record["job_id"]] = record
            self._save(record)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return json.loads(json.dumps(record)) if record is not None else None

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            record = self._jobs[job_id]
            record.update(fields)
            self._save(record)
            return dict(record)

    def set_result(self, job_id: str, site: str, state: str) -> None:
        with self._lock:
            record = self._jobs[job_id]
            record.setdefault("results", {})[site] = state
            self._save(record)

    def owes_results(self, site: str) -> bool:
        """Whether ``site`` has results of a job still to upload."""
        with self._lock:
            return any(r.get("results", {}).get(site) == "pending" for r in self._jobs.values())

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((dict(r) for r in self._jobs.values()), key=lambda r: r.get("submit_time", 0))

    def queued(self) -> list[dict[str, Any]]:
        return [r for r in self.all() if r["status"] == SUBMITTED]

    def active(self) -> list[dict[str, Any]]:
        return [r for r in self.all() if r["status"] in ACTIVE]

    def recover(self) -> list[str]:
        """Jobs that were running when the server stopped end as FINISHED:ABNORMAL; return their ids."""
        ended = []
        with self._lock:
            for record in self._jobs.values():
                if record["status"] in ACTIVE:
                    record.update(
                        status=FINISHED_ABNORMAL,
                        failure="the server stopped while the job ran",
                        end_time=time.time(),
                    )
                    self._save(record)
                    ended.append(record["job_id"])
        return ended

    def _save(self, record: dict[str, Any]) -> None:
        folder = self.folder(record["job_id"])
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, RECORD + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, os.path.join(folder, RECORD))
