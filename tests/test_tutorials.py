"""The tutorials run top to bottom in a fresh kernel, each within two minutes, without an error."""

from __future__ import annotations

import glob
import os
import shutil
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tutorials")
NOTEBOOKS = sorted(glob.glob(os.path.join(TUTORIALS, "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_tutorial_runs(path, tmp_path):
    copy = tmp_path / os.path.basename(path)
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()  # raises CellExecutionError, naming the cell, on any error
    assert time.monotonic() - start < 120
