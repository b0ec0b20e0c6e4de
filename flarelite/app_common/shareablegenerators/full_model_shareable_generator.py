"""FullModelShareableGenerator: the global model goes out as full WEIGHTS; aggregates come back as WEIGHTS or diffs."""

from __future__ import annotations

from ...apis.dxo import DataKind, from_shareable
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable
from ..abstract.model import ModelLearnable, ModelLearnableKey, model_learnable_to_dxo
from ..abstract.shareable_generator import ShareableGenerator
from ..app_constant import AppConstants


class FullModelShareableGenerator(ShareableGenerator):
    """ModelLearnable <-> WEIGHTS DXO; a WEIGHT_DIFF aggregate is added to fl_ctx ``global_model``."""

    def learnable_to_shareable(self, model: ModelLearnable, fl_ctx: FLContext) -> Shareable:
        """Return a Shareable holding a WEIGHTS DXO of the model's weights, with its meta.

        Raises:
            ValueError: ``model`` is not a valid ModelLearnable.
        """
        return model_learnable_to_dxo(model).to_shareable()

    def shareable_to_learnable(self, shareable: Shareable, fl_ctx: FLContext) -> ModelLearnable:
        """Return fl_ctx ``global_model`` updated by ``shareable``: diffs are added, WEIGHTS replace the weights.

        The learnable's meta becomes the DXO's meta.

        Raises:
            ValueError: the DXO is neither WEIGHTS nor WEIGHT_DIFF, or a diff names a weight the model lacks.
        """
        dxo = from_shareable(shareable)
        base_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if not base_model:
            self.system_panic(
                reason="No global base model is available (fl_ctx 'global_model' is not set); cannot update it",
                fl_ctx=fl_ctx,
            )
            return base_model
        weights = base_model[ModelLearnableKey.WEIGHTS]
        if dxo.data_kind == DataKind.WEIGHT_DIFF:
            if dxo.data is not None:
                for name, diff in dxo.data.items():
                    if name not in weights:
                        raise ValueError(
                            f"{self.name}: the WEIGHT_DIFF aggregate has {name!r}, which the global model does not "
                            f"have (its weights are {sorted(weights)[:10]})"
                        )
                    weights[name] = weights[name] + diff
        elif dxo.data_kind == DataKind.WEIGHTS:
            if not dxo.data:
                self.log_info(fl_ctx, "No model weights found. Model will not be updated.")
            else:
                base_model[ModelLearnableKey.WEIGHTS] = dxo.data
        else:
            raise ValueError(
                f"{self.name}: data kind {dxo.data_kind} is not supported; expected WEIGHTS or WEIGHT_DIFF"
            )
        base_model[ModelLearnableKey.META] = dxo.get_meta_props()
        return base_model
