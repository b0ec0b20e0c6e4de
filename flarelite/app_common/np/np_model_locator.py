"""NPModelLocator: serves the numpy models under ``<run dir>/<model_dir>`` to cross-site evaluation."""

from __future__ import annotations

import os

import numpy as np

from ...apis.dxo import DXO, DataKind
from ...apis.fl_context import FLContext
from ..abstract.model_locator import ModelLocator
from .constants import NPConstants
from .np_model_persistor import run_dir_of


class NPModelLocator(ModelLocator):
    """A str ``model_name`` is served as the model ``"server"``; a dict maps model names to file names."""

    SERVER_MODEL_NAME = "server"

    def __init__(self, model_dir: str = "models", model_name: str | dict[str, str] = "server.npy") -> None:
        super().__init__()
        if isinstance(model_name, str):
            files = {self.SERVER_MODEL_NAME: model_name}
        elif isinstance(model_name, dict) and all(isinstance(v, str) for v in model_name.values()):
            files = dict(model_name)
        else:
            raise TypeError(
                f"NPModelLocator: model_name must be a file name or a dict of names to file names, "
                f"got {type(model_name).__name__}"
            )
        self.model_dir = model_dir
        self.model_name = model_name
        self._files = files

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        """Return the names of the served models."""
        return list(self._files)

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO | None:
        """Return a WEIGHTS DXO ``{"numpy_key": array}`` of the model, or None (logged) when its file is missing."""
        file_name = self._files.get(model_name)
        if file_name is None:
            self.log_error(fl_ctx, f"model {model_name!r} is not one of {list(self._files)}")
            return None
        path = os.path.join(run_dir_of(fl_ctx), self.model_dir, file_name)
        if not os.path.isfile(path):
            self.log_error(fl_ctx, f"model {model_name!r}: file {path} does not exist")
            return None
        data = np.load(path, allow_pickle=False)
        return DXO(data_kind=DataKind.WEIGHTS, data={NPConstants.NUMPY_KEY: data})
