"""Seconds per FedAvg round for a 10 MB and a 100 MB model over 10 sites, next to the time of moving the same
bytes there and back on this machine, in the same run.

A round is NVFlare's everyday program: FedAvg on the server sends the global model to every site, a Client API
script (ScriptRunner, in-process) receives it and sends it back, FedAvg aggregates. The script does no training,
so the round is all framework cost; the persistor keeps the saved model in memory (no disk). Timed by a server
component from ROUND_STARTED to the end of that round's aggregation; the first round (warm-up: imports,
connections) is left out and the rest averaged.

Baselines, measured here each run:
  - sites in one process (protocol "memory"): copying the bytes (numpy memcpy) to every site and back;
  - sites as processes (Unix sockets): a raw Unix-socket server sending the bytes to 10 client processes at once
    and receiving them back (socket.sendall / recv_into into huge-page memory allocated and touched before the
    clock, no framing, no codec): the machine's floor for moving them between processes.
Target (issue 9): a round costs at most 1.5x the baseline. The processes row uses the data channel beside gRPC
(the default on one machine); the row after it is the same run with ``data_plane="grpc"`` (gRPC alone).

With ``--nvflare PYTHON`` (an interpreter with ``nvflare==2.9.0`` installed, e.g. a separate venv) the same job,
its files with the import root changed to ``nvflare``, also runs in NVFlare's simulator (bench/_nvflare_round.py).

Run: python bench/fedavg_round.py [--sizes 10,100] [--sites 10] [--rounds 8] [--nvflare /path/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _fedavg_components import BenchPersistor, RoundClock, make_model  # noqa: E402

from flarelite.app_common.workflows.fedavg import FedAvg  # noqa: E402
from flarelite.job_config.api import FedJob  # noqa: E402
from flarelite.job_config.script_runner import FrameworkType, ScriptRunner  # noqa: E402


def fedavg_round(mb: int, sites: int, rounds: int, protocol: str, data_plane: str = "auto") -> tuple[float, float]:
    """Mean seconds per round after the first, and over the later half of the rounds, for a FedAvg job run with
    ``protocol`` (and ``data_plane``)."""
    with tempfile.TemporaryDirectory(prefix="fedavg_bench_") as tmp:
        job = FedJob(name="fedavg_round", min_clients=sites)
        job.to_server(FedAvg(num_clients=sites, num_rounds=rounds, persistor_id="persistor"))
        job.to_server(BenchPersistor(size_mb=mb), id="persistor")
        job.to_server(RoundClock(), id="round_clock")
        job.to_clients(ScriptRunner(os.path.join(HERE, "_fedavg_client.py"), framework=FrameworkType.NUMPY))
        ws = os.path.join(tmp, "ws")
        job.simulator_run(ws, n_clients=sites, protocol=protocol, log_config="concise", data_plane=data_plane)
        with open(os.path.join(ws, "server", "rounds.json")) as f:
            clock = json.load(f)
    spans = [end - start for start, end in zip(clock["starts"], clock["ends"])]
    later = spans[len(spans) // 2 :]
    return float(np.mean(spans[1:] if len(spans) > 1 else spans)), float(np.mean(later))


def memcpy_round(mb: int, sites: int) -> float:
    """Seconds to copy the model's bytes to every site and back (the floor for sites in one process): numpy
    copies into buffers allocated and touched before the clock, the best of 3."""
    arrays = make_model(mb)
    there = [{k: np.ones_like(v) for k, v in arrays.items()} for _ in range(sites)]
    back = [{k: np.ones_like(v) for k, v in arrays.items()} for _ in range(sites)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for site in range(sites):
            for k, v in arrays.items():
                np.copyto(there[site][k], v)
                np.copyto(back[site][k], there[site][k])
        best = min(best, time.perf_counter() - start)
    return best


_ECHO = r"""
import mmap, socket, sys
n, reps = int(sys.argv[2]), int(sys.argv[3])
buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)
if hasattr(mmap, "MADV_HUGEPAGE"):
    buf.madvise(mmap.MADV_HUGEPAGE)  # the fastest memory to receive into (as flarelite's receivers use)
view = memoryview(buf)
view[:] = bytes(n)  # touched before the clock: the pages exist, as in a program that reuses its buffer
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
for _ in range(reps):
    got = 0
    while got < n:
        got += s.recv_into(view[got:], n - got)
    s.sendall(view)
