"""hello-pt: FedAvg of a PyTorch CNN on scikit-learn's digits, trained by a Client API script through
ScriptRunner, with TensorBoard metrics per site and the global model saved.

Run:
    python jobs/hello-pt/job.py [-n 2] [--num_rounds 3] [--launch_external_process] [--workspace_root DIR]
        [--protocol unix|memory] [--cross_site_eval]
The global model lands in <root>/hello-pt/server/<app>/FL_global_model.pt (``torch.load(path,
weights_only=True)["model"]``); the curves in <root>/hello-pt/server/tb_events/<site>/.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from model import SimpleNetwork  # noqa: E402

from flarelite.app_opt.pt.recipes.fedavg import FedAvgRecipe  # noqa: E402
from flarelite.recipe import SimEnv, add_experiment_tracking  # noqa: E402
from flarelite.recipe.utils import add_cross_site_evaluation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n_clients", type=int, default=2)
    parser.add_argument("--num_rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--launch_external_process", action="store_true", help="run client.py as its own process")
    parser.add_argument("--cross_site_eval", action="store_true", help="evaluate every site's model everywhere")
    parser.add_argument("--workspace_root", default="/tmp/flarelite/simulation")
    parser.add_argument("--protocol", choices=["unix", "memory"], default="unix", help="sites as processes or threads")
    args = parser.parse_args()

    recipe = FedAvgRecipe(
        name="hello-pt",
        min_clients=args.n_clients,
        num_rounds=args.num_rounds,
        model=SimpleNetwork(),
        train_script=os.path.join(HERE, "client.py"),
        train_args=f"--epochs {args.epochs} --n_sites {args.n_clients}",
        launch_external_process=args.launch_external_process,
    )
    recipe.add_client_file(os.path.join(HERE, "model.py"))
    add_experiment_tracking(recipe, tracking_type="tensorboard")
    if args.cross_site_eval:
        add_cross_site_evaluation(recipe)
    env = SimEnv(num_clients=args.n_clients, workspace_root=args.workspace_root, protocol=args.protocol)
    run = recipe.execute(env)
    print()
    print("Job Status is:", run.get_status())
    print("Result can be found in :", run.get_result())
    print()


if __name__ == "__main__":
    main()
