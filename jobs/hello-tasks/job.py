"""hello-tasks: broadcast with replies read in result_received_cb, send_and_wait to one site, relay through all.

Run: python jobs/hello-tasks/job.py [--workspace DIR] [-n N]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modules import TasksController, TasksExecutor  # noqa: E402

from flarelite.job_config.api import FedJob  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/flarelite/hello-tasks")
    parser.add_argument("-n", "--n_clients", type=int, default=3)
    args = parser.parse_args()

    job = FedJob(name="hello-tasks")
    job.to_server(TasksController(start_value=10, named_site="site-2"))
    job.to_clients(TasksExecutor())
    return job.simulator_run(args.workspace, n_clients=args.n_clients)


if __name__ == "__main__":
    sys.exit(main())
