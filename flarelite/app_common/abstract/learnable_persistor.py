"""LearnablePersistor: loads the initial Learnable of a run and saves the updated one."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ...apis.fl_component import FLComponent
from ...apis.fl_context import FLContext
from .learnable import Learnable


class LearnablePersistor(FLComponent, ABC):
    """Loads and saves a Learnable (the server workflows' global model)."""

    @abstractmethod
    def load(self, fl_ctx: FLContext) -> Learnable:
        """Return the initial Learnable of the run."""

    @abstractmethod
    def save(self, learnable: Learnable, fl_ctx: FLContext) -> None:
        """Persist ``learnable``."""
