"""APIContext: what ``flare.init()`` returns; every Client API function takes one as its optional ``ctx``."""

from __future__ import annotations

from typing import Any

from .client_api import ClientAPI


class APIContext:
    """One Client API context (a rank of a training script bound to its site); a context manager."""

    def __init__(self, api: ClientAPI, rank: str, config_file: str | None = None, owner: Any = None) -> None:
        self.api = api
        self.rank = rank
        self.config_file = config_file
        self.owner = owner  # the site binding or external bootstrap this context was made on

    def __enter__(self) -> APIContext:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.api.shutdown()

    def __repr__(self) -> str:
        return f"APIContext(rank={self.rank!r}, site={self.api.get_site_name()!r})"
