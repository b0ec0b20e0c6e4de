"""Small aux round trip between two sites in the in-process simulator, next to a queue.Queue thread round trip.

Run: python bench/aux_latency.py [--n 3000]
Prints one table: median and p99 in microseconds, and the ratio to the queue round trip measured in this run.
"""

from __future__ import annotations

import argparse
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

from flarelite.simulator.runner import run_simulation  # noqa: E402


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


def aux_round_trips(n: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(
            tmp,
            {"path": "bench_components.PingController", "args": {"n": n}},
            {"path": "bench_components.PingExecutor", "args": {}},
            "aux_latency",
        )
        run_simulation(job, os.path.join(tmp, "ws"), n_clients=2, protocol="memory")
    return bench_components.RESULTS["rtts"]


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
    base_med, base_p99 = summarize(queue_round_trips(args.n))
    aux_med, aux_p99 = summarize(aux_round_trips(args.n))
    print(f"{'what':<44}{'median us':>12}{'p99 us':>12}{'x queue':>10}")
    print(f"{'queue.Queue thread round trip (baseline)':<44}{base_med:>12.1f}{base_p99:>12.1f}{1.0:>10.2f}")
    print(
        f"{'aux round trip site-1 -> site-2 (in-process)':<44}"
        f"{aux_med:>12.1f}{aux_p99:>12.1f}{aux_med / base_med:>10.2f}"
    )
    print(f"target: aux median within 5x of the queue round trip -> {'met' if aux_med <= 5 * base_med else 'NOT met'}")


if __name__ == "__main__":
    main()
