"""Every module of the transports imports first, on its own (no import cycle hides behind the usual order)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

CODE = """
import importlib, pkgutil, sys
import flarelite.communication as package
names = sorted(m.name for m in pkgutil.walk_packages(package.__path__, "flarelite.communication."))
failed = []
for name in names:
    for loaded in [k for k in sys.modules if k.startswith("flarelite")]:
        del sys.modules[loaded]  # as in a fresh interpreter whose first flarelite import is this module
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {exc!r}")
assert len(names) >= 20, names
assert not failed, failed
"""


def test_each_transport_module_imports_on_its_own():
    root = pathlib.Path(__file__).absolute().parents[1]
    done = subprocess.run([sys.executable, "-c", CODE], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
