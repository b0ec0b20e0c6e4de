"""PersistorFilter: hooks a ModelPersistor runs around loading, saving and getting a model."""

from __future__ import annotations

from ...apis.fl_component import FLComponent
from ...apis.fl_context import FLContext
from .learnable import Learnable


class PersistorFilter(FLComponent):
    """Transforms a Learnable after it is loaded, before and after it is saved, and after it is got.

    Every hook returns its input unchanged by default; override the ones you need.
    """

    def process_post_load(self, learnable: Learnable, fl_ctx: FLContext) -> Learnable:
        """Return the Learnable to use after ``load_model``."""
        return learnable

    def process_pre_save(self, learnable: Learnable, fl_ctx: FLContext) -> Learnable:
        """Return the Learnable to hand to ``save_model``."""
        return learnable

    def process_post_save(self, learnable: Learnable, fl_ctx: FLContext) -> Learnable:
        """Called after ``save_model``."""
        return learnable

    def process_post_get(self, learnable: Learnable, fl_ctx: FLContext) -> Learnable:
        """Return the Learnable to use after ``get_model``."""
        return learnable
