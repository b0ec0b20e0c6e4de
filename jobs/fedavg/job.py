"""fedavg: server-side federated averaging of a torch MLP on scikit-learn's digits, accuracy printed each round.

Run: python jobs/fedavg/job.py [--workspace DIR] [-n 3] [--rounds 10] [--non-iid]
Results: WS/server/metrics.csv (test accuracy and loss per round), WS/site-N/train_loss.csv.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modules import FedAvgController, TrainExecutor  # noqa: E402

from flarelite.job_config.api import FedJob  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/flarelite/fedavg")
    parser.add_argument("-n", "--n_clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--non-iid", action="store_true", help="each site gets a label-sorted slice (few classes)")
    parser.add_argument("--protocol", default="unix", choices=["unix", "grpc", "memory"])
    parser.add_argument("--export", metavar="JOB_ROOT", help="only export the job folder here")
    args = parser.parse_args()

    job = FedJob(name="fedavg", min_clients=args.n_clients)
    job.to_server(FedAvgController(num_rounds=args.rounds, min_clients=args.n_clients))
    job.to_clients(
        TrainExecutor(num_sites=args.n_clients, lr=args.lr, local_epochs=args.local_epochs, non_iid=args.non_iid),
        tasks=["train"],
    )
    if args.export:
        print(job.export_job(args.export))
        return 0
    return job.simulator_run(args.workspace, n_clients=args.n_clients, protocol=args.protocol)


if __name__ == "__main__":
    sys.exit(main())
