"""A persistor for tests/test_data_plane.py: a 1.2 MB model at load, the saved global model written to final.npz."""

from __future__ import annotations

import os

import numpy as np

from flarelite.app_common.abstract.model import ModelLearnable, make_model_learnable
from flarelite.app_common.abstract.model_persistor import ModelPersistor


class SavingPersistor(ModelPersistor):
    """Loads ``x`` (300,000 float32: its buffer takes the data channel); saves the global model to final.npz."""

    def load_model(self, fl_ctx) -> ModelLearnable:
        return make_model_learnable({"x": np.arange(300_000, dtype=np.float32)}, {})

    def save_model(self, model: ModelLearnable, fl_ctx) -> None:
        folder = fl_ctx.get_workspace().get_run_dir(fl_ctx.get_job_id())
        np.savez(os.path.join(folder, "final.npz"), **model["weights"])
