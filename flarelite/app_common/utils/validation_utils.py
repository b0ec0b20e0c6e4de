"""Argument checks shared by the workflows and job helpers (NVFlare keeps theirs in ``fuel/utils/validation_utils``).

``check_int`` / ``check_str`` raise TypeError for a wrong type and ValueError for a value out of range, naming
the argument. ``forward_args`` passes a constructor's arguments on to the one it extends, so a subclass that
repeats a long keyword-only signature (as NVFlare's recipes do) need not repeat it a second time in the call.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


def check_int(name: str, value: Any, minimum: int | None = 0) -> None:
    """Raise TypeError unless ``value`` is an int (not a bool), ValueError if it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_str(name: str, value: Any) -> None:
    """Raise TypeError unless ``value`` is a str."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def forward_args(values: dict[str, Any], target: Callable, **overrides: Any) -> dict[str, Any]:
    """Return the keyword arguments of ``target`` found in ``values`` (a caller's ``locals()``), then ``overrides``.

    ``self`` and names ``target`` does not take are left out.
    """
    params = inspect.signature(target).parameters
    args = {k: v for k, v in values.items() if k in params and k != "self"}
    args.update(overrides)
    return args
