"""GTADAMExecutor: gradient tracking whose local step is an Adam step along the tracker (GTAdam)."""

from __future__ import annotations

from typing import Any

from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal

from .gradient_tracking import GTExecutor


class GTADAMExecutor(GTExecutor):
    """GTAdam: as GTExecutor, but ``x`` moves by ``m / sqrt(v + epsilon)`` with Adam's moments of the tracker.

    ``extra`` may set ``beta1`` (0.9), ``beta2`` (0.999) and ``epsilon`` (1e-8) besides ``iterations`` and
    ``stepsize``; ``v`` is capped at ``G = 1e6``. Subclasses build the model, loss and data loaders in
    ``__init__``.
    """

    def _pre_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        import torch

        super()._pre_algorithm_run(fl_ctx, shareable, abort_signal)
        self.beta1 = float(self._extra(shareable, "beta1", 0.9, required=False))
        self.beta2 = float(self._extra(shareable, "beta2", 0.999, required=False))
        self.epsilon = float(self._extra(shareable, "epsilon", 1e-8, required=False))
        self.G: Any = torch.tensor(1e6, device=self.device)
        self.m = [torch.zeros_like(p) for p in self._trainable()]
        self.v = [torch.zeros_like(p) for p in self._trainable()]

    def _update_local_state(self, stepsize: float) -> None:
        import torch

        for i, (param, tracker) in enumerate(zip(self._trainable(), self.tracker)):
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * tracker
            self.v[i] = torch.minimum(self.beta2 * self.v[i] + (1 - self.beta2) * tracker**2, self.G.to(tracker.dtype))
            param.add_(self.m[i] / torch.sqrt(self.v[i] + self.epsilon), alpha=-stepsize)
