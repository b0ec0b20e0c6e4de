"""ModelLearnable: model weights and their meta, the object persistors and shareable generators handle."""

from __future__ import annotations

from typing import Any

from ...apis.dxo import DXO, DataKind
from .learnable import Learnable


class ModelLearnableKey:
    """The keys of a ModelLearnable."""

    WEIGHTS = "weights"
    META = "meta"


class ModelLearnable(Learnable):
    """``{"weights": {name: array}, "meta": {...}}``."""

    def is_empty(self) -> bool:
        """True when there are no weights."""
        return not self.get(ModelLearnableKey.WEIGHTS)


def validate_model_learnable(model_learnable: Any) -> str:
    """Return an error message, or ``""`` when ``model_learnable`` is a valid ModelLearnable."""
    if not isinstance(model_learnable, ModelLearnable):
        return f"expected a ModelLearnable, got {type(model_learnable).__name__}"
    if ModelLearnableKey.WEIGHTS not in model_learnable:
        return "ModelLearnable has no 'weights'"
    if ModelLearnableKey.META not in model_learnable:
        return "ModelLearnable has no 'meta'"
    return ""


def make_model_learnable(weights: Any, meta_props: dict | None) -> ModelLearnable:
    """Return a ModelLearnable of ``weights`` and ``meta_props``."""
    ml = ModelLearnable()
    ml[ModelLearnableKey.WEIGHTS] = weights
    ml[ModelLearnableKey.META] = meta_props
    return ml


def model_learnable_to_dxo(ml: ModelLearnable) -> DXO:
    """Return a WEIGHTS DXO of the ModelLearnable's weights and meta.

    Raises:
        ValueError: ``ml`` is not a valid ModelLearnable.
    """
    err = validate_model_learnable(ml)
    if err:
        raise ValueError(err)
    return DXO(data_kind=DataKind.WEIGHTS, data=ml[ModelLearnableKey.WEIGHTS], meta=ml[ModelLearnableKey.META])
