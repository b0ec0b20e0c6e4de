"""The sdist holds what its tests need and says its licence the current way (PEP 639)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDED = [
    "LICENSE",
    "protos/flarelite.proto",
    "tests/wire_fixtures/inbox.py",
    "tests/hostile/conftest.py",
    "tests/client_api_fixtures/np_client.py",
    "tests/fedjob_fixtures/model_saver.py",
    "jobs/hello-p2p/job.py",
    "tutorials/06_client_api.ipynb",
    "bench/fuzz.py",
]


def test_the_sdist_holds_the_tests_support_files_and_the_licence(tmp_path):
    out = tmp_path / "dist"
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", build, str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "License classifiers are deprecated" not in proc.stderr + proc.stdout
    name = proc.stdout.strip().splitlines()[-1]
    with tarfile.open(out / name) as tar:
        root = tar.getnames()[0].split("/")[0]
        members = set(tar.getnames())
        info = tar.extractfile(f"{root}/PKG-INFO").read().decode()
    missing = [path for path in NEEDED if f"{root}/{path}" not in members]
    assert not missing, missing
    assert "License-File: LICENSE" in info and "Classifier: License ::" not in info
    with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
        assert "Apache License" in f.read(400)
