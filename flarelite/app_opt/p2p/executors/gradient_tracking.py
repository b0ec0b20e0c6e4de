"""GTExecutor: gradient tracking: each site also mixes a tracker of the network's average gradient."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal

from .torch_executor import TorchSyncAlgorithmExecutor

if TYPE_CHECKING:
    import torch


class GTExecutor(TorchSyncAlgorithmExecutor):
    """Gradient tracking: parameters ``x`` and a tracker ``y`` of the average gradient, both mixed each iteration.

    ``x <- W-mix(x) - stepsize * y`` then ``y <- W-mix(y) + grad f_local(x_new) - grad f_local(x_old)``.
    With doubly stochastic weights and a small enough constant stepsize all sites converge to the minimiser
    of the average of the local losses (with full-batch loaders, exactly). Subclasses build the model, loss
    and data loaders in ``__init__``; see TorchSyncAlgorithmExecutor for the parameters and the files written.
    """

    @abstractmethod
    def __init__(
        self,
        model: torch.nn.Module | None = None,
        loss: torch.nn.Module | None = None,
        train_dataloader: Any = None,
        test_dataloader: Any = None,
        val_dataloader: Any = None,
        sync_timeout: float = 10,
    ) -> None:
        super().__init__(model, loss, train_dataloader, test_dataloader, val_dataloader, sync_timeout)
        self.tracker: list[torch.Tensor] = []
        self.old_gradient: list[torch.Tensor] = []

    def _pre_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        import torch

        super()._pre_algorithm_run(fl_ctx, shareable, abort_signal)
        self.tracker = [torch.zeros_like(p) for p in self._trainable()]
        self.old_gradient = [torch.zeros_like(p) for p in self._trainable()]

    def _step(self, fl_ctx: FLContext, data: torch.Tensor, label: torch.Tensor, iteration: int) -> float:
        import torch

        params = self._trainable()
        with torch.no_grad():
            values = self._exchange_values(
                fl_ctx, value={"parameters": params, "tracker": self.tracker}, iteration=iteration
            )
            self._mix(params, {k: v["parameters"] for k, v in values.items()})
            self._update_local_state(self._stepsize)
            self._mix(self.tracker, {k: v["tracker"] for k, v in values.items()})
        loss, gradient = self._gradient(data, label)
        with torch.no_grad():
            for tracker, new, old in zip(self.tracker, gradient, self.old_gradient):
                tracker.add_(new).sub_(old)
        self.old_gradient = gradient
        return loss

    def _update_local_state(self, stepsize: float) -> None:
        """Descend along the tracker: ``x <- x - stepsize * y`` (GTADAMExecutor replaces this)."""
        for param, tracker in zip(self._trainable(), self.tracker):
            param.add_(tracker, alpha=-stepsize)

    def _to_message(self, x: Any) -> Any:
        return {"parameters": self._send_form(list(x["parameters"])), "tracker": self._send_form(list(x["tracker"]))}
