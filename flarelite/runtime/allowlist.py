"""Which classes a job config may name: the allow-list, checked before a component's module is imported.

A site builds ``{"path": "pkg.mod.Class", "args": {...}}`` only when the path is allowed by one of:

- flarelite itself: a path under ``flarelite.`` that names a class defined in flarelite;
- the job's own code: a module whose file is in the app's ``custom/`` folder (shipped with the app, or
  present in the job folder the site was given);
- the site's operator: ``--allow-class ENTRY`` (``allowed_classes=[...]`` in Python), or the
  ``class_allow_list`` of ``<site folder>/local/resources.json``.

An operator entry allows the class path it names and every path under it: ``torch.nn`` allows
``torch.nn.Linear`` and ``torch.nn.modules.linear.Linear``; ``mypkg.models.Net`` allows that one class.
Anything else is refused with a ComponentBuildError that names the path and how to allow it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable

from ..errors import ComponentBuildError, ConfigError

RESOURCES_FILE = os.path.join("local", "resources.json")
ALLOW_LIST_KEY = "class_allow_list"
BUILTIN_PACKAGE = "flarelite"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _under(path: str, entry: str) -> bool:
    return path == entry or path.startswith(entry + ".")


def check_entries(entries: Iterable[str], source: str) -> tuple[str, ...]:
    """Return ``entries`` as a tuple after checking each is a dotted name (``torch.nn``, ``pkg.mod.Class``).

    Raises:
        ConfigError: an entry is not a str of dotted Python identifiers; the message names ``source``.
    """
    if isinstance(entries, str):
        raise ConfigError(f"{source}: expected a list of class paths or module prefixes, got the str {entries!r}")
    out = []
    for entry in entries:
        if not isinstance(entry, str) or not _DOTTED.fullmatch(entry):
            raise ConfigError(
                f"{source}: {entry!r} is not a class path or module prefix (dotted Python names, e.g. 'torch.nn' "
                "or 'mypkg.models.Net')"
            )
        out.append(entry)
    return tuple(out)


def read_site_allow_list(site_folder: str) -> tuple[str, ...]:
    """The ``class_allow_list`` of ``<site_folder>/local/resources.json`` (empty when the file does not exist).

    Raises:
        ConfigError: the file exists but is not JSON, or its ``class_allow_list`` is not a list of dotted names.
    """
    path = os.path.join(site_folder, RESOURCES_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the site's allow-list {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object (with a {ALLOW_LIST_KEY!r} list), got {type(data).__name__}")
    entries = data.get(ALLOW_LIST_KEY, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: {ALLOW_LIST_KEY!r} must be a list of class paths or module prefixes")
    return check_entries(entries, f"{path} {ALLOW_LIST_KEY}")


class ClassPolicy:
    """The classes one site builds from its job config: flarelite's, the job's custom/ modules', the operator's.

    Parameters:
        allowed: the operator's entries (``--allow-class``, ``allowed_classes=``, the site's resources file).
        custom_dirs: the app's ``custom/`` folders; a module whose file is in one of them is the job's own.
        resources_file: the site's resources file, named in refusals (where the operator could allow a class).
    """

    def __init__(
        self, *, allowed: Iterable[str] = (), custom_dirs: Iterable[str] = (), resources_file: str | None = None
    ) -> None:
        self.allowed = check_entries(allowed, "allowed classes")
        self.custom_dirs = tuple(os.path.realpath(d) for d in custom_dirs)
        self.resources_file = resources_file

    @classmethod
    def for_site(cls, site_folder: str, *, allowed: Iterable[str] = (), custom_dirs: Iterable[str] = ()) -> ClassPolicy:
        """The policy of the site working in ``site_folder``: ``allowed`` plus its resources file's list."""
        entries = (*check_entries(allowed, "--allow-class"), *read_site_allow_list(site_folder))
        return cls(allowed=entries, custom_dirs=custom_dirs, resources_file=os.path.join(site_folder, RESOURCES_FILE))

    def with_custom_dirs(self, dirs: Iterable[str]) -> ClassPolicy:
        """This policy with ``dirs`` added to the job's custom/ folders (an app shipped by the server)."""
        return ClassPolicy(
            allowed=self.allowed, custom_dirs=(*self.custom_dirs, *dirs), resources_file=self.resources_file
        )

    # checks -------------------------------------------------------------------------------------------
    def _operator_entry(self, path: str) -> str | None:
        return next((e for e in self.allowed if _under(path, e)), None)

    def _custom_file(self, module_name: str) -> str | None:
        parts = module_name.split(".")
        for root in self.custom_dirs:
            for candidate in (os.path.join(root, *parts) + ".py", os.path.join(root, *parts, "__init__.py")):
                if os.path.isfile(candidate):
                    return candidate
        return None

    def _in_custom(self, file: str | None) -> bool:
        if not isinstance(file, str):
            return False
        real = os.path.realpath(file)
        return any(real.startswith(root + os.sep) for root in self.custom_dirs)

    def check_path(self, path: str, where: str) -> str:
        """Say why ``path`` may be imported ("flarelite", "custom" or "operator"), before anything is imported.

        Raises:
            ComponentBuildError: no rule allows it; the message says how to allow it.
        """
        if not _DOTTED.fullmatch(path):
            raise ComponentBuildError(f"{where}: component path {path[:200]!r} is not a dotted 'module.Class' path")
        module_name = path.rpartition(".")[0]
        if _under(module_name, BUILTIN_PACKAGE):
            return "flarelite"
        if self._operator_entry(path) is not None:
            return "operator"
        if self._custom_file(module_name) is not None:
            return "custom"
        raise ComponentBuildError(self._refusal(path, where))

    def check_class(self, path: str, cls: type, reason: str, where: str) -> None:
        """Check what a flarelite path turned out to be once imported: a class defined in flarelite (not one a
        flarelite module imported from elsewhere, such as pydantic's BaseModel).

        The job's custom/ modules and the operator's entries are trusted with what they expose: custom/ code
        runs anyway once the site accepted it, and an operator's entry says what it allows.

        Raises:
            ComponentBuildError: a flarelite path names a class defined outside flarelite.
        """
        if reason != "flarelite":
            return
        defined = f"{cls.__module__}.{cls.__qualname__}"
        if _under(cls.__module__, BUILTIN_PACKAGE) or self._operator_entry(defined) is not None:
            return
        if self._in_custom(getattr(sys.modules.get(cls.__module__), "__file__", None)):
            return
        raise ComponentBuildError(
            f"{where}: component {path!r} is the class {defined}, which is not defined in flarelite. "
            f"{self._how_to_allow(defined)}"
        )

    def _how_to_allow(self, path: str) -> str:
        where = self.resources_file or f"<site folder>/{RESOURCES_FILE}"
        return (
            f"To allow it, start the site with --allow-class {path} (allowed_classes=[{path!r}] in Python), or "
            f'add {path!r} to "{ALLOW_LIST_KEY}" in {where}'
        )

    def _refusal(self, path: str, where: str) -> str:
        return (
            f"{where}: component class {path!r} is not allowed: a job config may name only classes from flarelite, "
            "from the job's custom/ folder, or allowed by the site's operator (this keeps a job config from "
            f"running arbitrary code). {self._how_to_allow(path)}"
        )
