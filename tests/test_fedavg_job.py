"""jobs/fedavg runs as a user runs it, and its global model learns: test accuracy rises round by round."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

# checked without importing them: the job runs in its own processes, so this test process needs neither
pytestmark = [
    pytest.mark.skipif(
        find_spec("torch") is None, reason="jobs/fedavg trains a torch model: pip install -e '.[torch]'"
    ),
    pytest.mark.skipif(
        find_spec("sklearn") is None, reason="jobs/fedavg trains on scikit-learn's digits: pip install scikit-learn"
    ),
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 6
N_CLIENTS = 3


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_fedavg_learns(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "jobs", "fedavg", "job.py"),
            "--workspace",
            str(ws),
            "-n",
            str(N_CLIENTS),
            "--rounds",
            str(ROUNDS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(1, ROUNDS + 1):
        assert f"round {r}/{ROUNDS}: accuracy " in proc.stderr  # progress on the console

    rows = read_csv(ws / "server" / "metrics.csv")
    assert [int(row["round"]) for row in rows] == list(range(ROUNDS + 1))  # round 0: the initial model
    accuracy = [float(row["test_accuracy"]) for row in rows]
    assert all(int(row["num_clients"]) == N_CLIENTS for row in rows[1:])
    assert accuracy[-1] > 0.85, accuracy
    assert accuracy[-1] > accuracy[1] + 0.2, accuracy  # clearly better than after round 1
    assert float(rows[-1]["test_loss"]) < float(rows[1]["test_loss"]), rows
    assert (ws / "server" / "global_model.pt").is_file()

    samples = 0
    for i in range(1, N_CLIENTS + 1):
        losses = read_csv(ws / f"site-{i}" / "train_loss.csv")
        assert [int(row["round"]) for row in losses] == list(range(1, ROUNDS + 1))
        assert float(losses[-1]["train_loss"]) < float(losses[0]["train_loss"]), losses
        samples += int(losses[0]["num_samples"])
    assert int(rows[-1]["num_samples"]) == samples  # every site's result was in the average
