"""Fixtures the whole suite shares."""

from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.fixture
def short_dir():
    """A short private folder for Unix sockets (their paths hold about 100 bytes; tmp_path can be longer)."""
    folder = tempfile.mkdtemp(prefix="fl")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
