"""Build components from job config entries (``{"path": "module.Class", "args": {...}}``)."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ComponentBuildError


def is_component_spec(value: Any) -> bool:
    """True for a dict that describes a component: ``{"path": str, "args": dict}`` (args optional)."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("path"), str)
        and set(value) <= {"path", "args", "id", "name"}
        and isinstance(value.get("args", {}), dict)
    )


def import_class(path: str, where: str) -> type:
    """Import ``module.Class`` named by ``path``."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ComponentBuildError(f"{where}: component path {path!r} must be 'module.Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ComponentBuildError(
            f"{where}: cannot import module {module_name!r} for component {path!r}: {exc!r}; make sure the module "
            "is in the job's custom/ folder or installed"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ComponentBuildError(
            f"{where}: module {module_name!r} has no attribute {class_name!r} (component {path!r})"
        )
    if not isinstance(cls, type):
        raise ComponentBuildError(f"{where}: {path!r} is not a class")
    return cls


def _build_value(value: Any, where: str) -> Any:
    if is_component_spec(value):
        return build_component(value, where)
    if isinstance(value, dict):
        return {k: _build_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_build_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def build_component(spec: dict, where: str) -> Any:
    """Instantiate the class of ``spec["path"]`` with ``spec["args"]`` (nested specs are built first).

    Raises:
        ComponentBuildError: the class cannot be imported or its constructor fails; the message names
            ``where`` (site and component id) and the class path.
    """
    path = spec.get("path")
    if not isinstance(path, str):
        raise ComponentBuildError(f"{where}: component entry has no 'path': {spec!r}")
    cls = import_class(path, where)
    args = _build_value(spec.get("args") or {}, where)
    try:
        return cls(**args)
    except Exception as exc:
        raise ComponentBuildError(f"{where}: cannot construct {path}({_fmt_args(args)}): {exc!r}") from exc


def _fmt_args(args: dict) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return text if len(text) < 200 else text[:200] + "..."
