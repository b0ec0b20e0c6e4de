"""Build jobs in Python (FedJob); read exported job folders with ``flarelite.job_config.models.load_job``."""

from .api import FedJob, JobCtx

__all__ = ["FedJob", "JobCtx"]
