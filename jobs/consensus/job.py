"""consensus: sites on a random network average their initial values by talking only to their neighbours.

Each site starts from its own value and, at every iteration, replaces it with a weighted average of its
own and its neighbours' values (Metropolis-Hastings weights, so the limit is the plain average). At the
end every site's value is within 1e-6 of the average of the initial values; the script checks that.

Each site writes WS/<site>/metrics.csv (iteration, elapsed_s, value) as it goes and
WS/<site>/value_sequence.pt (its values, initial one first) at the end.

Run: python jobs/consensus/job.py [--workspace DIR] [--num-clients 3..10] [--seed N] [--protocol unix|grpc|memory]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import numpy as np

from flarelite.app_opt.p2p.controllers import DistOptController
from flarelite.app_opt.p2p.executors import ConsensusExecutor
from flarelite.app_opt.p2p.types import Config
from flarelite.app_opt.p2p.utils import generate_random_network, second_largest_eigenvalue, validate_network
from flarelite.job_config.api import FedJob

TOLERANCE = 1e-6


def iterations_for(matrix: np.ndarray, tolerance: float = 1e-9) -> int:
    """Iterations after which consensus errors have shrunk by ``tolerance`` (from the matrix's mixing rate)."""
    rate = second_largest_eigenvalue(matrix)
    if rate <= 0:
        return 1
    return max(10, math.ceil(math.log(tolerance) / math.log(rate)))


def build_job(
    num_clients: int = 5,
    seed: int | None = None,
    iterations: int | None = None,
    sync_timeout: float = 10,
) -> tuple[FedJob, np.ndarray]:
    """Return the consensus job on a random network of ``num_clients`` sites, and the network's mixing matrix.

    With a ``seed`` the network and the initial values are reproducible; without one each site draws its
    initial value at random.
    """
    if not 3 <= num_clients <= 10:
        raise ValueError(f"num_clients must be between 3 and 10, got {num_clients}")
    network, matrix = generate_random_network(num_clients=num_clients, seed=seed)
    validate_network(network, symmetric=True)  # symmetric weights: the sites converge to the plain average
    config = Config(network=network, extra={"iterations": iterations or iterations_for(matrix)})
    job = FedJob(name="consensus", min_clients=num_clients)
    job.to_server(DistOptController(config=config))
    initial = np.random.default_rng(seed).random(num_clients).tolist() if seed is not None else [None] * num_clients
    for i in range(num_clients):
        job.to(ConsensusExecutor(initial_value=initial[i], sync_timeout=sync_timeout), f"site-{i + 1}")
    return job, matrix


def read_histories(workspace: str, num_clients: int) -> dict[str, np.ndarray]:
    """Return each site's value history as a float64 array, from ``WS/<site>/metrics.csv`` (exact: Python writes a
    float's shortest repr), checking that ``value_sequence.pt`` (the same values, for ``torch.load``) is there;
    this process need not import torch (1.6-2 s) to check the run."""
    histories = {}
    for i in range(1, num_clients + 1):
        folder = os.path.join(workspace, f"site-{i}")
        if not os.path.getsize(os.path.join(folder, "value_sequence.pt")):
            raise RuntimeError(f"{folder}/value_sequence.pt is empty")
        with open(os.path.join(folder, "metrics.csv"), encoding="utf-8") as f:
            histories[f"site-{i}"] = np.array([float(row["value"]) for row in csv.DictReader(f)])
    return histories


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/flarelite/consensus")
    parser.add_argument("--num-clients", type=int, default=5, help="number of sites, 3 to 10")
    parser.add_argument("--seed", type=int, default=None, help="makes the network and the initial values reproducible")
    parser.add_argument("--iterations", type=int, default=None, help="default: enough for errors below 1e-9")
    parser.add_argument("--protocol", default="unix", choices=["unix", "grpc", "memory"])
    parser.add_argument("--export", metavar="JOB_ROOT", help="only export the job folder here")
    args = parser.parse_args()

    job, matrix = build_job(num_clients=args.num_clients, seed=args.seed, iterations=args.iterations)
    if args.export:
        print(job.export_job(args.export))
        return 0
    rate = second_largest_eigenvalue(matrix)
    print(f"{args.num_clients} sites on a random network; mixing rate (second largest eigenvalue) {rate:.4f}")
    job.simulator_run(args.workspace, protocol=args.protocol)

    histories = read_histories(args.workspace, args.num_clients)
    average = float(np.mean([h[0] for h in histories.values()]))
    worst = max(abs(float(h[-1]) - average) for h in histories.values())
    for site, h in histories.items():
        print(f"{site}: initial {float(h[0]):.6f} -> final {float(h[-1]):.9f} after {len(h) - 1} iterations")
    print(f"average of the initial values {average:.9f}; largest distance {worst:.2e} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