s.close()
"""


def socket_round(mb: int, sites: int, reps: int = 4) -> float:
    """Seconds for a raw Unix-socket server to send the bytes to ``sites`` processes at once and get them back.

    The best use of the machine: every buffer (each client's, and the server's one per client for what comes
    back) is allocated and touched before the clock starts and reused every time, so the time is the copying
    through the kernel alone; the best of ``reps`` exchanges (process scheduling on a busy machine is noisy).
    """
    payload = memoryview(b"".join(a.tobytes() for a in make_model(mb).values()))
    n = len(payload)
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix="raw_") as tmp:
        path = os.path.join(tmp, "s.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(sites)
        procs = [subprocess.Popen([sys.executable, "-c", _ECHO, path, str(n), str(reps)]) for _ in range(sites)]
        conns = [server.accept()[0] for _ in range(sites)]
        backs = []
        for _ in range(sites):
            back = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)
            if hasattr(mmap, "MADV_HUGEPAGE"):
                back.madvise(mmap.MADV_HUGEPAGE)
            backs.append(memoryview(back))
            backs[-1][:] = payload  # touched
        time.sleep(0.5)  # every client has touched its buffer too

        def serve(conn: socket.socket, view: memoryview) -> None:
            conn.sendall(payload)
            got = 0
            while got < n:
                got += conn.recv_into(view[got:], n - got)

        for _ in range(reps):
            start = time.perf_counter()
            threads = [threading.Thread(target=serve, args=(c, v)) for c, v in zip(conns, backs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            best = min(best, time.perf_counter() - start)
        for c in conns:
            c.close()
        for p in procs:
            p.wait(timeout=30)
        server.close()
    return best


def nvflare_round(python: str, mb: int, sites: int, rounds: int) -> float:
    """The same job run by NVFlare 2.9.0 (bench/_nvflare_round.py in ``python``); nan if it fails."""
    proc = subprocess.run(
        [python, os.path.join(HERE, "_nvflare_round.py"), str(mb), str(sites), str(rounds)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        print(f"NVFlare run failed ({proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return float("nan")
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="model sizes in MB, comma-separated")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8, help="rounds per run (the first is left out)")
    parser.add_argument(
        "--nvflare",
        metavar="PYTHON",
        help="also run the same job with NVFlare 2.9.0 installed for this interpreter (e.g. a venv's python)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for mb in [int(s) for s in args.sizes.split(",")]:
        for label, protocol, baseline_name, baseline in (
            ("sites in one process", "memory", "memcpy there and back", memcpy_round),
            ("sites as processes (Unix)", "unix", "raw Unix socket there and back", socket_round),
        ):
            base = baseline(mb, args.sites)
            ours = fedavg_round(mb, args.sites, args.rounds, protocol)
            rows.append((mb, label, ours, baseline_name, base))
            if protocol == "unix":  # the same without the data channel: what gRPC alone costs
                grpc_only = fedavg_round(mb, args.sites, args.rounds, protocol, data_plane="grpc")
                rows.append((mb, "processes, --data-plane grpc", grpc_only, baseline_name, base))
            if args.nvflare and protocol == "unix":
                theirs = nvflare_round(args.nvflare, mb, args.sites, args.rounds)
                rows.append((mb, "NVFlare 2.9.0 simulator", (theirs, float("nan")), baseline_name, base))
    print(
        f"\nFedAvg round, {args.sites} sites, Client API script in-process, seconds per round: the mean of rounds "
        f"2..{args.rounds} (the target's figure) and of the later half (rounds {args.rounds // 2 + 1}..)"
    )
    header = (
        f"{'model':>7} | {'sites':<28} | {'rounds 2..':>10} | {'later':>7} | {'baseline':<31} | {'baseline':>9} | "
        f"{'ratio':>6} | {'later':>6}"
    )
    print(header)
    print("-" * len(header))
    for mb, label, (ours, later), base_name, base in rows:
        ratio = ours / base if base > 0 else float("inf")
        verdict = "ok" if ratio <= 1.5 else "over 1.5x"
        print(
            f"{mb:>4} MB | {label:<28} | {ours:>9.3f}s | {later:>6.3f}s | {base_name:<31} | {base:>8.3f}s | "
            f"{ratio:>5.2f}x | {later / base:>5.2f}x {verdict}"
        )


if __name__ == "__main__":
    main()
