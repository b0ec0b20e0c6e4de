"""Pieces of bench/fedavg_round.py: the model's persistor, and a server widget that writes the time each FedAvg
round started and ended (the Client API script is _fedavg_client.py)."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from flarelite.apis.event_type import EventType
from flarelite.apis.fl_component import FLComponent
from flarelite.app_common.abstract.model import ModelLearnable, make_model_learnable
from flarelite.app_common.abstract.model_persistor import ModelPersistor
from flarelite.app_common.app_event_type import AppEventType

ARRAYS = 10  # the model is this many float32 arrays


def make_model(mb: int) -> dict:
    """A model of ``mb`` MB (1e6 bytes) as ARRAYS float32 arrays."""
    per = mb * 1_000_000 // 4 // ARRAYS
    rng = np.random.default_rng(0)
    return {f"layer_{i}": rng.standard_normal(per, dtype=np.float32) for i in range(ARRAYS)}


class BenchPersistor(ModelPersistor):
    """Makes the ``size_mb`` model at load; keeps (does not write) what FedAvg saves, so a round is the exchange."""

    def __init__(self, size_mb: int = 10) -> None:
        super().__init__()
        self.size_mb = size_mb

    def load_model(self, fl_ctx) -> ModelLearnable:
        return make_model_learnable(make_model(self.size_mb), {})

    def save_model(self, model: ModelLearnable, fl_ctx) -> None:
        self.saved = model


class RoundClock(FLComponent):
    """Records ``time.perf_counter()`` at every ROUND_STARTED and after every aggregation, into rounds.json."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[float] = []
        self.ends: list[float] = []

    def handle_event(self, event_type: str, fl_ctx) -> None:
        if event_type == AppEventType.ROUND_STARTED:
            self.starts.append(time.perf_counter())
        elif event_type == AppEventType.AFTER_AGGREGATION:
            self.ends.append(time.perf_counter())
        elif event_type == EventType.END_RUN:
            path = os.path.join(fl_ctx.get_workspace().get_run_dir(fl_ctx.get_job_id()), "rounds.json")
            with open(path, "w") as f:
                json.dump({"starts": self.starts, "ends": self.ends}, f)
