"""Names used when building jobs: what kind of filter an object is, and what kind of site a target is."""

from __future__ import annotations


class JobTargetType:
    """The two kinds of job target: the server, or a client site."""

    SERVER = "server"
    CLIENT = "client"

    @staticmethod
    def get_target_type(target: str) -> str:
        """Return ``"server"`` for the target ``"server"``, else ``"client"`` (a site name or ``"@ALL"``)."""
        return JobTargetType.SERVER if target == JobTargetType.SERVER else JobTargetType.CLIENT


class FilterType:
    """Which chain ``job.to(filter, target, filter_type=...)`` puts a filter in."""

    TASK_RESULT = "TASK_RESULT"
    TASK_DATA = "TASK_DATA"
