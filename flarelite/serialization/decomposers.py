"""Decomposers: the allow-list of extra types the codec may carry, looked up by exact type and by name.

A decomposer turns an object into a value the codec already carries (``decompose``) and back
(``recompose``). The sender records the type's fully qualified name (``module.qualname``); the
receiver looks that name up in *its own* registry and never imports anything named by the data,
so both sides must register the same decomposers before exchanging such values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = [
    "Decomposer",
    "register_decomposer",
    "unregister_decomposer",
    "registered_decomposers",
    "type_name",
]


class Decomposer(ABC):
    """Converts one exact type to an encodable value and back; register it with ``register_decomposer``."""

    @abstractmethod
    def supported_type(self) -> type:
        """Return the exact type this decomposer handles (subclasses are not matched)."""

    @abstractmethod
    def decompose(self, obj: Any) -> Any:
        """Return a value the codec can encode (plain values, containers, arrays, other decomposed types)."""

    @abstractmethod
    def recompose(self, data: Any) -> Any:
        """Rebuild the object from what ``decompose`` returned (after it went through the codec)."""


_BY_TYPE: dict[type, Decomposer] = {}
_BY_NAME: dict[str, tuple[type, Decomposer]] = {}


def type_name(t: type) -> str:
    """Return the fully qualified name ``module.qualname`` of type ``t``."""
    return f"{t.__module__}.{t.__qualname__}"


def register_decomposer(decomposer: Decomposer) -> None:
    """Allow ``decomposer.supported_type()`` in payloads; a later registration for the same type replaces it.

    Raises:
        TypeError: ``decomposer`` is not a ``Decomposer`` or its ``supported_type()`` is not a type.
        ValueError: the type is one the codec carries natively (a decomposer for it would never be used).
    """
    if not isinstance(decomposer, Decomposer):
        raise TypeError(f"register_decomposer expects a Decomposer instance, got {type_name(type(decomposer))}")
    t = decomposer.supported_type()
    if not isinstance(t, type):
        raise TypeError(f"{type_name(type(decomposer))}.supported_type() must return a type, got {t!r}")
    from .codec import NATIVE_TYPES  # lazy: codec imports this module

    if t in NATIVE_TYPES:
        raise ValueError(f"{type_name(t)} is carried natively by the codec; a decomposer for it would never be used")
    unregister_decomposer(t)
    _BY_TYPE[t] = decomposer
    _BY_NAME[type_name(t)] = (t, decomposer)


def unregister_decomposer(target: type | str) -> Decomposer | None:
    """Remove the decomposer for a type (or its ``module.qualname``); return it, or None if none was registered."""
    name = target if isinstance(target, str) else type_name(target)
    entry = _BY_NAME.pop(name, None)
    if entry is None:
        return None
    _BY_TYPE.pop(entry[0], None)
    return entry[1]


def registered_decomposers() -> dict[str, Decomposer]:
    """Return a copy of the registry: ``{module.qualname: decomposer}``."""
    return {name: entry[1] for name, entry in _BY_NAME.items()}


def decomposer_for_type(t: type) -> Decomposer | None:
    """Return the decomposer registered for exact type ``t``, or None."""
    return _BY_TYPE.get(t)


def decomposer_for_name(name: str) -> Decomposer | None:
    """Return the decomposer registered under ``name`` (``module.qualname``), or None."""
    entry = _BY_NAME.get(name)
    return None if entry is None else entry[1]
