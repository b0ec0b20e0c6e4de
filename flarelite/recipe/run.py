"""Run: what ``recipe.run()`` / ``recipe.execute()`` return: the job id, its status, its result folder."""

from __future__ import annotations

import logging

from .spec import ExecEnv

_log = logging.getLogger("flarelite.recipe")


class Run:
    """One deployed job in its ExecEnv; ``get_result`` waits for it, then stops the environment."""

    def __init__(self, exec_env: ExecEnv, job_id: str) -> None:
        self.exec_env = exec_env
        self.job_id = job_id
        self._stopped = False
        self._status: str | None = None
        self._result: str | None = None

    def get_job_id(self) -> str:
        """Return the job id (the job's name in SimEnv and PocEnv)."""
        return self.job_id

    def get_status(self) -> str | None:
        """Return the job's status (None in SimEnv, or when it cannot be read: the error is logged).

        After ``get_result`` this is the status seen then.
        """
        if self._stopped:
            return self._status
        try:
            return self.exec_env.get_job_status(self.job_id)
        except Exception:
            _log.exception("cannot get the status of job %s", self.job_id)
            return None

    def get_result(self, timeout: float = 0.0, clean_up: bool = True) -> str | None:
        """Wait for the job (``timeout`` seconds; 0: no limit); return its result folder, or None.

        Then the environment is stopped (``clean_up``: PocEnv also removes its workspace, so the folder returned
        may be gone; SimEnv keeps it). Later calls return the same values without waiting.
        """
        if self._stopped:
            return self._result
        try:
            self._result = self.exec_env.get_job_result(self.job_id, timeout=timeout)
            self._status = self.exec_env.get_job_status(self.job_id)
        finally:
            self._stopped = True
            self.exec_env.stop(clean_up=clean_up)
        return self._result

    def abort(self) -> None:
        """Abort the job (nothing once ``get_result`` has stopped the environment)."""
        if self._stopped:
            return
        self.exec_env.abort_job(self.job_id)
