"""ModelPersistor: a LearnablePersistor of ModelLearnables, with an optional PersistorFilter and an inventory."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ...apis.fl_context import FLContext
from ..model_desc import ModelDescriptor
from .learnable_persistor import LearnablePersistor
from .model import ModelLearnable
from .persistor_filter import PersistorFilter


class ModelPersistor(LearnablePersistor, ABC):
    """Implement ``load_model`` and ``save_model``; ``load``/``save``/``get`` run the filter ``filter_id``."""

    def __init__(self, filter_id: str | None = None) -> None:
        super().__init__()
        self.filter_id = filter_id

    def _filter(self, fl_ctx: FLContext) -> PersistorFilter | None:
        if not self.filter_id:
            return None
        engine = fl_ctx.get_engine()
        found = engine.get_component(self.filter_id) if engine is not None else None
        if not isinstance(found, PersistorFilter):
            raise ValueError(
                f"{self.name}: filter_id {self.filter_id!r} must name a PersistorFilter component, "
                f"got {type(found).__name__}; add one with job.to_server(filter, id={self.filter_id!r})"
            )
        return found

    def load(self, fl_ctx: FLContext) -> ModelLearnable:
        """Return ``load_model``'s ModelLearnable, passed through the filter's ``process_post_load``."""
        learnable = self.load_model(fl_ctx)
        persistor_filter = self._filter(fl_ctx)
        if persistor_filter is not None:
            learnable = persistor_filter.process_post_load(learnable=learnable, fl_ctx=fl_ctx)
        return learnable

    def save(self, learnable: ModelLearnable, fl_ctx: FLContext) -> None:
        """Run the filter's ``process_pre_save``, ``save_model``, then ``process_post_save``."""
        persistor_filter = self._filter(fl_ctx)
        if persistor_filter is not None:
            learnable = persistor_filter.process_pre_save(learnable=learnable, fl_ctx=fl_ctx)
        self.save_model(learnable, fl_ctx)
        if persistor_filter is not None:
            persistor_filter.process_post_save(learnable=learnable, fl_ctx=fl_ctx)

    def get(self, model_file: str, fl_ctx: FLContext) -> object:
        """Return ``get_model(model_file)``, passed through the filter's ``process_post_get``."""
        learnable = self.get_model(model_file, fl_ctx)
        persistor_filter = self._filter(fl_ctx)
        if persistor_filter is not None:
            learnable = persistor_filter.process_post_get(learnable=learnable, fl_ctx=fl_ctx)
        return learnable

    @abstractmethod
    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        """Return the initial ModelLearnable."""

    @abstractmethod
    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        """Persist ``model``."""

    def get_model_inventory(self, fl_ctx: FLContext) -> dict[str, ModelDescriptor] | None:
        """Return ``{name: ModelDescriptor}`` of the models this persistor can hand out (default None)."""
        return None

    def get_model(self, model_file: str, fl_ctx: FLContext) -> ModelLearnable:
        """Return the model named ``model_file`` of the inventory.

        Raises:
            NotImplementedError: this persistor has no inventory (the default).
        """
        raise NotImplementedError(f"{self.name} does not hand out models by name (get_model is not implemented)")
