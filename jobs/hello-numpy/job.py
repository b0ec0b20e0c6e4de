"""hello-numpy: FedAvg over a numpy array with the Recipe API, the Client API and TensorBoard metrics.

NVFlare's hello-numpy with the import root changed. Run:
    python jobs/hello-numpy/job.py [-n 2] [--num_rounds 3] [--update_type full|diff] [--launch_external_process]
        [--workspace_root DIR] [--protocol unix|memory]
The global model lands in <root>/hello-numpy/server/models/server.npy; the curves in
<root>/hello-numpy/server/tb_events/<site>/ (``tensorboard --logdir <root>/hello-numpy/server/tb_events``).
"""

import argparse
import os

from flarelite.app_common.np.recipes.fedavg import NumpyFedAvgRecipe
from flarelite.client.config import TransferType
from flarelite.recipe import SimEnv, add_experiment_tracking

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n_clients", type=int, default=2)
    parser.add_argument("--num_rounds", type=int, default=3)
    parser.add_argument("--update_type", choices=["full", "diff"], default="full")
    parser.add_argument("--launch_external_process", action="store_true", help="run client.py as its own process")
    parser.add_argument("--workspace_root", default="/tmp/flarelite/simulation")
    parser.add_argument("--protocol", choices=["unix", "memory"], default="unix", help="sites as processes or threads")
    args = parser.parse_args()

    recipe = NumpyFedAvgRecipe(
        name="hello-numpy",
        min_clients=args.n_clients,
        num_rounds=args.num_rounds,
        model=[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        train_script=os.path.join(HERE, "client.py"),
        train_args=f"--update_type {args.update_type}",
        launch_external_process=args.launch_external_process,
        params_transfer_type=TransferType.DIFF if args.update_type == "diff" else TransferType.FULL,
    )
    add_experiment_tracking(recipe, tracking_type="tensorboard")
    env = SimEnv(num_clients=args.n_clients, workspace_root=args.workspace_root, protocol=args.protocol)
    run = recipe.execute(env)
    print()
    print("Job Status is:", run.get_status())
    print("Result can be found in :", run.get_result())
    print()


if __name__ == "__main__":
    main()
