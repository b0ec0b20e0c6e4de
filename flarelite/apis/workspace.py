"""Workspace: where a site keeps its run folder and its app (config/ and custom/), as NVFlare's Workspace tells.

A site's run folder is ``WS/<site>`` (logs, results, models, tracking output); its app folder holds the job's
``config/`` and ``custom/`` for that site (where a training script that ScriptRunner added lives).
"""

from __future__ import annotations

import os


class Workspace:
    """The folders of one site; ``fl_ctx.get_workspace()`` and ``engine.get_workspace()`` return it."""

    def __init__(self, root_dir: str, site_name: str, run_dir: str, app_dir: str | None = None) -> None:
        self.root_dir = os.path.abspath(root_dir)
        self.site_name = site_name
        self.run_dir = os.path.abspath(run_dir)
        self.app_dir = os.path.abspath(app_dir) if app_dir else None

    def get_root_dir(self) -> str:
        """Return the workspace root (the folder that holds every site's folder in a simulation)."""
        return self.root_dir

    def get_site_config_dir(self) -> str:
        """Return the site's ``local/`` folder (site-side settings such as resources.json)."""
        return os.path.join(self.run_dir, "local")

    def get_run_dir(self, job_id: str | None = None) -> str:
        """Return the site's run folder for the job (``WS/<site>``)."""
        return self.run_dir

    def get_result_root(self, job_id: str | None = None) -> str:
        """Return where results are written (the run folder)."""
        return self.run_dir

    def get_app_dir(self, job_id: str | None = None) -> str:
        """Return the site's app folder (``config/`` and ``custom/``).

        Raises:
            RuntimeError: the site has no app yet (it has not joined a job).
        """
        if self.app_dir is None:
            raise RuntimeError(f"{self.site_name} has no app folder yet: it has not received its job's app")
        return self.app_dir

    def get_app_config_dir(self, job_id: str | None = None) -> str:
        """Return the app's ``config/`` folder."""
        return os.path.join(self.get_app_dir(job_id), "config")

    def get_app_custom_dir(self, job_id: str | None = None) -> str:
        """Return the app's ``custom/`` folder (the job's user code and scripts)."""
        return os.path.join(self.get_app_dir(job_id), "custom")

    def __repr__(self) -> str:
        return f"Workspace(site={self.site_name!r}, run_dir={self.run_dir!r}, app_dir={self.app_dir!r})"
