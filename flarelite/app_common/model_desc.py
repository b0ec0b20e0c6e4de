"""ModelDescriptor: one entry of a persistor's model inventory (used by cross-site evaluation)."""

from __future__ import annotations


class ModelDescriptor:
    """A model a persistor can hand out: its name, where it is, its format and extra props."""

    def __init__(self, name: str, location: str, model_format: str, props: dict | None = None) -> None:
        self.name = name
        self.location = location
        self.model_format = model_format
        self.props = props

    def __repr__(self) -> str:
        return f"ModelDescriptor(name={self.name!r}, location={self.location!r}, model_format={self.model_format!r})"
