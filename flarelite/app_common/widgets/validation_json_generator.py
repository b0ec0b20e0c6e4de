"""ValidationJsonGenerator: writes the validation results to ``<run dir>/cross_site_val/cross_val_results.json``."""

from __future__ import annotations

import json
import os
from typing import Any

from ...apis.dxo import DataKind, from_shareable
from ...apis.event_type import EventType
from ...apis.fl_context import FLContext
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from .widget import Widget


def json_metrics(value: Any) -> Any:
    """``value`` as plain JSON values: numpy scalars and arrays (and tensors) become numbers and lists.

    Raises:
        TypeError: a value JSON cannot hold (bytes, other objects), named by its type.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): json_metrics(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_metrics(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return json_metrics(item())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return json_metrics(tolist())
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON")


def write_json_atomically(path: str, value: Any) -> None:
    """Write ``value`` (plain JSON values) to ``path`` through a temporary file, so a failure leaves no half file."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class ValidationJsonGenerator(Widget):
    """Collects VALIDATION_RESULT_RECEIVED into ``{data_client: {model_owner: metrics}}``; written at END_RUN."""

    def __init__(self, results_dir: str = AppConstants.CROSS_VAL_DIR, json_file_name: str = "cross_val_results.json"):
        super().__init__()
        self.results_dir = results_dir
        self.json_file_name = json_file_name
        self._val_results: dict[str, dict] = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Reset at START_RUN, collect at VALIDATION_RESULT_RECEIVED, write at END_RUN."""
        if event_type == EventType.START_RUN:
            self._val_results.clear()
        elif event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            self._collect(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._write(fl_ctx)

    def _collect(self, fl_ctx: FLContext) -> None:
        model_owner = fl_ctx.get_prop(AppConstants.MODEL_OWNER)
        data_client = fl_ctx.get_prop(AppConstants.DATA_CLIENT)
        result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
        if not model_owner:
            self.log_error(fl_ctx, "model owner unknown; validation result ignored")
            return
        if not data_client:
            self.log_error(fl_ctx, "data client unknown; validation result ignored")
            return
        if not result:
            self.log_error(fl_ctx, f"no validation result from {data_client} for {model_owner}")
            return
        try:
            dxo = from_shareable(result)
        except ValueError as exc:
            self.log_error(fl_ctx, f"the validation result of {data_client} for {model_owner} holds no DXO: {exc}")
            return
        if dxo.data_kind != DataKind.METRICS:
            self.log_error(fl_ctx, f"expected a METRICS DXO from {data_client}, got {dxo.data_kind}")
            return
        client_name = getattr(data_client, "name", data_client)  # a Client or its name
        try:
            metrics = json_metrics(dxo.data)
        except (TypeError, RecursionError) as exc:  # what a client sends must not break the file of everyone
            self.log_error(fl_ctx, f"the validation result of {client_name} for {model_owner} is not recorded: {exc}")
            return
        self._val_results.setdefault(str(client_name), {})[str(model_owner)] = metrics

    def _write(self, fl_ctx: FLContext) -> None:
        run_dir = fl_ctx.get_workspace().get_run_dir(fl_ctx.get_job_id())
        folder = os.path.join(run_dir, self.results_dir)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self.json_file_name)
        write_json_atomically(path, self._val_results)
        self.log_info(fl_ctx, f"cross-site validation results written to {path}")
