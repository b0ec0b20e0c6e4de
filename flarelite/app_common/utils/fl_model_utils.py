"""FLModelUtils: FLModel <-> Shareable / DXO / ModelLearnable, with NVFlare's kinds, headers and meta keys.

The Shareable encoding is the one workflows and the Client API exchange: a WEIGHTS / WEIGHT_DIFF / METRICS DXO
with the FLModel's meta merged into the DXO meta, and the rounds as the headers ``start_round``,
``current_round`` and ``num_rounds``. An FLModel sent by one side and read by the other as a DXO (or back)
agrees with NVFlare's encoding, so Controller/Executor code written against DXOs talks to FLModel code.
"""

from __future__ import annotations

import copy
from typing import Any

from ...apis.dxo import DXO, DataKind, MetaKey
from ...apis.dxo import from_shareable as dxo_from_shareable
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable
from ..abstract.fl_model import FLModel, FLModelConst, ParamsType
from ..abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from ..app_constant import AppConstants

_PARAMS_TYPE_TO_KIND = {ParamsType.FULL: DataKind.WEIGHTS, ParamsType.DIFF: DataKind.WEIGHT_DIFF}
_KIND_TO_PARAMS_TYPE = {DataKind.WEIGHTS: ParamsType.FULL, DataKind.WEIGHT_DIFF: ParamsType.DIFF}
_DXO_FIELDS = (
    FLModelConst.PARAMS_TYPE,
    FLModelConst.PARAMS,
    FLModelConst.METRICS,
    FLModelConst.OPTIMIZER_PARAMS,
    FLModelConst.CURRENT_ROUND,
    FLModelConst.TOTAL_ROUNDS,
    FLModelConst.META,
)
_HEADER_TO_META = {
    AppConstants.VALIDATE_TYPE: MetaKey.VALIDATE_TYPE,
    "job_id": "job_id",
    "site_name": "site_name",
}


def _fl_model(obj: Any, what: str) -> FLModel:
    if not isinstance(obj, FLModel):
        raise TypeError(f"{what}: expected an FLModel, got {type(obj).__name__}")
    return obj


