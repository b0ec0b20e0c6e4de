"""A job script with its own argument parser: run with --export [--export-dir DIR] to export instead of running."""

import argparse
import os

from flarelite.app_common.np.recipes.fedavg import NumpyFedAvgRecipe
from flarelite.recipe import SimEnv

parser = argparse.ArgumentParser()
parser.add_argument("--n_clients", type=int, default=2)
args = parser.parse_args()  # would fail on --export if flarelite.recipe had not taken it out of sys.argv

recipe = NumpyFedAvgRecipe(
    name="exported-numpy",
    min_clients=args.n_clients,
    num_rounds=1,
    model=[[1.0, 2.0], [3.0, 4.0]],
    train_script=os.path.join(os.path.dirname(os.path.abspath(__file__)), "np_client.py"),
)
recipe.execute(SimEnv(num_clients=args.n_clients))
raise RuntimeError("execute() returned: --export was not honoured")
