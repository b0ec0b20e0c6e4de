"""Aggregator: accepts the clients' Shareable contributions of a round and combines them into one."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ...apis.fl_component import FLComponent
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable


class Aggregator(FLComponent, ABC):
    """The aggregator of Shareable-based workflows (ScatterAndGather)."""

    @abstractmethod
    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Take one contribution; return whether it was accepted."""

    @abstractmethod
    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """Return the aggregate of the accepted contributions."""

    def reset(self, fl_ctx: FLContext) -> None:
        """Forget the round's contributions (called after each round; the default does nothing)."""
