"""MetricsArtifactWriter: machine-readable metrics of a run in ``<run dir>/metrics/``.

- ``round_metrics.jsonl``: one JSON line per round: ``{"round", "aggregated_metrics": [{"name", "value"}],
  "sites": [{"name", "metrics": [...], "weight", "weight_key"}], "skipped_metrics": [{"site", "name",
  "reason"}]}`` (plus ``aggregation`` and ``key_metric`` when the workflow reports them);
- ``metrics_summary.json`` (at END_RUN): the final round and its aggregated metrics, the key metric and its
  mode, and the best round and metrics when IntimeModelSelector reported one.

Metric names are written as values, never as JSON keys; only finite numbers (and short strings for site
metrics) are kept; everything is bounded by ``limits``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ...apis.event_type import EventType
from ...apis.fl_constant import FLMetaKey
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable
from ..abstract.fl_model import FLModel
from ..app_constant import AppConstants
from ..app_event_type import AppEventType
from ..utils.fl_model_utils import FLModelUtils
from .intime_model_selector import METRICS_SELECTION_INFO
from .widget import Widget

METRICS_AGGREGATION_INFO = "metrics_aggregation_info"
_DEFAULT_LIMITS = {
    "max_metric_name_length": 256,
    "max_string_value_length": 1024,
    "max_metrics_per_site_per_round": 512,
    "max_sites_per_round": 10000,
    "max_skipped_metrics_per_round": 1024,
    "max_round_record_bytes": 1048576,
    "max_summary_bytes": 1048576,
}


def _clean_text(value: str, limit: int) -> str:
    return "".join(ch for ch in value[:limit] if ord(ch) >= 32 and ch != "\x7f")


class MetricsArtifactWriter(Widget):
    """Writes the per-round and summary metrics files (see the module docstring).

    Parameters:
        results_dir: folder under the run folder.
        summary_file_name, round_file_name: plain file names inside it.
        limits: overrides of the bounds (keys as in ``_DEFAULT_LIMITS``).
    """

    def __init__(
        self,
        results_dir: str = "metrics",
        summary_file_name: str = "metrics_summary.json",
        round_file_name: str = "round_metrics.jsonl",
        limits: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        for what, name in (("summary_file_name", summary_file_name), ("round_file_name", round_file_name)):
            if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"MetricsArtifactWriter: {what} must be a plain file name, got {name!r}")
        unknown = sorted(set(limits or {}) - set(_DEFAULT_LIMITS))
        if unknown:
            raise ValueError(f"MetricsArtifactWriter: unknown limits {unknown}; known: {sorted(_DEFAULT_LIMITS)}")
        self.results_dir = results_dir
        self.summary_file_name = summary_file_name
        self.round_file_name = round_file_name
        self.limits = limits
        self._limits = {**_DEFAULT_LIMITS, **(limits or {})}
        self._reset()

    def _reset(self) -> None:
        self._round_sites: dict[Any, list[dict]] = {}
        self._round_skipped: dict[Any, list[dict]] = {}
        self._has_metrics = False
        self._final_round: Any = None
        self._final_metrics: list[dict] = []
        self._best: dict | None = None
        self._key_metric: dict | None = None
        self._aggregation: dict | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Collect at AFTER_CONTRIBUTION_ACCEPT, write a round at AFTER_AGGREGATION, the summary at END_RUN."""
        if event_type == EventType.START_RUN:
            self._reset()
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            self._after_contribution(fl_ctx)
        elif event_type == AppEventType.AFTER_AGGREGATION:
            self._after_aggregation(fl_ctx)
        elif event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            self._best_model(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._write_summary(fl_ctx)

    # values ------------------------------------------------------------------------------------------
    def _label(self, value: Any) -> str:
        return _clean_text(value, self._limits["max_metric_name_length"]) if isinstance(value, str) else ""

    def _value(self, value: Any, allow_str: bool) -> tuple[Any, str | None]:
        item = getattr(value, "item", None)
        if callable(item) and getattr(value, "shape", None) == ():
            value = item()
        if isinstance(value, bool):
            return value, None
        if isinstance(value, int):
            return (value, None) if value.bit_length() <= 1023 else (None, "number_too_large")
        if isinstance(value, float):
            return (value, None) if math.isfinite(value) else (None, "non_finite_number")
        if allow_str and isinstance(value, str):
            if len(value) > self._limits["max_string_value_length"]:
                return None, "string_too_long"
            return _clean_text(value, len(value)), None
        return None, "unsupported_type"

    def _metrics(self, metrics: Any, site: str | None, skipped: list[dict], allow_str: bool) -> list[dict]:
        if not isinstance(metrics, dict):
            return []
        out: list[dict] = []
        for name, value in metrics.items():
            if len(out) >= self._limits["max_metrics_per_site_per_round"]:
                self._skip(skipped, site, name, "too_many_metrics")
                break
            clean = self._label(name)
            if not clean:
                self._skip(skipped, site, name, "non_string_metric_name" if not isinstance(name, str) else "empty_name")
                continue
            normalized, reason = self._value(value, allow_str)
            if reason:
                self._skip(skipped, site, clean, reason)
                continue
            out.append({"name": clean, "value": normalized})
        return out

    def _skip(self, skipped: list[dict], site: str | None, name: Any, reason: str) -> None:
        if len(skipped) >= self._limits["max_skipped_metrics_per_round"]:
            return
        record = {"name": self._label(name) if isinstance(name, str) else "", "reason": reason}
        if site is not None:
            record["site"] = self._label(site)
        skipped.append(record)

    @staticmethod
    def _model(value: Any) -> FLModel | None:
        if isinstance(value, FLModel):
            return value
        if isinstance(value, Shareable):
            try:
                return FLModelUtils.from_shareable(value)
            except ValueError:
                return None
        return None

    @staticmethod
    def _round(model: FLModel | None, fl_ctx: FLContext) -> Any:
        candidates = [model.current_round, (model.meta or {}).get("current_round")] if model is not None else []
        candidates.append(fl_ctx.get_prop(AppConstants.CURRENT_ROUND))
        for value in candidates:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    # events ------------------------------------------------------------------------------------------
    def _after_contribution(self, fl_ctx: FLContext) -> None:
        if fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED, True) is False:
            return
        model = self._model(fl_ctx.get_prop(AppConstants.TRAINING_RESULT))
        if model is None or not model.metrics:
            return
        current_round = self._round(model, fl_ctx)
        peer = fl_ctx.get_peer_context()
        site = (model.meta or {}).get(FLMetaKey.SITE_NAME) or (peer.get_identity_name("?") if peer else "?")
        skipped = self._round_skipped.setdefault(current_round, [])
        metrics = self._metrics(model.metrics, site, skipped, allow_str=True)
        sites = self._round_sites.setdefault(current_round, [])
        if not metrics:
            return
        if len(sites) >= self._limits["max_sites_per_round"]:
            self._skip(skipped, site, "", "too_many_sites")
            return
        record: dict[str, Any] = {"name": self._label(site), "metrics": metrics}
        weight, _ = self._value((model.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND), allow_str=False)
        if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0:
            record["weight"] = weight
            record["weight_key"] = FLMetaKey.NUM_STEPS_CURRENT_ROUND
        sites.append(record)

    def _after_aggregation(self, fl_ctx: FLContext) -> None:
        model = self._model(fl_ctx.get_prop(AppConstants.AGGREGATION_RESULT))
        if model is None:
            return
        current_round = self._round(model, fl_ctx)
        skipped = self._round_skipped.pop(current_round, [])
        sites = self._round_sites.pop(current_round, [])
        aggregated = self._metrics(model.metrics, None, skipped, allow_str=False)
        info = (model.meta or {}).get(METRICS_AGGREGATION_INFO)
        info = info if isinstance(info, dict) else {}
        for site_weight in info.get("site_weights") or []:
            if not isinstance(site_weight, dict):
                continue
            for site in sites:
                if site["name"] == site_weight.get("name") and isinstance(site_weight.get("weight"), (int, float)):
                    site["weight"] = site_weight["weight"]
                    site["weight_key"] = self._label(site_weight.get("weight_key") or "")
        if not aggregated and not sites and not skipped:
            return
        record: dict[str, Any] = {
            "round": current_round,
            "aggregated_metrics": aggregated,
            "sites": sites,
            "skipped_metrics": skipped,
        }
        if isinstance(info.get("aggregation"), dict):
            record["aggregation"] = self._aggregation = self._jsonable(info["aggregation"])
        if self._key_metric:
            record["key_metric"] = self._key_metric
        line = self._dumps(record)
        if line is None or len(line.encode("utf-8")) > self._limits["max_round_record_bytes"]:
            record = {
                "round": current_round,
                "aggregated_metrics": aggregated,
                "sites": [],
                "skipped_metrics": [{"name": "", "reason": "round_record_too_large"}],
            }
            line = self._dumps(record)
            if line is None:
                return
        path = self._path(fl_ctx, self.round_file_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._has_metrics = True
        self._final_round = current_round
        self._final_metrics = aggregated

    def _best_model(self, fl_ctx: FLContext) -> None:
        info = fl_ctx.get_prop(METRICS_SELECTION_INFO)
        if not isinstance(info, dict):
            return
        best: dict[str, Any] = {}
        if isinstance(info.get("best_round"), int):
            best["best_round"] = info["best_round"]
        metrics = self._metrics(info.get("best_metrics"), None, [], allow_str=False)
        if metrics:
            best["best_metrics"] = metrics
        if isinstance(info.get("source"), str):
            best["best_metric_source"] = self._label(info["source"])
        key_metric = info.get("key_metric")
        if isinstance(key_metric, dict) and isinstance(key_metric.get("name"), str):
            self._key_metric = {"name": self._label(key_metric["name"])}
            if key_metric.get("mode") in ("max", "min"):
                self._key_metric["mode"] = key_metric["mode"]
        self._best = best or None

    def _write_summary(self, fl_ctx: FLContext) -> None:
        if not self._has_metrics:
            return
        summary: dict[str, Any] = {
            "schema_version": "1",
            "status": "metrics_reported",
            "job_name": self._label(fl_ctx.get_job_id() or ""),
            "final_round": self._final_round,
            "final_aggregated_metrics": self._final_metrics,
            "round_metrics_file": self.round_file_name,
            "notes": [
                "Aggregated metrics are weighted averages of client-reported metric values.",
                "Nonlinear metrics are not recomputed from pooled predictions.",
            ],
        }
        if self._key_metric:
            summary["key_metric"] = self._key_metric
        if self._best:
            summary.update(self._best)
        if self._aggregation:
            summary["aggregation"] = self._aggregation
        data = self._dumps(summary, indent=2)
        if data is None or len(data.encode("utf-8")) > self._limits["max_summary_bytes"]:
            return
        path = self._path(fl_ctx, self.summary_file_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(data)
        self.log_info(fl_ctx, f"metrics summary written to {path}")

    # files --------------------------------------------------------------------------------------------
    def _path(self, fl_ctx: FLContext, file_name: str) -> str:
        run_dir = os.path.realpath(fl_ctx.get_workspace().get_run_dir(fl_ctx.get_job_id()))
        path = os.path.realpath(os.path.join(run_dir, self.results_dir, file_name))
        if os.path.commonpath([run_dir, path]) != run_dir:
            raise ValueError(f"MetricsArtifactWriter: results_dir {self.results_dir!r} leaves the run folder")
        return path

    def _jsonable(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {self._label(k): self._jsonable(v) for k, v in value.items() if isinstance(k, str)}
        if isinstance(value, list):
            return [self._jsonable(v) for v in value]
        normalized, reason = self._value(value, allow_str=True)
        return None if reason else normalized

    @staticmethod
    def _dumps(value: Any, indent: int | None = None) -> str | None:
        try:
            return json.dumps(value, allow_nan=False, indent=indent, separators=None if indent else (",", ":"))
        except (TypeError, ValueError, OverflowError):
            return None
