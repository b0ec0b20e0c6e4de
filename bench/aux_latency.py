"""Small aux round trip site-1 -> site-2: in-process, and between processes over a Unix socket and TCP, next to
baselines measured in the same run (a queue.Queue thread round trip; a raw grpcio bidirectional-stream ping-pong
between two processes).

Targets (from the issue):
  - in-process: aux median within 5x of the queue.Queue round trip;
  - processes: "direct within 1.5x of the raw ping-pong, relayed within 3x". Relayed: frames between sites go
    through the server; direct: direct_p2p=True, the sites hold a gRPC stream to each other.

Run: python bench/aux_latency.py [--n 3000]
Prints one table: median and p99 in microseconds, and the ratio to the baseline of its kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_components  # noqa: E402
from _jobs import write_job  # noqa: E402
from _raw_grpc import RawServer  # noqa: E402

from flarelite.simulator.runner import run_simulation  # noqa: E402

TRANSPORTS = {"unix": "Unix socket", "grpc": "TCP"}  # run_simulation's protocol -> its name here


def queue_round_trips(n: int) -> list[float]:
    """Round trips of a token between two threads through two queue.Queue objects."""
    q1: queue.Queue = queue.Queue()
    q2: queue.Queue = queue.Queue()

    def echo() -> None:
        for _ in range(n):
            q2.put(q1.get())

    t = threading.Thread(target=echo)
    t.start()
    rtts = []
    for i in range(n):
        t0 = time.perf_counter()
        q1.put(i)
        q2.get()
        rtts.append(time.perf_counter() - t0)
    t.join()
    return rtts


def aux_round_trips(n: int, protocol: str, direct_p2p: bool = False) -> list[float]:
    """site-1 -> site-2 aux round trips; in the processes modes the server writes them to a file for us."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rtts.json")
        job = write_job(
            tmp,
            {"path": "bench_components.PingController", "args": {"n": n, "out": out}},
            {"path": "bench_components.PingExecutor", "args": {}},
            "aux_latency",
        )
        run_simulation(job, os.path.join(tmp, "ws"), n_clients=2, protocol=protocol, direct_p2p=direct_p2p)
        if protocol == "memory":
            return bench_components.RESULTS["rtts"]
        with open(out) as f:
            return json.load(f)


def raw_round_trips(n: int, protocol: str) -> list[float]:
    """Raw grpcio ping-pong between two processes, over the transport of ``protocol``."""
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix://{tmp}/raw.sock" if protocol == "unix" else "127.0.0.1:0"
        with RawServer(address) as server:
            return server.client("ping", n)  # type: ignore[return-value]


def summarize(rtts: list[float]) -> tuple[float, float]:
    rtts = sorted(rtts[len(rtts) // 10 :])  # drop warm-up
    med = statistics.median(rtts) * 1e6
    p99 = rtts[int(len(rtts) * 0.99) - 1] * 1e6
    return med, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # quiet console; site logs still get INFO
    base = summarize(queue_round_trips(args.n))
    in_process = summarize(aux_round_trips(args.n, "memory"))
    rows = [("queue.Queue thread round trip (baseline)", base, base), ("aux in-process", in_process, base)]
    verdicts = [("in-process aux within 5x of queue.Queue", in_process[0] <= 5 * base[0])]
    for protocol, name in TRANSPORTS.items():
        raw = summarize(raw_round_trips(args.n, protocol))
        relayed = summarize(aux_round_trips(args.n, protocol))
        direct = summarize(aux_round_trips(args.n, protocol, direct_p2p=True))
        rows += [
            (f"raw grpcio ping-pong, {name} (baseline)", raw, raw),
            (f"aux relayed via server, {name}", relayed, raw),
            (f"aux direct (direct_p2p), {name}", direct, raw),
        ]
        verdicts.append((f"relayed within 3x of raw grpcio, {name}", relayed[0] <= 3 * raw[0]))
        verdicts.append((f"direct within 1.5x of raw grpcio, {name}", direct[0] <= 1.5 * raw[0]))
    print(f"{'site-1 -> site-2 round trip':<46}{'median us':>11}{'p99 us':>10}{'x baseline':>12}")
    for what, stats, baseline in rows:
        print(f"{what:<46}{stats[0]:>11.1f}{stats[1]:>10.1f}{stats[0] / baseline[0]:>12.2f}")
    for target, met in verdicts:
        print(f"target: {target} -> {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
