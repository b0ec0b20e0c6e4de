"""swarm: swarm learning (decentralized FedAvg, no central aggregation) of a torch MLP on scikit-learn's digits.

Each round every site trains locally (the model, data split and SGD step of jobs/fedavg), then averages its
weights with its neighbours' through aux (Metropolis-Hastings weights on a ring or a random network). The
server only sends each site its neighbours (DistOptController); it never sees a model.

Run: python jobs/swarm/job.py [--workspace DIR] [-n 4] [--rounds 10] [--topology ring|random]
                              [--protocol unix|grpc|memory]
Results: WS/site-N/metrics.csv (per round: train loss, test accuracy and loss of the site's own model),
WS/site-N/swarm_model.pt (the site's final model).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modules import METRICS_FILE, SwarmExecutor  # noqa: E402

from flarelite.app_opt.p2p.controllers import DistOptController  # noqa: E402
from flarelite.app_opt.p2p.types import Config  # noqa: E402
from flarelite.app_opt.p2p.utils import (  # noqa: E402
    generate_random_network,
    generate_ring_network,
    second_largest_eigenvalue,
    validate_network,
)
from flarelite.job_config.api import FedJob  # noqa: E402


def build_job(
    num_clients: int = 4,
    rounds: int = 10,
    topology: str = "ring",
    seed: int | None = 0,
    lr: float = 0.3,
    local_epochs: int = 1,
    mixing_steps: int = 1,
    non_iid: bool = False,
    sync_timeout: float = 30,
):
    """Return (the swarm job, the network's mixing matrix)."""
    if num_clients < 2:
        raise ValueError(f"swarm learning needs at least 2 sites, got {num_clients}")
    if topology == "ring":
        network, matrix = generate_ring_network(num_clients)
    elif topology == "random":
        network, matrix = generate_random_network(num_clients, seed=seed, connection_probability=0.5)
    else:
        raise ValueError(f"topology must be 'ring' or 'random', got {topology!r}")
    validate_network(network, symmetric=True)  # doubly stochastic: the sites are pulled to the plain average
    config = Config(
        network=network,
        extra={"rounds": rounds, "lr": lr, "local_epochs": local_epochs, "mixing_steps": mixing_steps},
    )
    job = FedJob(name="swarm", min_clients=num_clients)
    job.to_server(DistOptController(config=config))
    job.to_clients(SwarmExecutor(num_sites=num_clients, non_iid=non_iid, sync_timeout=sync_timeout))
    return job, matrix


def final_metrics(workspace: str, num_clients: int) -> dict[str, dict[str, str]]:
    """Return each site's last metrics row (``WS/<site>/metrics.csv``)."""
    result = {}
    for i in range(1, num_clients + 1):
        with open(os.path.join(workspace, f"site-{i}", METRICS_FILE), newline="", encoding="utf-8") as f:
            result[f"site-{i}"] = list(csv.DictReader(f))[-1]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/flarelite/swarm")
    parser.add_argument("-n", "--n_clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--topology", default="ring", choices=["ring", "random"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random network")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--mixing-steps", type=int, default=1, help="gossip exchanges per round")
    parser.add_argument("--non-iid", action="store_true", help="each site gets a label-sorted slice (few classes)")
    parser.add_argument("--protocol", default="unix", choices=["unix", "grpc", "memory"])
    parser.add_argument("--export", metavar="JOB_ROOT", help="only export the job folder here")
    args = parser.parse_args()

    job, matrix = build_job(
        num_clients=args.n_clients,
        rounds=args.rounds,
        topology=args.topology,
        seed=args.seed,
        lr=args.lr,
        local_epochs=args.local_epochs,
        mixing_steps=args.mixing_steps,
        non_iid=args.non_iid,
    )
    if args.export:
        print(job.export_job(args.export))
        return 0
    rate = second_largest_eigenvalue(matrix)
    print(f"{args.n_clients} sites on a {args.topology} network; mixing rate (second largest eigenvalue) {rate:.4f}")
    rc = job.simulator_run(args.workspace, n_clients=args.n_clients, protocol=args.protocol)
    if rc != 0:
        return rc
    for site, row in final_metrics(args.workspace, args.n_clients).items():
        print(f"{site}: round {row['round']}: test accuracy {float(row['test_accuracy']):.3f}, loss {row['test_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
