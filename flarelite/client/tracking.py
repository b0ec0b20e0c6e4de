"""Experiment tracking from a training script: ``SummaryWriter``, ``WandBWriter``, ``MLflowWriter``.

Each writer sends its records with ``flare.log`` to the site's executor, which fires them as analytics events;
the server side decides where they go (TensorBoard, MLflow...). Writers resolve their Client API context when
they are created: make them after ``flare.init()``.
"""

from __future__ import annotations

from typing import Any

from flarelite.apis.analytix import AnalyticsDataType, LogWriterName

from . import api
from .api_context import APIContext


class MetricsSender:
    """Standalone metric sending for a process that does not otherwise use the Client API (from ``init``)."""

    def __init__(self, ctx: APIContext) -> None:
        self.ctx = ctx

    def log(self, key: str, value: Any, data_type: AnalyticsDataType, **kwargs: Any) -> None:
        """Send one record."""
        api.log(key, value, data_type, ctx=self.ctx, **kwargs)

    def shutdown(self) -> None:
        """Stop sending."""
        api.shutdown(ctx=self.ctx)


def init(rank: str | int | None = None, config_file: str | None = None) -> MetricsSender:
    """Connect to the site for metrics only (do not combine with ``flare.init``); return the sender."""
    return MetricsSender(api.init(rank=rank, config_file=config_file))


def get_context(ctx: APIContext | None = None) -> APIContext:
    """Return ``ctx`` or the calling thread's Client API context (RuntimeError before ``flare.init()``)."""
    return api.get_context(ctx)


def log(key: str, value: Any, data_type: AnalyticsDataType, ctx: APIContext | None = None, **kwargs: Any) -> None:
    """Send one record through the Client API."""
    api.log(key, value, data_type, ctx=get_context(ctx), **kwargs)


def shutdown(ctx: APIContext | None = None) -> None:
    """Shut the context down."""
    api.shutdown(ctx=get_context(ctx))


class _Writer:
    def __init__(self, writer: LogWriterName, ctx: APIContext | None) -> None:
        self.writer = writer
        self.ctx = get_context(ctx)

    def _log(self, key: str, value: Any, data_type: AnalyticsDataType, **kwargs: Any) -> None:
        api.log(key, value, data_type, ctx=self.ctx, writer=self.writer, **kwargs)


class SummaryWriter(_Writer):
    """TensorBoard-style records (``add_scalar``, ``add_scalars``), sent to the server's receivers."""

    def __init__(self, ctx: APIContext | None = None) -> None:
        super().__init__(LogWriterName.TORCH_TB, ctx)

    def add_scalar(self, tag: str, scalar: float, global_step: int | None = None, **kwargs: Any) -> None:
        """Record one scalar (without ``global_step`` it lands at step 0)."""
        if global_step is not None:
            kwargs["global_step"] = global_step
        self._log(tag, scalar, AnalyticsDataType.SCALAR, **kwargs)

    def add_scalars(self, tag: str, scalars: dict, global_step: int | None = None, **kwargs: Any) -> None:
        """Record several scalars under one main tag."""
        if global_step is not None:
            kwargs["global_step"] = global_step
        self._log(tag, scalars, AnalyticsDataType.SCALARS, **kwargs)

    def flush(self) -> None:
        """Does nothing: records are sent when made."""


class WandBWriter(_Writer):
    """Weights & Biases-style records (``log``)."""

    def __init__(self, ctx: APIContext | None = None) -> None:
        super().__init__(LogWriterName.WANDB, ctx)

    def log(self, metrics: dict, step: int | None = None) -> None:
        """Record a dict of metrics."""
        kwargs = {"global_step": step} if step is not None else {}
        self._log("metrics", metrics, AnalyticsDataType.METRICS, **kwargs)


class MLflowWriter(_Writer):
    """MLflow-style records: params, metrics, text and tags."""

    def __init__(self, ctx: APIContext | None = None) -> None:
        super().__init__(LogWriterName.MLFLOW, ctx)

    def log_param(self, key: str, value: Any) -> None:
        """Record one parameter."""
        self._log(key, value, AnalyticsDataType.PARAMETER)

    def log_params(self, values: dict) -> None:
        """Record a dict of parameters."""
        self._log("params", values, AnalyticsDataType.PARAMETERS)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Record one metric."""
        kwargs = {"global_step": step} if step is not None else {}
        self._log(key, value, AnalyticsDataType.METRIC, **kwargs)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Record a dict of metrics."""
        kwargs = {"global_step": step} if step is not None else {}
        self._log("metrics", metrics, AnalyticsDataType.METRICS, **kwargs)

    def log_text(self, text: str, artifact_file_path: str) -> None:
        """Record a text artifact at ``artifact_file_path``."""
        self._log("text", text, AnalyticsDataType.TEXT, path=artifact_file_path)

    def set_tag(self, key: str, tag: Any) -> None:
        """Record one tag."""
        self._log(key, tag, AnalyticsDataType.TAG)

    def set_tags(self, tags: dict) -> None:
        """Record a dict of tags."""
        self._log("tags", tags, AnalyticsDataType.TAGS)