class FLModelUtils:
    """Conversions between FLModel and the low-level payloads (all static)."""

    @staticmethod
    def to_shareable(fl_model: FLModel) -> Shareable:
        """Return the Shareable NVFlare sends for ``fl_model`` (sets ``params_type`` FULL when it was None).

        Raises:
            TypeError: ``fl_model`` is not an FLModel.
            ValueError: it has neither params nor metrics, or an unknown params_type.
        """
        fl_model = _fl_model(fl_model, "FLModelUtils.to_shareable")
        if fl_model.params is None and fl_model.metrics is None:
            raise ValueError("FLModel without params and metrics is NOT supported.")
        if fl_model.params is not None:
            if fl_model.params_type is None:
                fl_model.params_type = ParamsType.FULL
            kind = _PARAMS_TYPE_TO_KIND.get(ParamsType(fl_model.params_type))
            if kind is None:
                raise ValueError(f"params_type {fl_model.params_type} is not supported")
            dxo = DXO(kind, data=fl_model.params, meta={})
            if fl_model.metrics is not None:
                dxo.set_meta_prop(MetaKey.INITIAL_METRICS, fl_model.metrics)
        else:
            dxo = DXO(DataKind.METRICS, data=fl_model.metrics, meta={})
        meta = fl_model.meta or {}
        dxo.meta.update(meta)
        shareable = dxo.to_shareable()
        if fl_model.start_round is not None:
            shareable.set_header(AppConstants.START_ROUND, fl_model.start_round)
        if fl_model.current_round is not None:
            shareable.set_header(AppConstants.CURRENT_ROUND, fl_model.current_round)
        if fl_model.total_rounds is not None:
            shareable.set_header(AppConstants.NUM_ROUNDS, fl_model.total_rounds)
        if MetaKey.VALIDATE_TYPE in meta:
            shareable.set_header(AppConstants.VALIDATE_TYPE, meta[MetaKey.VALIDATE_TYPE])
        return shareable

    @staticmethod
    def from_shareable(shareable: Shareable, fl_ctx: FLContext | None = None) -> FLModel:
        """Return the FLModel a Shareable made by ``to_shareable`` (or any DXO Shareable) holds.

        Raises:
            TypeError: ``shareable`` is not a Shareable.
            ValueError: it holds no DXO.
        """
        if not isinstance(shareable, Shareable):
            raise TypeError(f"FLModelUtils.from_shareable: expected a Shareable, got {type(shareable).__name__}")
        submit_model_name = shareable.get_header(AppConstants.SUBMIT_MODEL_NAME)
        if submit_model_name:
            return FLModel(params_type=None, params=None, meta={MetaKey.SUBMIT_MODEL_NAME: submit_model_name})
        dxo = dxo_from_shareable(shareable)
        meta = dict(dxo.meta)
        params = params_type = metrics = None
        if dxo.data_kind == DataKind.METRICS:
            metrics = dxo.data
        elif dxo.data_kind in _KIND_TO_PARAMS_TYPE:
            params, params_type = dxo.data, _KIND_TO_PARAMS_TYPE[DataKind(dxo.data_kind)]
        elif dxo.data:
            params, params_type = dxo.data, ParamsType.FULL
        if MetaKey.INITIAL_METRICS in meta:
            metrics = meta[MetaKey.INITIAL_METRICS]
        for header, key in _HEADER_TO_META.items():
            value = shareable.get_header(header)
            if value is not None:
                meta[key] = value
        return FLModel(
            params_type=params_type,
            params=params,
            metrics=metrics,
            start_round=shareable.get_header(AppConstants.START_ROUND),
            current_round=shareable.get_header(AppConstants.CURRENT_ROUND),
            total_rounds=shareable.get_header(AppConstants.NUM_ROUNDS),
            meta=meta,
        )

    @staticmethod
    def to_dxo(fl_model: FLModel) -> DXO:
        """Return an FL_MODEL DXO of the non-None fields (``start_round`` is not carried, as in NVFlare)."""
        fl_model = _fl_model(fl_model, "FLModelUtils.to_dxo")
        data = {name: getattr(fl_model, name) for name in _DXO_FIELDS if getattr(fl_model, name) is not None}
        if FLModelConst.PARAMS_TYPE in data:
            data[FLModelConst.PARAMS_TYPE] = ParamsType(data[FLModelConst.PARAMS_TYPE]).value
        return DXO(DataKind.FL_MODEL, data=data)

    @staticmethod
    def from_dxo(dxo: DXO) -> FLModel:
        """Return the FLModel an FL_MODEL DXO holds.

        Raises:
            ValueError: ``dxo`` is not an FL_MODEL DXO with dict data.
        """
        if not isinstance(dxo, DXO):
            raise ValueError(f"FLModelUtils.from_dxo: expected a DXO, got {type(dxo).__name__}")
        if dxo.data_kind != DataKind.FL_MODEL:
            raise ValueError(f"FLModelUtils.from_dxo: expected data kind FL_MODEL, got {dxo.data_kind}")
        if not isinstance(dxo.data, dict):
            raise ValueError(f"FLModelUtils.from_dxo: expected dict data, got {type(dxo.data).__name__}")
        d = dxo.data
        return FLModel(
            params_type=d.get(FLModelConst.PARAMS_TYPE),
            params=d.get(FLModelConst.PARAMS),
            optimizer_params=d.get(FLModelConst.OPTIMIZER_PARAMS),
            metrics=d.get(FLModelConst.METRICS),
            start_round=d.get(FLModelConst.START_ROUND),
            current_round=d.get(FLModelConst.CURRENT_ROUND),
            total_rounds=d.get(FLModelConst.TOTAL_ROUNDS),
            meta=d.get(FLModelConst.META),
        )

    @staticmethod
    def to_model_learnable(fl_model: FLModel) -> ModelLearnable:
        """Return ``ModelLearnable{weights: params, meta: meta}``."""
        fl_model = _fl_model(fl_model, "FLModelUtils.to_model_learnable")
        return make_model_learnable(weights=fl_model.params, meta_props=fl_model.meta)

    @staticmethod
    def from_model_learnable(model_learnable: ModelLearnable) -> FLModel:
        """Return ``FLModel(FULL, params=weights, meta=meta)``."""
        if not isinstance(model_learnable, dict):
            raise TypeError(f"expected a ModelLearnable, got {type(model_learnable).__name__}")
        return FLModel(
            params_type=ParamsType.FULL,
            params=model_learnable.get(ModelLearnableKey.WEIGHTS),
            meta=model_learnable.get(ModelLearnableKey.META) or {},
        )

    @staticmethod
    def get_meta_prop(model: FLModel, key: str, default: Any = None) -> Any:
        """Return ``model.meta[key]`` or ``default``."""
        return _fl_model(model, "FLModelUtils.get_meta_prop").meta.get(key, default)

    @staticmethod
    def set_meta_prop(model: FLModel, key: str, value: Any) -> None:
        """Set ``model.meta[key] = value``."""
        _fl_model(model, "FLModelUtils.set_meta_prop").meta[key] = value

    @staticmethod
    def get_configs(model: FLModel) -> dict | None:
        """Return ``model.meta["configs"]``."""
        return FLModelUtils.get_meta_prop(model, MetaKey.CONFIGS)

    @staticmethod
    def update_model(model: FLModel, model_update: FLModel, replace_meta: bool = True) -> FLModel:
        """Apply ``model_update`` to the FULL ``model``: FULL replaces the params, DIFF adds to them per key.

        Raises:
            RuntimeError: ``model`` is not FULL, or the update's params_type is neither FULL nor DIFF.
        """
        if model.params_type != ParamsType.FULL:
            raise RuntimeError(f"params_type {model.params_type} of `model` not supported! Expected `ParamsType.FULL`.")
        if replace_meta:
            model.meta = copy.copy(model_update.meta)
        else:
            model.meta.update(model_update.meta)
        model.metrics = model_update.metrics
        if model_update.params_type == ParamsType.FULL:
            model.params = model_update.params
        elif model_update.params_type == ParamsType.DIFF:
            for key, value in model_update.params.items():
                model.params[key] = model.params[key] + value
        else:
            raise RuntimeError(f"params_type {model_update.params_type} of `model_update` not supported!")
        return model
