"""The hostile tests use the suite's shared fixtures (tests/wire_fixtures, tests/support.py): put tests/ on the path."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture
def short_dir():
    """A short private folder (Unix socket paths hold about 100 bytes; tmp_path can be longer); removed after."""
    folder = tempfile.mkdtemp(prefix="fl")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
