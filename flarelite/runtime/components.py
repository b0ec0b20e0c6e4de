"""Build components from job config entries (``{"path": "module.Class", "args": {...}}``).

Only classes the site's ClassPolicy allows are built (see ``allowlist``); the check comes before the
module is imported, so a job config cannot make a site import, let alone construct, anything else.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ..errors import ComponentBuildError
from .allowlist import ClassPolicy

_DEFAULT_POLICY = ClassPolicy()  # flarelite's own classes only


def is_component_spec(value: Any) -> bool:
    """True for a dict that describes a component: ``{"path": str, "args": dict}`` (args optional)."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("path"), str)
        and set(value) <= {"path", "args", "id", "name"}
        and isinstance(value.get("args", {}), dict)
    )


def import_class(path: str, where: str, policy: ClassPolicy | None = None) -> type:
    """Import ``module.Class`` named by ``path`` once ``policy`` (default: flarelite only) allows it.

    Raises:
        ComponentBuildError: the path is not allowed, cannot be imported, or is not a class.
    """
    policy = policy or _DEFAULT_POLICY
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ComponentBuildError(f"{where}: component path {path!r} must be 'module.Class'")
    reason = policy.check_path(path, where)
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
    policy.check_class(path, cls, reason, where)
    return cls


def _build_value(value: Any, where: str, policy: ClassPolicy | None) -> Any:
    if is_component_spec(value):
        return build_component(value, where, policy)
    if isinstance(value, dict):
        return {k: _build_value(v, f"{where}.{k}", policy) for k, v in value.items()}
    if isinstance(value, list):
        return [_build_value(v, f"{where}[{i}]", policy) for i, v in enumerate(value)]
    return value


def build_component(spec: dict, where: str, policy: ClassPolicy | None = None) -> Any:
    """Instantiate the class of ``spec["path"]`` with ``spec["args"]`` (nested specs are built first).

    ``policy`` decides which classes may be built (default: flarelite's own only).

    Raises:
        ComponentBuildError: the class is not allowed, cannot be imported or its constructor fails; the
            message names ``where`` (site and component id) and the class path.
    """
    path = spec.get("path")
    if not isinstance(path, str):
        raise ComponentBuildError(f"{where}: component entry has no 'path': {spec!r}")
    cls = import_class(path, where, policy)
    args = _build_value(spec.get("args") or {}, where, policy)
    try:
        return cls(**args)
    except Exception as exc:
        raise ComponentBuildError(f"{where}: cannot construct {path}({_fmt_args(args)}): {exc!r}") from exc


def _fmt_args(args: dict) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return text if len(text) < 200 else text[:200] + "..."


def component_problems(config: Any, where: str, policy: ClassPolicy | None = None) -> list[str]:
    """What would fail when the components in ``config`` (an app's config, any nesting) are built, without
    building them: each class is checked against ``policy`` and imported, and its arguments are bound to its
    constructor's signature. One line per problem, naming where it sits; [] when every one would build.
    """
    import inspect

    problems: list[str] = []

    def visit(value: Any, at: str) -> None:
        if is_component_spec(value):
            spec_at = f"{at} ({value.get('id') or value.get('name') or value['path']})" if at else value["path"]
            try:
                cls = import_class(value["path"], spec_at, policy)
            except ComponentBuildError as exc:
                top = value["path"].split(".")[0]
                if importlib.util.find_spec(top) is None:  # say the simplest true thing: it is not there
                    problems.append(
                        f"{spec_at}: module {top!r} of component {value['path']!r} is neither in the app's custom/ "
                        "folder nor installed"
                    )
                else:
                    problems.append(str(exc))
            else:
                args = value.get("args") or {}
                try:
                    inspect.signature(cls).bind(**args)
                except TypeError as exc:
                    problems.append(f"{spec_at}: {value['path']} does not take these arguments: {exc}")
                except ValueError:
                    pass  # a signature Python cannot inspect (a builtin): it is tried at run time
            for key, arg in (value.get("args") or {}).items():
                visit(arg, f"{spec_at}.args.{key}")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{at}.{key}" if at else str(key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                visit(item, f"{at}[{i}]")

    visit(config, where)
    return problems
