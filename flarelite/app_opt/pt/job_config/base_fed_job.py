"""PyTorch BaseFedJob: the framework-neutral BaseFedJob plus an optional initial model put on the server (PTModel)."""

from __future__ import annotations

from typing import Any

import torch

from ....app_common.utils.validation_utils import forward_args
from ....job_config.base_fed_job import BaseFedJob as _NeutralBaseFedJob
from .model import PTModel


class BaseFedJob(_NeutralBaseFedJob):
    """BaseFedJob for PyTorch: with ``initial_model``, the server gets a PTModel (``"persistor"`` and ``"locator"``)."""

    def __init__(
        self,
        initial_model: Any = None,
        name: str = "fed_job",
        min_clients: int = 1,
        mandatory_clients: list[str] | None = None,
        key_metric: str = "accuracy",
        validation_json_generator: Any = None,
        model_selector: Any = None,
        convert_to_fed_event: Any = None,
        analytics_receiver: Any = None,
        metrics_artifact_writer: Any = None,
        model_persistor: Any = None,
        model_locator: Any = None,
        key_metric_mode: str = "max",
    ) -> None:
        """Build the job; with ``initial_model`` (an ``nn.Module``) add ``PTModel(initial_model, persistor, locator)``.

        ``self.comp_ids`` then holds ``persistor_id`` and ``locator_id``.

        Raises:
            TypeError: ``initial_model`` is given and is not a ``torch.nn.Module``.
            ValueError: as the framework-neutral BaseFedJob.
        """
        if initial_model is not None and not isinstance(initial_model, torch.nn.Module):
            raise TypeError(f"initial_model must be a torch.nn.Module, got {type(initial_model).__name__}")
        super().__init__(**forward_args(locals(), _NeutralBaseFedJob.__init__))
        if initial_model is not None:
            ids = self.to_server(PTModel(initial_model, persistor=model_persistor, locator=model_locator))
            self.comp_ids.update(ids)
