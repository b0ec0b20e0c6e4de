"""ShareableGenerator: turns the global Learnable into task data and a round's aggregate back into a Learnable."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ...apis.fl_component import FLComponent
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable
from .learnable import Learnable


class ShareableGenerator(FLComponent, ABC):
    """Converts between the Learnable a persistor keeps and the Shareable the clients exchange."""

    @abstractmethod
    def learnable_to_shareable(self, model: Learnable, fl_ctx: FLContext) -> Shareable:
        """Return the task data for ``model``."""

    @abstractmethod
    def shareable_to_learnable(self, shareable: Shareable, fl_ctx: FLContext) -> Learnable:
        """Return the new Learnable made from ``shareable`` (usually an aggregate)."""
