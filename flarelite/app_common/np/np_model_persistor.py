"""NPModelPersistor: a numpy model ``{"numpy_key": array}`` saved by ``np.save`` to ``<run dir>/models/server.npy``."""

from __future__ import annotations

import os

import numpy as np

from ...apis.fl_context import FLContext
from ..abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from ..abstract.model_persistor import ModelPersistor
from .constants import NPConstants

_DEFAULT_MODEL = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def run_dir_of(fl_ctx: FLContext) -> str:
    """Return the site's run folder (its Workspace's run dir)."""
    workspace = fl_ctx.get_workspace()
    if workspace is None and fl_ctx.get_engine() is not None:
        workspace = fl_ctx.get_engine().get_workspace()
    if workspace is None:
        raise RuntimeError("the FLContext has no workspace: the component is not running in a site")
    return workspace.get_run_dir(fl_ctx.get_job_id())


class NPModelPersistor(ModelPersistor):
    """Loads, in this order: ``source_ckpt_file_full_name``, ``<run dir>/<model_dir>/<model_name>``, ``model``,
    then the built-in 3x3 float32 model ``[[1,2,3],[4,5,6],[7,8,9]]``; saves to ``<run dir>/<model_dir>/<model_name>``.

    Files are read with ``allow_pickle=False``: a ``.npy`` holding Python objects is refused.
    """

    def __init__(
        self,
        model_dir: str = "models",
        model_name: str = "server.npy",
        model: list | None = None,
        source_ckpt_file_full_name: str | None = None,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.model_name = model_name
        self.model = model
        self.source_ckpt_file_full_name = source_ckpt_file_full_name

    def _model_path(self, fl_ctx: FLContext) -> str:
        return os.path.join(run_dir_of(fl_ctx), self.model_dir, self.model_name)

    def _source_path(self, fl_ctx: FLContext) -> str:
        path = self.source_ckpt_file_full_name
        if not os.path.isabs(path):
            path = os.path.join(fl_ctx.get_workspace().get_app_custom_dir(fl_ctx.get_job_id()), path)
        return path

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        """Return ``{"numpy_key": array}`` from the first source that exists (see the class docstring).

        Raises:
            ValueError: ``source_ckpt_file_full_name`` is given but the file does not exist.
        """
        if self.source_ckpt_file_full_name:
            path = self._source_path(fl_ctx)
            if not os.path.isfile(path):
                raise ValueError(
                    f"{self.name}: source checkpoint {path!r} does not exist (a relative "
                    "source_ckpt_file_full_name is looked up in the app's custom/ folder)"
                )
            self.log_info(fl_ctx, f"loading the initial model from source checkpoint {path}")
            data = np.load(path, allow_pickle=False)
        elif os.path.isfile(self._model_path(fl_ctx)):
            path = self._model_path(fl_ctx)
            self.log_info(fl_ctx, f"loading the model saved at {path}")
            data = np.load(path, allow_pickle=False)
        elif self.model is not None:
            self.log_info(fl_ctx, "using the model given to the persistor")
            data = np.array(self.model, dtype=np.float32)
        else:
            self.log_info(fl_ctx, "no model found: using the default 3x3 model")
            data = np.array(_DEFAULT_MODEL, dtype=np.float32)
        return make_model_learnable({NPConstants.NUMPY_KEY: data}, {})

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        """Write the model's ``numpy_key`` array to ``<run dir>/<model_dir>/<model_name>``.

        Raises:
            ValueError: the model's weights have no ``numpy_key`` entry.
        """
        weights = model.get(ModelLearnableKey.WEIGHTS) or {}
        if NPConstants.NUMPY_KEY not in weights:
            raise ValueError(
                f"{self.name}: the model to save has no {NPConstants.NUMPY_KEY!r} weight (it has {sorted(weights)})"
            )
        path = self._model_path(fl_ctx)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, np.asarray(weights[NPConstants.NUMPY_KEY]), allow_pickle=False)
        self.log_info(fl_ctx, f"saved the model to {path}")
