"""Experiment tracking records (analytix): data types, writer names, DXO keys and ``AnalyticsData``.

A metric travels as a DXO of kind ``ANALYTIC`` whose data holds ``track_key``, ``track_value`` and, when set,
``global_step``, ``path`` and ``analytics_kwargs``; its meta holds the data type and the writer's name.

flarelite difference: ``AnalyticsDataType`` and ``LogWriterName`` are ``str`` Enums (like ``DataKind``), so a
record's meta travels through the safe codec without pickle. A DXO received from another site holds their
string values, which compare equal to the members; ``AnalyticsData.from_dxo`` turns them back into members.
Also checked here, since a record may come from another site: ``global_step`` fits in 64 bits (what TensorBoard
and MLflow store) and an int value fits in a float.
"""

from __future__ import annotations

import numbers
from enum import Enum
from typing import Any

from .dxo import DXO, DataKind

ANALYTIC_EVENT_TYPE = "analytix_log_stats"


class LogWriterName(str, Enum):
    """The tracking syntax a record was written with (TensorBoard, MLflow, Weights & Biases)."""

    TORCH_TB = "TORCH_TENSORBOARD"
    MLFLOW = "MLFLOW"
    WANDB = "WEIGHTS_AND_BIASES"

    def __str__(self) -> str:
        return self.value


class AnalyticsDataType(str, Enum):
    """What a tracking record holds; each value equals its name."""

    SCALARS = "SCALARS"
    SCALAR = "SCALAR"
    IMAGE = "IMAGE"
    TEXT = "TEXT"
    LOG_RECORD = "LOG_RECORD"
    PARAMETER = "PARAMETER"
    PARAMETERS = "PARAMETERS"
    METRIC = "METRIC"
    METRICS = "METRICS"
    MODEL = "MODEL"
    TAG = "TAG"
    TAGS = "TAGS"
    INIT_DATA = "INIT_DATA"

    def __str__(self) -> str:
        return self.value


class TrackConst:
    """Keys of a tracking record's DXO data and meta, and of the receivers' configuration."""

    TRACK_KEY = "track_key"
    TRACK_VALUE = "track_value"
    GLOBAL_STEP_KEY = "global_step"
    PATH_KEY = "path"
    KWARGS_KEY = "analytics_kwargs"

    DATA_TYPE_KEY = "analytics_data_type"
    TRACKER_KEY = "tracker_key"

    EXPERIMENT_NAME = "experiment_name"
    RUN_NAME = "run_name"
    EXPERIMENT_TAGS = "experiment_tags"
    RUN_TAGS = "run_tags"
    INIT_CONFIG = "init_config"
    PROJECT_NAME = "project_name"

    SITE_KEY = "site"
    JOB_ID_KEY = "job_id"


_NUMBER_TYPES = (AnalyticsDataType.SCALAR, AnalyticsDataType.METRIC)
_NUMBER_DICT_TYPES = (AnalyticsDataType.SCALARS, AnalyticsDataType.METRICS)
_DICT_TYPES = (AnalyticsDataType.PARAMETERS, AnalyticsDataType.TAGS)

# TensorBoard's scalars are MLflow's and W&B's metrics, and back
_CONVERSIONS: dict[tuple[LogWriterName, LogWriterName, AnalyticsDataType], AnalyticsDataType] = {
    (LogWriterName.TORCH_TB, LogWriterName.MLFLOW, AnalyticsDataType.SCALAR): AnalyticsDataType.METRIC,
    (LogWriterName.TORCH_TB, LogWriterName.MLFLOW, AnalyticsDataType.SCALARS): AnalyticsDataType.METRICS,
    (LogWriterName.TORCH_TB, LogWriterName.WANDB, AnalyticsDataType.SCALAR): AnalyticsDataType.METRIC,
    (LogWriterName.TORCH_TB, LogWriterName.WANDB, AnalyticsDataType.SCALARS): AnalyticsDataType.METRICS,
    (LogWriterName.MLFLOW, LogWriterName.TORCH_TB, AnalyticsDataType.METRIC): AnalyticsDataType.SCALAR,
    (LogWriterName.MLFLOW, LogWriterName.TORCH_TB, AnalyticsDataType.METRICS): AnalyticsDataType.SCALARS,
    (LogWriterName.WANDB, LogWriterName.TORCH_TB, AnalyticsDataType.METRIC): AnalyticsDataType.SCALAR,
    (LogWriterName.WANDB, LogWriterName.TORCH_TB, AnalyticsDataType.METRICS): AnalyticsDataType.SCALARS,
}


