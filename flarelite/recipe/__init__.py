"""The Job Recipe API (NVFlare 2.9's ``nvflare.recipe``): build a job from a few arguments and run it somewhere.

``recipe.execute(SimEnv(num_clients=2))`` runs it in the simulator; ``PocEnv`` runs it as a server and client
processes on this machine; ``recipe.export(dir)`` writes the job folder. ``Run`` (what ``execute`` returns)
gives the job id, its status and its result folder. The bases are in ``flarelite.recipe.spec`` (``Recipe``,
``ExecEnv``).

Not here (yet): ``ProdEnv`` (submitting to a provisioned, long-lived system needs an admin API flarelite does
not have yet), ``FedTaskRecipe``, and NVFlare's secret references (``secret_ref``, ``secret_file_ref``,
``PotentialSecretWarning``, ``UnsupportedSecretRefWarning``).
"""

from __future__ import annotations

from .fedavg import FedAvgRecipe
from .poc_env import PocEnv
from .run import Run
from .sim_env import SimEnv
from .utils import (
    add_cross_site_evaluation,
    add_experiment_tracking,
    add_final_global_evaluation,
    set_per_site_config,
    set_recipe_meta,
)

__all__ = [
    "FedAvgRecipe",
    "PocEnv",
    "Run",
    "SimEnv",
    "add_cross_site_evaluation",
    "add_experiment_tracking",
    "add_final_global_evaluation",
    "set_per_site_config",
    "set_recipe_meta",
]
