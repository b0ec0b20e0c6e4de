"""FLModel: what a training script and a workflow exchange (params, metrics, rounds, meta)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from ...apis.fl_constant import FLMetaKey


class ParamsType(str, Enum):
    """Whether ``FLModel.params`` hold full weights or a difference against the received ones."""

    FULL = "FULL"
    DIFF = "DIFF"


class FLModelConst:
    """The names of FLModel's fields."""

    PARAMS_TYPE = "params_type"
    PARAMS = "params"
    OPTIMIZER_PARAMS = "optimizer_params"
    METRICS = "metrics"
    CURRENT_ROUND = "current_round"
    START_ROUND = "start_round"
    TOTAL_ROUNDS = "total_rounds"
    META = "meta"


class MetaKey(FLMetaKey):
    """Keys of ``FLModel.meta`` (the same as DXO meta keys)."""


def _check_round(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"FLModel {name} must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"FLModel {name} must be >= 0, got {value}")


class FLModel:
    """A model update or a model to train: ``params`` (with ``params_type``), ``metrics``, rounds and ``meta``."""

    def __init__(
        self,
        params_type: None | str | ParamsType = None,
        params: Any = None,
        optimizer_params: Any = None,
        metrics: dict | None = None,
        start_round: int | None = 0,
        current_round: int | None = None,
        total_rounds: int | None = None,
        meta: dict | None = None,
    ) -> None:
        if params_type is None:
            if params is not None:
                params_type = ParamsType.FULL
        else:
            params_type = ParamsType(params_type)
            if params is None:
                raise ValueError(f"FLModel params_type is {params_type.value} but params is None")
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"FLModel metrics must be a dict, got {type(metrics).__name__}")
        if meta is None:
            meta = {}
        elif not isinstance(meta, dict):
            raise TypeError(f"FLModel meta must be a dict, got {type(meta).__name__}")
        _check_round("start_round", start_round)
        _check_round("current_round", current_round)
        _check_round("total_rounds", total_rounds)
        self.params_type = params_type
        self.params = params
        self.optimizer_params = optimizer_params
        self.metrics = metrics
        self.start_round = start_round
        self.current_round = current_round
        self.total_rounds = total_rounds
        self.meta = meta

    def summary(self) -> dict:
        """Return the non-empty fields: dicts as their length, enums and ints as themselves, the rest as types."""
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if value is None or (isinstance(value, (dict, list, tuple, str)) and not value):
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value == 0:
                continue
            if isinstance(value, dict):
                out[name] = len(value)
            elif isinstance(value, (ParamsType, int)) and not isinstance(value, bool):
                out[name] = value
            else:
                out[name] = type(value)
        return out

    def __str__(self) -> str:
        return str(self.summary())

    __repr__ = __str__
