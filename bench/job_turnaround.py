"""Seconds from ``job submit`` of hello-p2p to its results downloaded, on an already running 3-site federation
(a long-lived ``flarelite server`` and 3 ``flarelite client`` sites, as processes on this machine).

Rows: the Python API (``flarelite.admin.Session``: submit, wait, download) and the CLI as an operator types it
(``flarelite job submit --wait`` then ``flarelite job download``: two more Python processes). Baseline, measured
in the same run: the same job run once by ``flarelite simulator`` (which starts the server and the sites too),
and the floor of any process-per-job design here: starting the 4 job processes (``python -c "import
flarelite.launch"``) side by side. Target (issue 10): under 1.5 s for the API row.

Run: python bench/job_turnaround.py [--runs 5] [--unix | --tcp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "federation_fixtures"))

from federation import Federation, export_hello_p2p  # noqa: E402

from flarelite.admin import Session  # noqa: E402


def api_turnaround(session: Session, job: str, dest: str) -> float:
    start = time.perf_counter()
    job_id = session.submit_job(job)
    meta = session.wait_for_job(job_id, timeout=120, poll_interval=0.02)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    session.download_job_result(job_id, dest)
    return time.perf_counter() - start


def cli_turnaround(address: str, job: str, dest: str) -> float:
    cli = [sys.executable, "-m", "flarelite.cli", "job"]
    start = time.perf_counter()
    out = subprocess.run([*cli, "submit", job, "--server", address, "--wait"], capture_output=True, text=True)
    job_id = out.stdout.strip().splitlines()[-1]
    subprocess.run([*cli, "download", job_id, "--server", address, "-o", dest], capture_output=True, check=True)
    return time.perf_counter() - start


def simulator_once(job: str, ws: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flarelite.cli", "simulator", job, "-w", ws], capture_output=True, check=True)
    return time.perf_counter() - start


def process_floor() -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", "import flarelite.launch, grpc"]) for _ in range(4)]
    for p in procs:
        p.wait()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="flt")
    fed = Federation(root)
    fed.start()
    rows = []
    try:
        job = export_hello_p2p(os.path.join(root, "jobs"))
        with Session(fed.address, timeout=60) as session:
            fed.wait_connected(session)
            api_turnaround(session, job, os.path.join(root, "warm"))  # warm-up
            api = [api_turnaround(session, job, os.path.join(root, f"api{i}")) for i in range(args.runs)]
            cli = [cli_turnaround(fed.address, job, os.path.join(root, f"cli{i}")) for i in range(args.runs)]
        sim = [simulator_once(job, os.path.join(root, f"sim{i}")) for i in range(max(1, args.runs // 2))]
        floor = min(process_floor() for _ in range(3))
        rows = [
            ("Session: submit, wait, download", api),
            ("CLI: job submit --wait, job download", cli),
            ("flarelite simulator (starts everything)", sim),
        ]
    finally:
        fed.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nhello-p2p on a running 3-site federation, seconds from submit to results downloaded ({args.runs} runs)")
    header = f"{'what':<42} | {'median':>7} | {'best':>6} | {'vs floor':>8} | target"
    print(header)
    print("-" * len(header))
    for label, times in rows:
        median = statistics.median(times)
        target = ("ok" if median < 1.5 else "over 1.5 s") if label.startswith("Session") else ""
        print(f"{label:<42} | {median:>6.2f}s | {min(times):>5.2f}s | {median / floor:>7.1f}x | {target}")
    print(f"{'floor: 4 job processes importing flarelite':<42} | {floor:>6.2f}s |")


if __name__ == "__main__":
    main()
