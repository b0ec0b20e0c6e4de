"""Build jobs in Python (FedJob) and read exported job folders (models.load_job)."""

from . import models
from .api import FedJob, JobCtx

__all__ = ["FedJob", "JobCtx", "models"]
