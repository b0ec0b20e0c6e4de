"""ModelAggregator: an FLModel-based aggregator, usable by FedAvg (``aggregator=``) and by ScatterAndGather."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ...apis.event_type import EventType
from ...apis.fl_constant import ReservedKey
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable
from ..abstract.aggregator import Aggregator
from ..abstract.fl_model import FLModel
from ..utils.fl_component_wrapper import ContextLogging
from ..utils.fl_model_utils import FLModelUtils


class ModelAggregator(Aggregator, ContextLogging, ABC):
    """Implement ``accept_model``, ``aggregate_model`` and ``reset_stats``.

    ``accept``/``aggregate``/``reset`` adapt them to the Shareable contract through FLModelUtils, so the same
    class serves ScatterAndGather. The FLContext of the run is kept in ``self.fl_ctx`` (set at START_RUN), which
    ``info/warning/error/exception`` (and ``debug/critical``) log with.
    """

    def __init__(self) -> None:
        # as in NVFlare, FLComponent.__init__ is not called (FLComponent sets its name and logger lazily)
        self.fl_ctx: FLContext | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Keep the run's FLContext at START_RUN."""
        if event_type == EventType.START_RUN:
            self.fl_ctx = fl_ctx

    @abstractmethod
    def accept_model(self, model: FLModel) -> None:
        """Take one client's FLModel."""

    @abstractmethod
    def aggregate_model(self) -> FLModel:
        """Return the aggregate of the accepted models."""

    @abstractmethod
    def reset_stats(self) -> None:
        """Forget the accepted models."""

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Convert the result to an FLModel and ``accept_model`` it; False (logged) if it holds no valid FLModel.

        ``meta["client_name"]`` is the sender the connection proved, whatever the result's own meta says.
        """
        self.fl_ctx = fl_ctx
        client_name = shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
        try:
            model = FLModelUtils.from_shareable(shareable)
        except (TypeError, ValueError) as exc:
            self.error(f"the result of {client_name} is not a valid FLModel: {exc}")
            return False
        model.meta["client_name"] = client_name
        self.accept_model(model)
        return True

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """Return ``aggregate_model()`` as a Shareable."""
        self.fl_ctx = fl_ctx
        return FLModelUtils.to_shareable(self.aggregate_model())

    def reset(self, fl_ctx: FLContext) -> None:
        """Call ``reset_stats``."""
        self.reset_stats()
