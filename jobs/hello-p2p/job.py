"""hello-p2p: 3 sites greet each other through aux channels; the logs show 6 "Received message" lines.

Run: python jobs/hello-p2p/job.py [--workspace DIR] [--timeout SECONDS]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modules import BasicController, P2PExecutor  # noqa: E402

from flarelite.job_config.api import FedJob  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/flarelite/hello-p2p")
    parser.add_argument("--timeout", type=float, default=10, help="aux request timeout (<= 0: fire and forget)")
    parser.add_argument("--export", metavar="JOB_ROOT", help="only export the job folder here")
    args = parser.parse_args()

    num_clients = 3
    job = FedJob(name="hello-p2p", min_clients=num_clients)
    job.to_server(BasicController())
    for i in range(1, num_clients + 1):
        job.to(P2PExecutor(num_clients=num_clients, timeout=args.timeout), f"site-{i}")
    if args.export:
        print(job.export_job(args.export))
        return 0
    return job.simulator_run(args.workspace)


if __name__ == "__main__":
    sys.exit(main())
