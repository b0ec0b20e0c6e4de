"""The example jobs in jobs/ run as a user runs them: python jobs/<name>/job.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_job_script(name, *args):
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, "jobs", name, "job.py"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as exc:  # show where it stopped
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise AssertionError(f"jobs/{name}/job.py {' '.join(args)} ran over 120 s; its last output:\n{err[-5000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_hello_p2p(tmp_path):
    for timeout in ("10", "0"):
        out = run_job_script("hello-p2p", "--workspace", str(tmp_path / f"ws{timeout}"), "--timeout", timeout)
        assert out.count("Received message from") == 6


def test_hello_tasks(tmp_path):
    out = run_job_script("hello-tasks", "--workspace", str(tmp_path / "ws"))
    assert "broadcast done (ok): sum of answers = 33" in out
    assert "send done: site-2 answered {'name': 'site-2'}" in out
    assert "relay done through ['site-1', 'site-2', 'site-3']: value = 3" in out
    server_log = (tmp_path / "ws" / "server" / "log.txt").read_text()
    assert server_log.count("add_one: site-") == 6  # 3 broadcast results, 3 relay results


def _npy(root):
    import numpy as np

    return np.load(os.path.join(root, "hello-numpy", "server", "models", "server.npy"))


def test_hello_numpy_in_process_and_as_external_scripts(tmp_path):
    import numpy as np

    start = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)
    for variant, extra in (("inproc", []), ("external", ["--launch_external_process", "--update_type", "diff"])):
        root = tmp_path / variant
        run_job_script("hello-numpy", "--workspace_root", str(root), *extra)
        np.testing.assert_allclose(_npy(root), start + 3)  # 3 rounds, each site adds 1, FedAvg averages
        tb = root / "hello-numpy" / "server" / "tb_events"
        assert sorted(os.listdir(tb)) == ["site-1", "site-2"]
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(tb / "site-1"))
        log = (root / "hello-numpy" / "site-2" / "log.txt").read_text()
        assert "site-2: round 2" in log  # the script's print, in its site's log


def test_hello_pt_in_process_and_as_external_scripts(tmp_path):
    torch = __import__("pytest").importorskip("torch")
    variants = (("inproc", ["--protocol", "memory", "--cross_site_eval"]), ("external", ["--launch_external_process"]))
    for variant, extra in variants:
        root = tmp_path / variant
        run_job_script("hello-pt", "--workspace_root", str(root), "--num_rounds", "2", *extra)
        path = root / "hello-pt" / "server" / "app" / "FL_global_model.pt"
        checkpoint = torch.load(path, weights_only=True)
        assert set(checkpoint["model"]) >= {"conv1.weight", "fc2.bias"}
        tb = root / "hello-pt" / "server" / "tb_events"
        assert sorted(os.listdir(tb)) == ["site-1", "site-2"]
        log = (root / "hello-pt" / "site-1" / "log.txt").read_text()
        assert "site-1: round 1, global model accuracy" in log
    # cross-site evaluation: each site evaluated each site's model and the server's (the script answers
    # is_submit_model before it loads params: a submit_model task carries none)
    cross_val = tmp_path / "inproc" / "hello-pt" / "server" / "cross_site_val"
    results = json.loads((cross_val / "cross_val_results.json").read_text())
    for data_client in ("site-1", "site-2"):
        assert set(results[data_client]) >= {"site-1", "site-2", "SRV_FL_global_model.pt"}
        assert all(0.0 <= m["accuracy"] <= 1.0 for m in results[data_client].values())
