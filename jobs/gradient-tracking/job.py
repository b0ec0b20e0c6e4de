"""gradient-tracking: sites holding different slices of the digits data set jointly fit a logistic regression.

No site sees another's images and there is no server-side aggregation: at each iteration a site mixes
its parameters and its tracker of the average gradient with its neighbours' (gradient tracking over a
random network). All sites end at the model that centralized training on all the images would give; the
script compares their final losses with that optimum.

Each site writes WS/<site>/metrics.csv (iteration, elapsed_s, loss, train_loss) as it goes, and at the
end train_loss_sequence.pt and model.pt.

Run: python jobs/gradient-tracking/job.py [--workspace DIR] [--num-clients N] [--algorithm gt|gtadam|dgd]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modules import EXECUTORS  # noqa: E402

from flarelite.app_opt.p2p.controllers import DistOptController  # noqa: E402
from flarelite.app_opt.p2p.types import Config  # noqa: E402
from flarelite.app_opt.p2p.utils import generate_random_network, validate_network  # noqa: E402
from flarelite.job_config.api import FedJob  # noqa: E402

TOLERANCE = 1e-3  # how close to the centralized optimum every site's final loss must be (with "gt")
DEFAULTS = {  # stepsize and iterations that converge within TOLERANCE on the default network
    "gt": {"iterations": 200, "stepsize": 0.5},
    "gtadam": {"iterations": 400, "stepsize": 0.05},
    "dgd": {"iterations": 400, "stepsize": 0.3},
}


def build_job(
    num_clients: int = 5,
    algorithm: str = "gt",
    iterations: int | None = None,
    stepsize: float | None = None,
    seed: int = 0,
) -> FedJob:
    """Return the job: ``num_clients`` sites on a random network (reproducible with ``seed``)."""
    if algorithm not in EXECUTORS:
        raise ValueError(f"algorithm must be one of {sorted(EXECUTORS)}, got {algorithm!r}")
    network, _ = generate_random_network(num_clients=num_clients, seed=seed, connection_probability=0.5)
    validate_network(network, doubly_stochastic=True)  # needed to reach the optimum of the average loss
    extra = {
        "iterations": iterations or DEFAULTS[algorithm]["iterations"],
        "stepsize": stepsize or DEFAULTS[algorithm]["stepsize"],
    }
    job = FedJob(name="gradient-tracking", min_clients=num_clients)
    job.to_server(DistOptController(config=Config(network=network, extra=extra)))
    for i in range(1, num_clients + 1):
        job.to(EXECUTORS[algorithm](site_index=i, num_sites=num_clients, seed=seed), f"site-{i}")
    return job


def final_losses(workspace: str, num_clients: int) -> dict[str, tuple[float, float]]:
    """Return each site's final model's (objective, accuracy) on all the data (read from WS/<site>/model.pt)."""
    import torch
    from modules import accuracy, load_data, make_model, objective

    x, y = load_data()
    out = {}
    for i in range(1, num_clients + 1):
        model = make_model()
        model.load_state_dict(torch.load(os.path.join(workspace, f"site-{i}", "model.pt")))
        out[f"site-{i}"] = (objective(model, x, y), accuracy(model, x, y))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/flarelite/gradient-tracking")
    parser.add_argument("--num-clients", type=int, default=5)
    parser.add_argument("--algorithm", default="gt", choices=sorted(EXECUTORS))
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--stepsize", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the network and the data split")
    parser.add_argument("--protocol", default="unix", choices=["unix", "grpc", "memory"])
    parser.add_argument("--export", metavar="JOB_ROOT", help="only export the job folder here")
    args = parser.parse_args()

    job = build_job(args.num_clients, args.algorithm, args.iterations, args.stepsize, args.seed)
    if args.export:
        print(job.export_job(args.export))
        return 0
    job.simulator_run(args.workspace, protocol=args.protocol)

    from modules import accuracy, centralized_optimum, load_data

    optimum, central = centralized_optimum()
    x, y = load_data()
    print(f"centralized training on all the data: loss {optimum:.6f}, accuracy {accuracy(central, x, y):.4f}")
    worst = 0.0
    for site, (loss, acc) in final_losses(args.workspace, args.num_clients).items():
        worst = max(worst, loss - optimum)
        print(f"{site}: loss {loss:.6f} (optimum + {loss - optimum:.2e}), accuracy {acc:.4f}")
    print(f"largest gap to the optimum {worst:.2e} (tolerance {TOLERANCE:g} for gt)")
    return 0 if args.algorithm != "gt" or worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
