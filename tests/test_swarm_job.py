"""jobs/swarm runs as a user runs it: every site's own model learns, the sites agree, and they match FedAvg.

Both jobs run with ``--protocol memory`` (all sites in one process): torch is imported once instead of once
per site process, which keeps the test to seconds; the aux exchange is the same code path.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

pytestmark = [
    pytest.mark.skipif(find_spec("torch") is None, reason="jobs/swarm trains a torch model: pip install -e '.[torch]'"),
    pytest.mark.skipif(
        find_spec("sklearn") is None, reason="jobs/swarm trains on scikit-learn's digits: pip install scikit-learn"
    ),
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 6
N_CLIENTS = 4  # on a ring of 4 a site mixes with 2 of 3 others: gossip, not an exact average


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_job(name, workspace, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", name, "job.py"), "--workspace", str(workspace), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_swarm_learns_and_matches_fedavg(tmp_path):
    common = ["-n", str(N_CLIENTS), "--rounds", str(ROUNDS), "--protocol", "memory"]
    swarm_ws = tmp_path / "swarm"
    proc = run_job("swarm", swarm_ws, *common)
    for r in range(1, ROUNDS + 1):
        assert f"round {r}/{ROUNDS}: accuracy " in proc.stderr  # progress on the console

    final = {}
    for i in range(1, N_CLIENTS + 1):
        site_dir = swarm_ws / f"site-{i}"
        rows = read_csv(site_dir / "metrics.csv")
        assert [int(row["round"]) for row in rows] == list(range(ROUNDS + 1))  # round 0: the initial model
        accuracy = [float(row["test_accuracy"]) for row in rows]
        assert accuracy[-1] > 0.85, (f"site-{i}", accuracy)
        assert accuracy[-1] > accuracy[1] + 0.2, (f"site-{i}", accuracy)
        assert float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"]), rows
        assert (site_dir / "swarm_model.pt").is_file()
        final[f"site-{i}"] = accuracy[-1]
    assert max(final.values()) - min(final.values()) < 0.05, final  # the sites' models agree

    fedavg_ws = tmp_path / "fedavg"
    run_job("fedavg", fedavg_ws, *common)
    fedavg_accuracy = float(read_csv(fedavg_ws / "server" / "metrics.csv")[-1]["test_accuracy"])
    for site, accuracy in final.items():
        assert abs(accuracy - fedavg_accuracy) < 0.05, (site, accuracy, fedavg_accuracy)


def test_swarm_on_a_random_network(tmp_path):
    proc = run_job(
        "swarm", tmp_path, "-n", "5", "--rounds", "2", "--topology", "random", "--seed", "3", "--protocol", "memory"
    )
    assert "5 sites on a random network" in proc.stdout
    for i in range(1, 6):
        rows = read_csv(tmp_path / f"site-{i}" / "metrics.csv")
        assert [int(row["round"]) for row in rows] == [0, 1, 2]
        assert float(rows[-1]["test_loss"]) < float(rows[0]["test_loss"]), rows
