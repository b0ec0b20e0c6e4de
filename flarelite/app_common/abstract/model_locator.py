"""ModelLocator: names and hands out the server's models for cross-site evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ...apis.dxo import DXO
from ...apis.fl_component import FLComponent
from ...apis.fl_context import FLContext


class ModelLocator(FLComponent, ABC):
    """Finds the server models that CrossSiteModelEval sends to the clients to validate."""

    @abstractmethod
    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        """Return the names of the models to validate."""

    @abstractmethod
    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO | None:
        """Return the model ``model_name`` as a DXO (None when it cannot be found)."""
