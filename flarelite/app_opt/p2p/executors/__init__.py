"""Site-side executors of peer-to-peer algorithms (torch is imported only by the torch algorithms, when they run)."""

from __future__ import annotations

from .base_dist_opt_executor import AlgorithmStopped, BaseDistOptExecutor
from .consensus import ConsensusExecutor
from .distributed_gradient_descent import DGDExecutor
from .gradient_tracking import GTExecutor
from .gtadam import GTADAMExecutor
from .sync_executor import SyncAlgorithmExecutor
from .torch_executor import TorchSyncAlgorithmExecutor

__all__ = [
    "AlgorithmStopped",
    "BaseDistOptExecutor",
    "SyncAlgorithmExecutor",
    "ConsensusExecutor",
    "TorchSyncAlgorithmExecutor",
    "DGDExecutor",
    "GTExecutor",
    "GTADAMExecutor",
]
