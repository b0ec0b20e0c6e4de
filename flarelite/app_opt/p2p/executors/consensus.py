"""ConsensusExecutor: every site repeatedly replaces its value with a weighted average of its neighbours'."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import numpy as np

from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal

from ..utils.metrics import MetricsWriter
from ..utils.pt_file import save_float64_tensor
from .sync_executor import SyncAlgorithmExecutor

VALUE_SEQUENCE_FILE = "value_sequence.pt"
METRICS_FILE = "metrics.csv"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or getattr(value, "ndim", None) == 0


class ConsensusExecutor(SyncAlgorithmExecutor):
    """Consensus: ``x <- w_self * x + sum_j w_j * x_j`` over the neighbours, for ``extra["iterations"]`` steps.

    The value is a number, a numpy array or a torch tensor. With doubly stochastic weights (e.g. the
    networks of ``flarelite.app_opt.p2p.utils``) every site converges to the average of the initial values.

    At the end the site saves its history (the initial value, then one value per iteration) as
    ``value_sequence.pt`` (a float64 torch tensor, ``torch.load`` reads it) in its own folder (its run
    directory, ``WS/<site>`` in the simulator), and writes ``metrics.csv`` there as it goes (``iteration``,
    ``elapsed_s``, ``value`` for numbers or ``value_norm`` for arrays).

    Parameters:
        initial_value: the site's starting value: a number or a list of numbers; None draws a number in
            [0, 1) at random.
        sync_timeout: see SyncAlgorithmExecutor.
    """

    def __init__(self, initial_value: float | list | None = None, sync_timeout: float = 10) -> None:
        super().__init__(sync_timeout=sync_timeout)
        self.initial_value = initial_value
        if initial_value is None:
            value: Any = random.random()
        elif isinstance(initial_value, (list, tuple)):
            value = np.asarray(initial_value, dtype=np.float64)
        elif isinstance(initial_value, bool) or not (
            isinstance(initial_value, (int, float)) or hasattr(initial_value, "shape")
        ):
            raise TypeError(
                "initial_value must be a number, a list of numbers, an array or None, "
                f"got {type(initial_value).__name__}"
            )
        else:
            value = float(initial_value) if isinstance(initial_value, int) else initial_value
        self.current_value = value
        self.value_history: list[Any] = [self.current_value]

    def run_algorithm(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Run ``iterations`` consensus steps, logging progress and writing a metrics row per iteration."""
        iterations = int(self._extra(shareable, "iterations"))
        weight = self._require_weights()
        scalar = _is_scalar(self.current_value)
        writer = MetricsWriter(
            os.path.join(self._site_dir(fl_ctx), METRICS_FILE),
            ["iteration", "elapsed_s", "value" if scalar else "value_norm"],
        )
        start = time.monotonic()
        every = max(1, iterations // 10)
        try:
            writer.write(iteration=0, elapsed_s=0.0, **self._metric(self.current_value, scalar))
            for iteration in range(iterations):
                if abort_signal.triggered:
                    break
                values = self._exchange_values(fl_ctx, value=self.current_value, iteration=iteration)
                new_value = self.current_value * weight
                for neighbor in self.neighbors:
                    new_value = new_value + values[neighbor.id] * neighbor.weight
                self.current_value = new_value
                self.value_history.append(new_value)
                writer.write(
                    iteration=iteration + 1,
                    elapsed_s=round(time.monotonic() - start, 6),
                    **self._metric(new_value, scalar),
                )
                if (iteration + 1) % every == 0 or iteration + 1 == iterations:
                    self.log_info(fl_ctx, f"iteration {iteration + 1}/{iterations}: value {self._show(new_value)}")
        finally:
            writer.close()

    @staticmethod
    def _metric(value: Any, scalar: bool) -> dict:
        if scalar:
            return {"value": float(value)}
        return {"value_norm": float(np.linalg.norm(np.asarray(_to_numpy(value), dtype=np.float64)))}

    @staticmethod
    def _show(value: Any) -> str:
        return f"{float(value):.9g}" if _is_scalar(value) else f"array of shape {tuple(value.shape)}"

    def _post_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Save the history as ``value_sequence.pt`` in the site's folder (written without importing torch)."""
        history = np.stack([np.asarray(_to_numpy(v), dtype=np.float64) for v in self.value_history])
        path = os.path.join(self._site_dir(fl_ctx), VALUE_SEQUENCE_FILE)
        save_float64_tensor(history, path)
        self.log_info(fl_ctx, f"saved {len(history)} values to {path}")


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value
