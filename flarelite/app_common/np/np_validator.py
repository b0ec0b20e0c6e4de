"""NPValidator: a client executor that answers "validate" tasks with a simple metric of the received numpy model."""

from __future__ import annotations

import numpy as np

from ...apis.dxo import DXO, DataKind, from_shareable
from ...apis.executor import Executor
from ...apis.fl_constant import ReturnCode
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable, make_reply
from ...apis.signal import Signal
from ..app_constant import AppConstants
from .constants import NPConstants


class NPValidator(Executor):
    """Replies ``{"accuracy": sum(w / max(w)) + epsilon * random()}`` for the model's ``numpy_key`` weights.

    ``epsilon`` scales the random term (NVFlare adds ``random()`` whatever it is; ``epsilon=0`` makes the metric
    deterministic). ``sleep_time`` seconds are waited first (abortable), to imitate work.
    """

    def __init__(
        self, epsilon: float = 1, sleep_time: float = 0, validate_task_name: str = AppConstants.TASK_VALIDATION
    ) -> None:
        super().__init__()
        self._epsilon = epsilon
        self._sleep_time = sleep_time
        self._validate_task_name = validate_task_name

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Validate the model of a ``validate`` task; other tasks get TASK_UNKNOWN."""
        if self._sleep_time and abort_signal.wait(self._sleep_time):
            return make_reply(ReturnCode.TASK_ABORTED)
        if task_name != self._validate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            model_dxo = from_shareable(shareable)
        except ValueError as exc:
            self.log_error(fl_ctx, f"Unable to extract the model DXO from the task data: {exc}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if not model_dxo.data or model_dxo.data_kind != DataKind.WEIGHTS:
            self.log_error(fl_ctx, "The model DXO has no data or is not of kind WEIGHTS; unable to validate.")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        model = model_dxo.data
        if NPConstants.NUMPY_KEY not in model:
            self.log_error(fl_ctx, f"{NPConstants.NUMPY_KEY!r} is not in the model; unable to validate.")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        model_owner = shareable.get_header(AppConstants.MODEL_OWNER, "?")
        self.log_info(fl_ctx, f"Validating the model of {model_owner}.")
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        data = np.asarray(model[NPConstants.NUMPY_KEY], dtype=np.float64)
        peak = float(np.max(data)) if data.size else 0.0
        score = float(np.sum(data / peak)) if peak else 0.0
        accuracy = score + float(self._epsilon) * float(np.random.random())
        self.log_info(fl_ctx, f"Validation result: accuracy={accuracy}")
        return DXO(data_kind=DataKind.METRICS, data={"accuracy": accuracy}).to_shareable()
