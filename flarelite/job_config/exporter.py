"""What FedJob writes: components recorded as ``{"path", "args"}`` and the user modules copied to ``custom/``.

A component is recorded the way NVFlare records it: the parameters of its class's ``__init__`` are looked
up as instance attributes ``x`` or ``_x``, and only values that differ from the parameter's default are
written. The sites rebuild it with ``Class(**args)``, so its class must be importable by its dotted path.

User code travels with the job: the module of every recorded class that is not part of flarelite, the
standard library or an installed package is copied to the app's ``custom/`` folder, together with every
local module it imports (found by parsing its source, never by running it).
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import inspect
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable
from enum import Enum
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

from ..apis.fl_component import FLComponent
from ..errors import ConfigError

_EMPTY = inspect.Parameter.empty
_SKIPPED_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_SPEC_KEYS = {"path", "args", "id", "name"}
_JSON_HINT = "use str, int, float, bool, None, a list, a dict with str keys, or a component object"


# ids --------------------------------------------------------------------------------------------------
def snake_id(name: str) -> str:
    """Return ``name`` (a class name) in snake case: ``P2PExecutor`` -> ``p2p_executor``."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z0-9])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"\W+", "_", text).strip("_").lower() or "component"


# recording components ---------------------------------------------------------------------------------
def class_path(cls: type, where: str) -> str:
    """Return ``module.Class`` for ``cls``, or raise ConfigError when the sites could not import it that way."""
    module, qualname = cls.__module__, cls.__qualname__
    if module in ("__main__", "__mp_main__"):
        raise ConfigError(
            f"cannot record {where}: class {cls.__name__} is defined in __main__ (your script or a notebook cell); "
            f"move it to a module file (e.g. modules.py next to your script) and import it from there"
        )
    if "<locals>" in qualname:
        raise ConfigError(
            f"cannot record {where}: class {cls.__name__} is defined inside a function ({module}.{qualname}), so "
            "the sites cannot import it; define it at the top level of a module file and import it from there"
        )
    if "." in qualname:
        raise ConfigError(
            f"cannot record {where}: class {qualname} is nested in another class ({module}.{qualname}); "
            "define it at the top level of its module"
        )
    loaded = sys.modules.get(module)
    if loaded is None or getattr(loaded, qualname, None) is not cls:
        raise ConfigError(
            f"cannot record {where}: class {cls.__name__} cannot be imported as {module}.{qualname}; "
            "define it at the top level of a module file and import it from there"
        )
    return f"{module}.{qualname}"


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Return the named ``__init__`` parameters of ``cls`` (those of its bases too when it forwards ``**kwargs``)."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # a C-level __init__ (object, builtins): nothing to record
            break
        forwards = False
        for i, (name, param) in enumerate(signature.parameters.items()):
            if i == 0 and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                continue  # self
            if param.kind == param.VAR_KEYWORD:
                forwards = True
            if param.kind in _SKIPPED_KINDS:
                continue
            params.setdefault(name, param)
        if not forwards:
            break
    return params


def _find_attr(obj: Any, name: str) -> tuple[bool, Any]:
    attrs = getattr(obj, "__dict__", {})
    if name in attrs:
        return True, attrs[name]
    key = "_" + name
    if key in attrs:
        value = attrs[key]
        if key == "_name" and isinstance(obj, FLComponent) and value == type(obj).__name__:
            return False, None  # FLComponent's own _name (the class name), not a stored argument
        return True, value
    return False, None


