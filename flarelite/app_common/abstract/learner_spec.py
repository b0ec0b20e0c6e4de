"""Learner: the training/validation logic a LearnerExecutor runs on a client (Shareable in, Shareable out)."""

from __future__ import annotations

from ...apis.fl_component import FLComponent
from ...apis.fl_constant import ReturnCode
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable, make_reply
from ...apis.signal import Signal


class Learner(FLComponent):
    """Override what your learner does; each default answers TASK_UNKNOWN or does nothing."""

    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        """Set the learner up with the executor's parts (called once, at the start of the run)."""

    def train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Train on ``data`` (the global model) and return the update."""
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def get_model_for_validation(self, model_name: str, fl_ctx: FLContext) -> Shareable:
        """Return the local model ``model_name`` for cross-site validation."""
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Validate the model in ``data`` and return the metrics."""
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def abort(self, fl_ctx: FLContext) -> None:
        """Stop what is running."""

    def finalize(self, fl_ctx: FLContext) -> None:
        """Release resources at the end of the run."""
