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


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two projects' certificates: ``main`` (server, site-1, site-2) and ``other`` (its own CA, server, site-1)."""
    from flarelite import certs

    root = tmp_path_factory.mktemp("pki")
    for project in ("main", "other"):
        folder = root / project
        certs.init_ca(folder, project)
        certs.issue(folder, "server", "server")
        certs.issue(folder, "site-1")
        if project == "main":
            certs.issue(folder, "site-2")
    return root
