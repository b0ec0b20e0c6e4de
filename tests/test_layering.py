"""DESIGN.md's rooms, enforced by reading the source with ``ast`` (nothing here imports the checked modules).

- apis/, runtime/, app_opt/, serialization/, job_config/ never import grpc, protobuf or flarelite.communication.grpc.
- app_common/, client/, app_opt/, recipe/ (the high-level layers) never import runtime/ or communication/.
- apis/ knows nothing of runtime, communication, simulator or job_config; serialization only inside functions.
- communication/ knows nothing of apis, runtime or job_config.
- no module under flarelite/ imports pickle or its relatives.
- ``import flarelite`` pulls in neither torch nor grpc.
- every re-exporting ``__init__.py`` declares ``__all__``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "flarelite"

GRPC_FREE_ROOMS = ["apis", "runtime", "app_opt", "serialization", "job_config", "app_common", "client", "recipe"]
GRPC_MODULES = ["grpc", "grpc_tools", "google.protobuf", "flarelite.communication.grpc"]
PICKLE_LIKE = ["pickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve"]
DYNAMIC_IMPORTERS = {"__import__", "import_module"}  # __import__("x"), importlib.import_module("x")


# ----------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Import:
    """One module a source file imports."""

    module: str  # absolute dotted name
    file: Path
    lineno: int
    nested: bool  # inside a function body (runs only when called)

    def where(self) -> str:
        rel = self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file
        return f"{rel}:{self.lineno} imports {self.module}" + (" (in a function)" if self.nested else "")


def _package_of(path: Path, root: Path) -> str:
    """Dotted package a file's relative imports resolve against."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1])  # for pkg/__init__.py: pkg; for pkg/mod.py: pkg


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    base = package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, file: Path, package: str) -> None:
        self.file = file
        self.package = package
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, module: str, node: ast.AST) -> None:
        if module:
            self.found.append(Import(module, self.file, node.lineno, self.depth > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(node, self.package)
        self._add(base, node)
        for alias in node.names:  # `from pkg import sub` may import the submodule pkg.sub
            if alias.name != "*":
                self._add(f"{base}.{alias.name}" if base else alias.name, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in DYNAMIC_IMPORTERS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                self._add(arg.value, node)
        self.generic_visit(node)


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _Collector(path, _package_of(path, root))
    collector.visit(tree)
    return collector.found


def py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _matches(module: str, prefixes: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(folder: Path, forbidden: list[str], *, module_level_only: bool = False) -> list[str]:
    out = []
    for f in py_files(folder):
        for imp in imports_of(f):
            if module_level_only and imp.nested:
                continue
            if _matches(imp.module, forbidden):
                out.append(imp.where())
    return sorted(set(out))


# ----------------------------------------------------------------------------------------------- the helper itself


def test_import_collector_resolves_relative_and_nested_imports(tmp_path):
    mod = tmp_path / "flarelite" / "apis" / "impl" / "m.py"
    mod.parent.mkdir(parents=True)
    mod.write_text(
        "import grpc\n"
        "import os.path as osp\n"
        "from ...runtime import server\n"
        "from .. import shareable\n"
        "from . import sibling\n"
        "from google import protobuf\n"
        "def f():\n"
        "    from flarelite.serialization import dumps\n"
        "    import importlib\n"
        "    return importlib.import_module('pickle')\n"
        "class C:\n"
        "    from ..fl_context import FLContext\n"
        "    def g(self):\n"
        "        return __import__('marshal')\n",
        encoding="utf-8",
    )
    found = {(i.module, i.nested) for i in imports_of(mod, root=tmp_path)}
    assert ("grpc", False) in found
    assert ("os.path", False) in found
    assert ("flarelite.runtime", False) in found and ("flarelite.runtime.server", False) in found
    assert ("flarelite.apis.shareable", False) in found
    assert ("flarelite.apis.impl.sibling", False) in found
    assert ("google.protobuf", False) in found
    assert ("flarelite.serialization", True) in found
    assert ("pickle", True) in found
    assert ("flarelite.apis.fl_context", False) in found  # class bodies run at import time
    assert ("marshal", True) in found
    assert _matches("google.protobuf.message", GRPC_MODULES)
    assert _matches("flarelite.communication.grpc.server", GRPC_MODULES)
    assert not _matches("grpcio_helpers", GRPC_MODULES)
    assert not _matches("flarelite.communication.memory", GRPC_MODULES)


def test_rooms_exist_and_hold_sources():
    for room in ["apis", "runtime", "serialization", "job_config", "communication"]:
        assert py_files(PKG / room), f"no sources under flarelite/{room}: the layering checks would be vacuous"
    assert (PKG / "app_opt").is_dir()


# ----------------------------------------------------------------------------------------------- the rooms


@pytest.mark.parametrize("room", GRPC_FREE_ROOMS)
def test_room_does_not_import_grpc(room):
    found = violations(PKG / room, GRPC_MODULES)
    assert found == [], f"flarelite/{room} must not touch grpc/protobuf (DESIGN.md, Layout):\n" + "\n".join(found)


def test_apis_does_not_import_other_rooms():
    forbidden = ["flarelite.runtime", "flarelite.communication", "flarelite.simulator", "flarelite.job_config"]
    found = violations(PKG / "apis", forbidden)
    assert found == [], "flarelite/apis must know nothing of transports, processes or jobs:\n" + "\n".join(found)


def test_apis_imports_serialization_only_inside_functions():
    found = violations(PKG / "apis", ["flarelite.serialization"], module_level_only=True)
    assert found == [], "flarelite/apis may import the codec only lazily, inside functions:\n" + "\n".join(found)


@pytest.mark.parametrize("room", ["app_common", "client", "app_opt", "recipe"])
def test_high_level_rooms_build_on_the_public_api_only(room):
    """app_common/, client/, app_opt/ and recipe/ are written as user code would be: on apis/ and job_config/."""
    forbidden = ["flarelite.runtime", "flarelite.communication", *GRPC_MODULES]
    found = violations(PKG / room, forbidden)
    assert found == [], f"flarelite/{room} must build on the public API, not the runtime:\n" + "\n".join(found)


def test_communication_knows_nothing_of_tasks():
    forbidden = ["flarelite.apis", "flarelite.runtime", "flarelite.job_config"]
    found = violations(PKG / "communication", forbidden)
    assert found == [], "flarelite/communication must move bytes only:\n" + "\n".join(found)


def test_no_pickle_anywhere():
    found = violations(PKG, PICKLE_LIKE)
    assert found == [], "no pickle on anything (DESIGN.md, Layout: serialization/):\n" + "\n".join(found)


def test_import_flarelite_pulls_in_neither_torch_nor_grpc():
    code = (
        "import flarelite, sys\n"
        "bad = sorted(m for m in ('torch', 'grpc', 'google.protobuf') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'grpc' not in sys.modules\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------------------------- __all__


def _reexporting_inits() -> list[Path]:
    out = []
    for init in sorted(PKG.rglob("__init__.py")):
        if "__pycache__" in init.parts:
            continue
        tree = ast.parse(init.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.ImportFrom) and n.level >= 1 for n in tree.body):
            out.append(init)
    return out


def _module_all(tree: ast.Module) -> list | None:
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return ast.literal_eval(node.value)
    return None


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def test_there_are_reexporting_inits():
    rel = {str(p.relative_to(ROOT)) for p in _reexporting_inits()}
    assert "flarelite/__init__.py" in rel


@pytest.mark.parametrize("init", _reexporting_inits(), ids=lambda p: str(p.relative_to(ROOT)))
def test_reexporting_init_defines_all(init):
    tree = ast.parse(init.read_text(encoding="utf-8"))
    exported = _module_all(tree)
    rel = init.relative_to(ROOT)
    assert exported is not None, f"{rel} re-exports names (from .x import ...) but defines no __all__"
    assert isinstance(exported, (list, tuple)) and all(isinstance(n, str) for n in exported), rel
    assert len(exported) == len(set(exported)), f"{rel}: __all__ lists a name twice"
    unbound = sorted(set(exported) - _bound_names(tree))
    assert unbound == [], f"{rel}: __all__ names {unbound} that the module does not define"