MAX_STEP = 2**63 - 1  # TensorBoard and MLflow keep a step as a signed 64-bit int
_RESERVED_KWARGS = ("key", "value", "data_type", "sender")  # AnalyticsData's own parameters


def _number(key: str, value: Any, where: str) -> int | float:
    """Return ``value`` as a plain int or float: a number, or a 0-d numpy/torch value (converted with ``.item()``).

    NaN and infinities are kept (a diverging loss is worth seeing); an int too large for a float is refused.
    """
    if isinstance(value, bool):
        raise TypeError(f"{where}: expected a number for {key!r}, got a bool")
    if not isinstance(value, (int, float)):
        item = value.item() if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)) else None
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            raise TypeError(
                f"{where}: expected {key!r} to be an int or float (or a 0-d numpy/torch value), "
                f"got {type(value).__name__}"
            )
        value = item
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{where}: {key!r} is an int too large for a float ({len(str(value))} digits)") from None
    return value


class AnalyticsData:
    """One tracking record (a metric, parameter, text...) with its DXO encoding; values are validated on creation."""

    def __init__(
        self,
        key: str,
        value: Any,
        data_type: AnalyticsDataType,
        sender: LogWriterName = LogWriterName.TORCH_TB,
        **kwargs: Any,
    ) -> None:
        """Validate and hold one record.

        Parameters:
            key: the record's tag (metric or parameter name).
            value: a number (SCALAR, METRIC), a dict of numbers (SCALARS, METRICS), a dict (PARAMETERS, TAGS),
                a str (TEXT), or anything for the other types. numpy/torch 0-d values become plain numbers.
            data_type: the record's ``AnalyticsDataType``.
            sender: the ``LogWriterName`` whose syntax the record follows.
            kwargs: extra arguments for the receiver; ``global_step`` (int >= 0) and ``path`` (str) are read.

        Raises:
            TypeError: ``key`` is not a str, ``data_type`` not an AnalyticsDataType, ``sender`` not a LogWriterName,
                the value does not fit the data type, or ``global_step``/``path`` have the wrong type.
            ValueError: ``global_step`` is negative or past 2**63 - 1, or an int value is too large for a float.
        """
        self.value = self._validate(key, value, data_type, sender, kwargs)
        self.tag = key
        self.data_type = data_type
        self.kwargs = kwargs
        self.sender = sender
        self.step: int | None = kwargs.get(TrackConst.GLOBAL_STEP_KEY)
        self.path: str | None = kwargs.get(TrackConst.PATH_KEY)

    @staticmethod
    def _validate(key: Any, value: Any, data_type: Any, sender: Any, kwargs: dict) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"AnalyticsData: expected the key (tag) to be a str, got {type(key).__name__}")
        where = f"AnalyticsData({key!r})"
        if not isinstance(data_type, AnalyticsDataType):
            raise TypeError(f"{where}: expected data_type to be an AnalyticsDataType, got {type(data_type).__name__}")
        if not isinstance(sender, LogWriterName):
            raise TypeError(f"{where}: expected sender to be a LogWriterName, got {type(sender).__name__}")
        step = kwargs.get(TrackConst.GLOBAL_STEP_KEY)
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, numbers.Integral):
                raise TypeError(f"{where}: expected global_step to be an int, got {type(step).__name__}")
            if step < 0:
                raise ValueError(f"{where}: expected global_step to be a non-negative int, got {step}")
            if step > MAX_STEP:
                raise ValueError(f"{where}: global_step {step} is too large: at most 2**63 - 1 (a 64-bit step)")
            kwargs[TrackConst.GLOBAL_STEP_KEY] = int(step)
        path = kwargs.get(TrackConst.PATH_KEY)
        if path is not None and not isinstance(path, str):
            raise TypeError(f"{where}: expected path to be a str, got {type(path).__name__}")
        if data_type in _NUMBER_TYPES:
            return _number(key, value, where)
        if data_type in _NUMBER_DICT_TYPES:
            if not isinstance(value, dict):
                raise TypeError(f"{where}: {data_type.value} expects a dict of numbers, got {type(value).__name__}")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(f"{where}: {data_type.value} keys must be str, got {type(k).__name__}")
                out[k] = _number(k, v, where)
            return out
        if data_type in _DICT_TYPES and not isinstance(value, dict):
            raise TypeError(f"{where}: {data_type.value} expects a dict, got {type(value).__name__}")
        if data_type == AnalyticsDataType.TEXT and not isinstance(value, str):
            raise TypeError(f"{where}: TEXT expects a str, got {type(value).__name__}")
        return value

    def to_dxo(self) -> DXO:
        """Return the record as a DXO of kind ANALYTIC (data: key, value, step, path, kwargs; meta: type, writer)."""
        data: dict[str, Any] = {TrackConst.TRACK_KEY: self.tag, TrackConst.TRACK_VALUE: self.value}
        if self.step is not None:
            data[TrackConst.GLOBAL_STEP_KEY] = self.step
        if self.path:
            data[TrackConst.PATH_KEY] = self.path
        if self.kwargs:
            data[TrackConst.KWARGS_KEY] = self.kwargs
        dxo = DXO(data_kind=DataKind.ANALYTIC, data=data)
        dxo.set_meta_prop(TrackConst.DATA_TYPE_KEY, self.data_type)
        dxo.set_meta_prop(TrackConst.TRACKER_KEY, self.sender)
        return dxo

    @classmethod
    def from_dxo(cls, dxo: DXO, receiver: LogWriterName = LogWriterName.TORCH_TB) -> AnalyticsData:
        """Rebuild a record from its DXO, converting its data type to the ``receiver``'s syntax.

        Raises:
            TypeError: ``dxo`` is not a DXO, or its values do not fit its data type.
            ValueError: the DXO has no data, or lacks (or has an unknown) key, data type or writer name, or its
                ``analytics_kwargs`` name one of AnalyticsData's own parameters (``key``, ``value``...).
        """
        if not isinstance(dxo, DXO):
            raise TypeError(f"AnalyticsData.from_dxo: expected a DXO, got {type(dxo).__name__}")
        data = dxo.data
        if not data or not isinstance(data, dict):
            raise ValueError("AnalyticsData.from_dxo: the DXO has no data; expected track_key and track_value")
        if TrackConst.TRACK_KEY not in data or TrackConst.TRACK_VALUE not in data:
            raise ValueError(
                f"AnalyticsData.from_dxo: the DXO data lacks {TrackConst.TRACK_KEY!r} or {TrackConst.TRACK_VALUE!r} "
                f"(keys: {sorted(map(str, data))})"
            )
        kwargs = data.get(TrackConst.KWARGS_KEY) or {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError(f"AnalyticsData.from_dxo: {TrackConst.KWARGS_KEY} must be a dict with str keys")
        clash = sorted(k for k in kwargs if k in _RESERVED_KWARGS)
        if clash:
            raise ValueError(f"AnalyticsData.from_dxo: {TrackConst.KWARGS_KEY} may not hold {clash}")
        kwargs = dict(kwargs)
        for k in (TrackConst.GLOBAL_STEP_KEY, TrackConst.PATH_KEY):
            if data.get(k) is not None:
                kwargs[k] = data[k]
        data_type = _member(AnalyticsDataType, dxo.get_meta_prop(TrackConst.DATA_TYPE_KEY), TrackConst.DATA_TYPE_KEY)
        raw_writer = dxo.get_meta_prop(TrackConst.TRACKER_KEY)
        writer = LogWriterName.TORCH_TB if raw_writer is None else _member(LogWriterName, raw_writer, "tracker_key")
        if writer != receiver:
            data_type = cls.convert_data_type(data_type, writer, receiver)
        return cls(data[TrackConst.TRACK_KEY], data[TrackConst.TRACK_VALUE], data_type, writer, **kwargs)

    @classmethod
    def convert_data_type(
        cls, sender_data_type: AnalyticsDataType, sender: LogWriterName, receiver: LogWriterName
    ) -> AnalyticsDataType:
        """Map a data type between writers: TensorBoard's SCALAR(S) are MLflow's/W&B's METRIC(S), and back."""
        return _CONVERSIONS.get((sender, receiver, sender_data_type), sender_data_type)

    def __str__(self) -> str:
        return (
            f"AnalyticsData(tag: {self.tag}, value: {self.value}, data_type: {self.data_type}, "
            f"kwargs: {self.kwargs}, step: {self.step})"
        )


def _member(enum_type: type[Enum], value: Any, key: str) -> Any:
    """Return the member of ``enum_type`` that ``value`` is or names (a received DXO holds the str values)."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        names = ", ".join(m.value for m in enum_type)
        raise ValueError(
            f"AnalyticsData.from_dxo: meta {key!r} is {value!r}, not a {enum_type.__name__} (one of {names})"
        ) from None
