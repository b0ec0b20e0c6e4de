"""PTModel: puts a PyTorch model on the server of a FedJob, as a persistor and a model locator."""

from __future__ import annotations

from typing import Any

import torch

from ....app_common.abstract.model_locator import ModelLocator
from ....app_common.abstract.model_persistor import ModelPersistor
from ....app_common.app_constant import DefaultCheckpointFileName
from ..file_model_locator import PTFileModelLocator
from ..file_model_persistor import PTFileModelPersistor


class PTModel:
    """``job.to_server(PTModel(net))`` adds a ``"persistor"`` and a ``"locator"`` for ``net`` to the server."""

    def __init__(
        self,
        model: Any,
        persistor: ModelPersistor | None = None,
        locator: ModelLocator | None = None,
        allow_numpy_conversion: bool = True,
        initial_ckpt: str | None = None,
        best_model_filename: str | None = None,
    ) -> None:
        """Wrap ``model`` (an ``nn.Module``, or ``{"path": "pkg.mod.Class", "args": {...}}``) for a job.

        ``persistor`` and ``locator`` replace the defaults (a PTFileModelPersistor with ``model``,
        ``allow_numpy_conversion``, ``initial_ckpt`` as its source checkpoint and ``best_model_filename``;
        a PTFileModelLocator of that persistor).

        Raises:
            ValueError: a dict ``model`` has no ``"path"``.
            TypeError: ``model``, ``persistor`` or ``locator`` is of the wrong type.
        """
        if isinstance(model, dict):
            if not isinstance(model.get("path"), str) or not model["path"]:
                raise ValueError(f"PTModel: a dict model needs a 'path' key naming the model class, got {model!r}")
        elif not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"PTModel: model must be a torch.nn.Module or a {{'path': ..., 'args': ...}} dict, "
                f"got {type(model).__name__}"
            )
        if persistor is not None and not isinstance(persistor, ModelPersistor):
            raise TypeError(f"PTModel: persistor must be a ModelPersistor, got {type(persistor).__name__}")
        if locator is not None and not isinstance(locator, ModelLocator):
            raise TypeError(f"PTModel: locator must be a ModelLocator, got {type(locator).__name__}")
        self.model = model
        self.persistor = persistor
        self.locator = locator
        self.allow_numpy_conversion = allow_numpy_conversion
        self.initial_ckpt = initial_ckpt
        self.best_model_filename = best_model_filename

    def add_to_fed_job(self, job: Any, ctx: Any, **kwargs: Any) -> dict[str, str]:
        """Add the persistor (id ``"persistor"``) and the locator (id ``"locator"``); return their ids.

        Returns:
            ``{"persistor_id": ..., "locator_id": ...}``.
        """
        if kwargs:
            raise TypeError(f"PTModel: unexpected keyword arguments {sorted(kwargs)}")
        persistor = self.persistor
        if persistor is None:
            persistor = PTFileModelPersistor(
                model=self.model,
                allow_numpy_conversion=self.allow_numpy_conversion,
                source_ckpt_file_full_name=self.initial_ckpt,
                best_global_model_file_name=self.best_model_filename or DefaultCheckpointFileName.BEST_GLOBAL_MODEL,
            )
        persistor_id = job.add_component("persistor", persistor, ctx)
        locator = self.locator if self.locator is not None else PTFileModelLocator(pt_persistor_id=persistor_id)
        locator_id = job.add_component("locator", locator, ctx)
        return {"persistor_id": persistor_id, "locator_id": locator_id}
