"""BaseFedJob: a FedJob with the server widgets and the client metrics relay that NVFlare's job helpers add.

The server gets ``"json_generator"`` (ValidationJsonGenerator), ``"model_selector"`` (IntimeModelSelector on
``key_metric``, unless ``key_metric`` is empty or a selector is given), ``"metrics_artifact_writer"``
(MetricsArtifactWriter) and, only when ``analytics_receiver`` is given, ``"receiver"`` (since NVFlare 2.8 no
TensorBoard receiver is added by default). Every client app gets ``"event_to_fed"``
(``ConvertToFedEvent(events_to_convert=["analytix_log_stats"])``) the first time something is sent to it, so the
metrics a training script logs in-process reach the server.
"""

from __future__ import annotations

from typing import Any

from ..apis.analytix import ANALYTIC_EVENT_TYPE
from ..apis.fl_constant import SiteType
from ..app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from ..app_common.widgets.intime_model_selector import IntimeModelSelector
from ..app_common.widgets.metrics_artifact_writer import MetricsArtifactWriter
from ..app_common.widgets.validation_json_generator import ValidationJsonGenerator
from .api import FedJob

EVENT_TO_FED_ID = "event_to_fed"


class BaseFedJob(FedJob):
    """A FedJob with model selection, validation/metrics artifacts, optional analytics receiver, fed-event relay."""

    def __init__(
        self,
        name: str = "fed_job",
        min_clients: int = 1,
        mandatory_clients: list[str] | None = None,
        key_metric: str = "accuracy",
        key_metric_mode: str = "max",
        validation_json_generator: Any = None,
        model_selector: Any = None,
        convert_to_fed_event: Any = None,
        analytics_receiver: Any = None,
        metrics_artifact_writer: Any = None,
    ) -> None:
        """Build the job and add the server widgets (see the module docstring).

        Parameters:
            key_metric: the metric the model selector ranks global models by (falsy: no default selector).
            key_metric_mode: ``"max"`` (higher is better) or ``"min"``.
            validation_json_generator / model_selector / metrics_artifact_writer: replace the defaults.
            convert_to_fed_event: replaces the clients' ConvertToFedEvent.
            analytics_receiver: a server-side receiver (e.g. TBAnalyticsReceiver), added as ``"receiver"``.

        Raises:
            ValueError: ``key_metric_mode`` is not ``"min"`` or ``"max"`` (and FedJob's own argument checks).
        """
        if key_metric_mode not in ("min", "max"):
            raise ValueError(f"key_metric_mode must be 'min' or 'max', got {key_metric_mode!r}")
        super().__init__(name=name, min_clients=min_clients, mandatory_clients=mandatory_clients)
        self.key_metric = key_metric
        self.key_metric_mode = key_metric_mode
        self.comp_ids: dict[str, Any] = {}
        self.convert_to_fed_event = (
            convert_to_fed_event
            if convert_to_fed_event is not None
            else ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE])
        )
        self.to_server(
            validation_json_generator if validation_json_generator is not None else ValidationJsonGenerator(),
            id="json_generator",
        )
        if model_selector is not None:
            self.to_server(model_selector, id="model_selector")
        elif key_metric:
            selector = IntimeModelSelector(key_metric=key_metric, negate_key_metric=key_metric_mode == "min")
            self.to_server(selector, id="model_selector")
        self.to_server(
            metrics_artifact_writer if metrics_artifact_writer is not None else MetricsArtifactWriter(),
            id="metrics_artifact_writer",
        )
        if analytics_receiver is not None:
            self.to_server(analytics_receiver, id="receiver")

    def set_up_client(self, target: str) -> None:
        """Add ``"event_to_fed"`` (the ConvertToFedEvent) to a client target when it is first used.

        A site whose app already gets it from ``@ALL`` (or ``@ALL`` when the named sites have it) is skipped, so
        no app holds two.
        """
        if target == SiteType.SERVER or EVENT_TO_FED_ID in self._taken_ids(target):
            return
        self.to(self.convert_to_fed_event, target, id=EVENT_TO_FED_ID)
