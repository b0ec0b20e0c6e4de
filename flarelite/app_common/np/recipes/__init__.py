"""NumPy recipes: ``NumpyFedAvgRecipe``."""

from __future__ import annotations

from .fedavg import NumpyFedAvgRecipe

__all__ = ["NumpyFedAvgRecipe"]