def _same(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if type(value) is not type(default):
        return False
    try:
        return bool(value == default)
    except Exception:  # e.g. arrays: ambiguous truth value
        return False


def _is_component(value: Any) -> bool:
    if isinstance(value, (type, ModuleType, FunctionType, BuiltinFunctionType, MethodType)):
        return False
    return hasattr(value, "__dict__") and type(value).__module__ != "builtins"


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _hint(value: Any) -> str:
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return " (for an array, pass value.tolist())"
    if isinstance(value, os.PathLike):
        return " (pass str(path))"
    if isinstance(value, (set, frozenset)):
        return " (pass a sorted list)"
    return ""


def to_config_value(value: Any, where: str, modules: set[str] | None = None, _stack: tuple[int, ...] = ()) -> Any:
    """Convert an argument value to its JSON form; component objects become ``{"path", "args"}``.

    Raises:
        ConfigError: the value (or something inside it) cannot be written to a job config; the message
            names ``where`` (class and parameter) and the type.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Enum):
        return to_config_value(value.value, where, modules, _stack)
    if isinstance(value, (int, float)):
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()  # numpy scalar
    if isinstance(value, (list, tuple)):
        return [to_config_value(v, f"{where}[{i}]", modules, _stack) for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(
                f"cannot record {where}: dict keys must be str for a JSON job config, "
                f"got {_type_name(bad[0])} key {bad[0]!r}"
            )
        if "path" in value and isinstance(value["path"], str) and set(value) <= _SPEC_KEYS:
            raise ConfigError(
                f"cannot record {where}: the dict {value!r} looks like a component spec ('path' and 'args' keys), so "
                "the sites would try to build it as a class; rename its keys or pass a component object instead"
            )
        return {k: to_config_value(v, f"{where}.{k}", modules, _stack) for k, v in value.items()}
    if _is_component(value):
        return record_component(value, where, modules, _stack)
    raise ConfigError(
        f"cannot record {where}: values of type {_type_name(value)} cannot be written to the job config; "
        f"{_JSON_HINT}{_hint(value)}"
    )


def record_component(obj: Any, where: str, modules: set[str] | None = None, _stack: tuple[int, ...] = ()) -> dict:
    """Return ``{"path": "module.Class", "args": {...}}`` for ``obj``; add the modules of its classes to ``modules``.

    Raises:
        ConfigError: the class cannot be imported by path (``__main__``, a function's local class), a required
            constructor argument was not stored on the object, or an argument cannot be written as JSON.
    """
    cls = type(obj)
    if id(obj) in _stack:
        raise ConfigError(f"cannot record {where}: the {cls.__name__} object refers to itself through its arguments")
    path = class_path(cls, where)
    if modules is not None:
        modules.add(cls.__module__)
    stack = (*_stack, id(obj))
    args: dict[str, Any] = {}
    for name, param in init_parameters(cls).items():
        found, value = _find_attr(obj, name)
        if not found:
            if param.default is _EMPTY:
                raise ConfigError(
                    f"cannot record {where}: {cls.__name__}.__init__ requires argument {name!r} but the object has no "
                    f"attribute {name!r} or '_{name}' to read it from; store it as self.{name} or self._{name} in "
                    "__init__ so FedJob can write it to the job config"
                )
            continue
        if param.default is not _EMPTY and _same(value, param.default):
            continue
        args[name] = to_config_value(
            value, f"{where} argument {name!r}" if not _stack else f"{where}.{name}", modules, stack
        )
    return {"path": path, "args": args}


# user modules -----------------------------------------------------------------------------------------
def _excluded_roots() -> list[str]:
    roots: set[str] = set()
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars) if scheme_vars else sysconfig.get_paths()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if paths.get(key):
                roots.add(paths[key])
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # some virtualenv versions
        pass
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        roots.add(user_site)
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the flarelite package
    return sorted({os.path.realpath(r) for r in roots})


def _under(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


class ModuleCollector:
    """Finds the local source files behind module names, following their imports."""

    def __init__(self, exclude_packages: Iterable[str] = ()) -> None:
        self.exclude_packages = {p.split(".")[0] for p in exclude_packages} | {"flarelite", "__main__", "__mp_main__"}
        self._roots = _excluded_roots()

    def is_local_file(self, origin: str | None) -> bool:
        """True for a .py file that belongs to none of flarelite, the standard library and installed packages."""
        if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
            return False
        real = os.path.realpath(origin)
        parts = set(real.split(os.sep))
        if parts & {"site-packages", "dist-packages"}:
            return False
        return not any(_under(real, root) for root in self._roots)

    def find(self, name: str) -> tuple[str, bool] | None:
        """Return ``(source file, is_package)`` for module ``name`` without importing it, or None if not found."""
        loaded = sys.modules.get(name)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else None
        file = getattr(loaded, "__file__", None)
        if spec is None and isinstance(file, str):
            return file, hasattr(loaded, "__path__")
        if spec is None:
            spec = self._find_spec(name)
        if spec is None or not spec.origin or not spec.has_location:
            return None
        return spec.origin, spec.submodule_search_locations is not None

    def _find_spec(self, name: str) -> Any:
        parent, _, _ = name.rpartition(".")
        try:
            if not parent:
                return importlib.util.find_spec(name)
            if parent in sys.modules:  # find_spec would only look at the loaded parent's __path__
                return importlib.util.find_spec(name)
            parent_spec = self._find_spec(parent)  # do not import the parent: that would run its code
            if parent_spec is None or parent_spec.submodule_search_locations is None:
                return None
            return importlib.machinery.PathFinder.find_spec(name, list(parent_spec.submodule_search_locations))
        except (ImportError, ValueError, AttributeError):
            return None

    def collect(self, module_names: Iterable[str]) -> dict[str, str]:
        """Return ``{path relative to custom/: source file}`` for the local modules named and those they import."""
        out: dict[str, str] = {}
        seen: set[str] = set()
        queue = list(module_names)
        while queue:
            name = queue.pop()
            if not name or name in seen or name.split(".")[0] in self.exclude_packages:
                continue
            seen.add(name)
            found = self.find(name)
            if found is None or not self.is_local_file(found[0]):
                continue
            origin, is_package = found
            parts = name.split(".")
            rel = os.path.join(*parts, "__init__.py") if is_package else os.path.join(*parts[:-1], parts[-1] + ".py")
            out[rel] = origin
            queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages that hold it
            queue.extend(imported_modules(origin, name, is_package))
        return out


def imported_modules(source_file: str, module_name: str, is_package: bool) -> list[str]:
    """Return the module names a source file imports (absolute, relative imports resolved), without running it."""
    try:
        with open(source_file, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=source_file)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    package = module_name if is_package else module_name.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg_parts = package.split(".") if package else []
                if node.level - 1 > len(pkg_parts) or not pkg_parts:
                    continue  # a relative import beyond the top package: it cannot work anyway
                base_parts = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base:
                continue
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names
