"""PyTorch recipes. Only ``FedAvgRecipe`` exists in flarelite (NVFlare's FedProx, Scaffold, FedOpt, Cyclic, FedEval,
FedCE, FedAvg-with-HE and Swarm recipes do not)."""

from __future__ import annotations

from .fedavg import FedAvgRecipe

__all__ = ["FedAvgRecipe"]
