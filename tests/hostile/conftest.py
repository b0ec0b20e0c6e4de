"""The hostile tests use the suite's shared fixtures (tests/wire_fixtures, tests/support.py): put tests/ on the path."""

from __future__ import annotations

import os
import sys

import pytest

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A project CA with certificates for the server and site-1..site-3 (the mTLS worlds of the hostile tests)."""
    from flarelite import certs

    root = tmp_path_factory.mktemp("hostile-pki")
    certs.init_ca(root, "hostile")
    certs.issue(root, "server", "server")
    for name in ("site-1", "site-2", "site-3"):
        certs.issue(root, name)
    return root
