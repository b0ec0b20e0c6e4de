"""N sites in the in-process simulator: one broadcast_and_wait plus an aux exchange with two ring neighbours per round.

The sites have no threads of their own: they share the simulator's bounded pools (flarelite/runtime/pool.py).
Targets (from the issue): 10,000 sites under 20 s per round and under 4 GiB; 1,000 sites under 1 s per round.

Run: python bench/sim_scale.py [--sizes 10,1000,3000,10000] [--rounds 3]
Each size runs in its own process so its peak memory is its own. Prints one table; the ratio column is against
the first size's round, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def one(n: int, rounds: int) -> dict:
    import bench_components
    from _jobs import write_job

    from flarelite.simulator.runner import run_simulation

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # quiet console; site logs still get INFO
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(
            tmp,
            {"path": "bench_components.RingController", "args": {"rounds": rounds}},
            {"path": "bench_components.RingExecutor", "args": {}},
            "sim_scale",
        )
        t0 = time.perf_counter()
        run_simulation(job, os.path.join(tmp, "ws"), n_clients=n, protocol="memory", max_clients=n)
        total = time.perf_counter() - t0
    times = bench_components.RESULTS["round_times"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n,
        "round_s": min(times),
        "round_max_s": max(times),
        "total_s": total,
        "peak_mib": peak,
        "base_mib": base_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,3000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.rounds)))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(
        f"{'sites':>6}{'round s (best)':>16}{'round s (worst)':>17}{'run s (total)':>15}{'peak MiB':>10}"
        f"{'MiB/site':>10}{'round x 10 sites':>18}"
    )
    for r in rows:
        per_site = (r["peak_mib"] - r["base_mib"]) / r["n"]
        print(
            f"{r['n']:>6}{r['round_s']:>16.3f}{r['round_max_s']:>17.3f}{r['total_s']:>15.2f}{r['peak_mib']:>10.0f}"
            f"{per_site:>10.2f}{r['round_s'] / base['round_s']:>18.1f}"
        )
    targets = {1000: (1.0, None), 10000: (20.0, 4096)}  # sites: (worst round s, peak MiB)
    for r in rows:
        if r["n"] in targets:
            limit_s, limit_mib = targets[r["n"]]
            met = r["round_max_s"] < limit_s and (limit_mib is None or r["peak_mib"] < limit_mib)
            what = f"under {limit_s:g} s per round" + (f" and under {limit_mib // 1024} GiB" if limit_mib else "")
            print(f"target: {r['n']} sites {what} -> {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
