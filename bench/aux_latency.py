"""Small aux round trip site-1 -> site-2: in-process, and between processes over a Unix socket and TCP, next to
baselines measured in the same run (a queue.Queue thread round trip; a raw grpcio bidirectional-stream ping-pong
and a raw socket ping-pong of 64 bytes, each between two processes).

Rows: relayed (frames between sites go through the server, on gRPC); direct (direct_p2p=True: the sites connect
to each other; over a Unix socket their frames take the data channel beside that connection, data_plane auto);
direct over TCP on gRPC only (clear mode, data_plane auto) and on a TCP data channel (data_plane "tcp").

Targets (from the issues):
  - in-process: aux median within 5x of the queue.Queue round trip;
  - "direct within 1.5x of the raw grpcio ping-pong, relayed within 3x";
  - on a data channel: the direct round trip faster than the raw grpcio ping-pong, and within 4x of the raw
    socket ping-pong.

Run: python bench/aux_latency.py [--n 2000] [--repeat 3]
Prints one table: median and p99 in microseconds and the ratio to the baseline of its kind, each the median over
the rounds (every round measures every row, baselines included), then the ratio in each round.
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
from _raw_socket import round_trips as socket_round_trips  # noqa: E402

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


def aux_round_trips(n: int, protocol: str, direct_p2p: bool = False, data_plane: str = "auto") -> list[float]:
    """site-1 -> site-2 aux round trips; in the processes modes the server writes them to a file for us."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rtts.json")
        job = write_job(
            tmp,
            {"path": "bench_components.PingController", "args": {"n": n, "out": out}},
            {"path": "bench_components.PingExecutor", "args": {}},
            "aux_latency",
        )
        ws = os.path.join(tmp, "ws")
        run_simulation(job, ws, n_clients=2, protocol=protocol, direct_p2p=direct_p2p, data_plane=data_plane)
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


def raw_socket_round_trips(n: int, protocol: str) -> list[float]:
    """A raw socket ping-pong of 64 bytes between two processes, over a Unix socket or TCP (TCP_NODELAY)."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix://{tmp}/raw.sock" if protocol == "unix" else "127.0.0.1:0"
        script = os.path.join(HERE, "_raw_socket.py")
        proc = subprocess.Popen([sys.executable, script, "echo", address], stdout=subprocess.PIPE, text=True)
        try:
            ready = proc.stdout.readline().split()  # type: ignore[union-attr]
            assert ready and ready[0] == "READY", f"the echo process did not start: {ready}"
            return socket_round_trips(ready[1], n)
        finally:
            proc.wait(10)


def summarize(rtts: list[float]) -> tuple[float, float]:
    rtts = sorted(rtts[len(rtts) // 10 :])  # drop warm-up
    med = statistics.median(rtts) * 1e6
    p99 = rtts[int(len(rtts) * 0.99) - 1] * 1e6
    return med, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="round trips per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every measurement, interleaved")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # quiet console; site logs still get INFO
    # each round measures every row once, its baselines included, so that a ratio compares measurements taken
    # minutes apart at most; the table gives the median over the rounds (this machine's speed drifts)
    rows: dict[str, list[tuple[float, float, float]]] = {}  # what -> per round (median, p99, x baseline)
    targets: dict[tuple[str, str], float] = {}  # (row, target text) -> largest ratio allowed

    def record(what: str, stats: tuple[float, float], baseline: tuple[float, float]) -> None:
        rows.setdefault(what, []).append((stats[0], stats[1], stats[0] / baseline[0]))

    for _ in range(args.repeat):
        base = summarize(queue_round_trips(args.n))
        record("queue.Queue thread round trip (baseline)", base, base)
        record("aux in-process", summarize(aux_round_trips(args.n, "memory")), base)
        targets["aux in-process", "in-process aux within 5x of queue.Queue"] = 5.0
        for protocol, name in TRANSPORTS.items():
            raw = summarize(raw_round_trips(args.n, protocol))
            record(f"raw grpcio ping-pong, {name} (baseline)", raw, raw)
            sock = summarize(raw_socket_round_trips(args.n, protocol))
            record(f"raw socket ping-pong, {name} (baseline)", sock, sock)
            modes = [("relayed via server", False, "auto"), ("direct (direct_p2p)", True, "auto")]
            if protocol == "grpc":
                modes.append(("direct, TCP data channel", True, "tcp"))
            for mode, direct_p2p, plane in modes:
                what = f"aux {mode}, {name}"
                stats = summarize(aux_round_trips(args.n, protocol, direct_p2p=direct_p2p, data_plane=plane))
                record(what, stats, raw)
                limit = 3.0 if not direct_p2p else 1.5
                targets[what, f"{mode.split()[0].rstrip(',')} within {limit:g}x of raw grpcio, {name}"] = limit
                if direct_p2p and (protocol == "unix" or plane == "tcp"):  # on a data channel
                    record(f"{what}: x raw socket", stats, sock)
                    targets[what, f"{mode} faster than raw grpcio, {name}"] = 1.0
                    targets[f"{what}: x raw socket", f"{mode} within 4x of the raw socket, {name}"] = 4.0
    head = f"{'site-1 -> site-2 round trip':<46}{'median us':>11}{'p99 us':>10}{'x baseline':>12}"
    print(f"{head}{'x in each round':>22}")
    for what, per_round in rows.items():
        med, p99, ratio = (statistics.median(values) for values in zip(*per_round))
        each = " ".join(f"{r[2]:.2f}" for r in per_round)
        print(f"{what:<46}{med:>11.1f}{p99:>10.1f}{ratio:>12.2f}{each:>22}")
    for (what, text), limit in targets.items():
        ratio = statistics.median(r[2] for r in rows[what])
        print(f"target: {text} -> {'met' if ratio <= limit else 'NOT met'} ({ratio:.2f}x, median of {args.repeat})")


if __name__ == "__main__":
    main()
