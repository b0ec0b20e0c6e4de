"""Client: a site as the server sees it."""

from __future__ import annotations

import time
from typing import Any


class Client:
    """A client site known to the server: its name, token and last connection time."""

    def __init__(self, name: str, token: str = "") -> None:
        self.name = name
        self.token = token
        self.last_connect_time = time.time()
        self.props: dict[str, Any] = {}

    def set_prop(self, name: str, value: Any) -> None:
        """Set a prop."""
        self.props[name] = value

    def get_prop(self, name: str, default: Any = None) -> Any:
        """Return a prop, or ``default``."""
        return self.props.get(name, default)

    def get_fqsn(self) -> str:
        """Return the fully qualified site name (the name: flarelite has no site hierarchy)."""
        return self.name

    def get_fqcn(self) -> str:
        """Return the fully qualified cell name (the name)."""
        return self.name

    def get_is_leaf(self) -> bool:
        """True: every flarelite client is a leaf."""
        return True

    def to_dict(self) -> dict:
        """Return ``{"name", "token", "props"}``."""
        return {"name": self.name, "token": self.token, "props": dict(self.props)}

    def __repr__(self) -> str:
        return f"Client({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Client) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)
