"""PTFileModelLocator: serves the PyTorch persistor's saved models to cross-site evaluation."""

from __future__ import annotations

from ...apis.dxo import DXO
from ...apis.fl_context import FLContext
from ...app_common.abstract.model import model_learnable_to_dxo
from ...app_common.abstract.model_locator import ModelLocator
from .file_model_persistor import PTFileModelPersistor


class PTFileModelLocator(ModelLocator):
    """Names and loads the models a PTFileModelPersistor has on disk (its model inventory)."""

    def __init__(self, pt_persistor_id: str) -> None:
        """Locate the models of the server component ``pt_persistor_id`` (a PTFileModelPersistor).

        Raises:
            ValueError: ``pt_persistor_id`` is not a non-empty str.
        """
        super().__init__()
        if not isinstance(pt_persistor_id, str) or not pt_persistor_id:
            raise ValueError(f"PTFileModelLocator: pt_persistor_id must be a component id, got {pt_persistor_id!r}")
        self.pt_persistor_id = pt_persistor_id

    def _persistor(self, fl_ctx: FLContext) -> PTFileModelPersistor | None:
        persistor = fl_ctx.get_engine().get_component(self.pt_persistor_id)
        if not isinstance(persistor, PTFileModelPersistor):
            what = "no such component" if persistor is None else f"a {type(persistor).__name__}"
            self.log_error(
                fl_ctx, f"PTFileModelLocator: component {self.pt_persistor_id!r} is {what}, not a PTFileModelPersistor"
            )
            return None
        return persistor

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        """Return the names of the saved models (``FL_global_model.pt``, ``best_FL_global_model.pt``, ...)."""
        persistor = self._persistor(fl_ctx)
        return list(persistor.get_model_inventory(fl_ctx)) if persistor is not None else []

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO | None:
        """Return the model ``model_name`` as a WEIGHTS DXO, or None when there is no such model."""
        persistor = self._persistor(fl_ctx)
        if persistor is None:
            return None
        learnable = persistor.get_model(model_name, fl_ctx)
        if learnable is None:
            return None
        return model_learnable_to_dxo(learnable)
