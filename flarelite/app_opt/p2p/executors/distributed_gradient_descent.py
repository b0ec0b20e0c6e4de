"""DGDExecutor: distributed (stochastic) gradient descent: mix the parameters with the neighbours', then descend."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from flarelite.apis.fl_context import FLContext

from .torch_executor import TorchSyncAlgorithmExecutor

if TYPE_CHECKING:
    import torch


class DGDExecutor(TorchSyncAlgorithmExecutor):
    """Distributed gradient descent: ``x <- W-mix(x) - stepsize * grad f_local(W-mix(x))`` each iteration.

    With a constant stepsize the sites reach a neighbourhood of the optimum of the sum of the local losses
    (gradient tracking, ``GTExecutor``, removes that bias). Subclasses build the model, loss and data
    loaders in ``__init__``; see TorchSyncAlgorithmExecutor for the parameters and the files each site writes.
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

    def _step(self, fl_ctx: FLContext, data: torch.Tensor, label: torch.Tensor, iteration: int) -> float:
        import torch

        params = self._trainable()
        with torch.no_grad():
            values = self._exchange_values(fl_ctx, value=params, iteration=iteration)
            self._mix(params, values)
        loss, grads = self._gradient(data, label)
        with torch.no_grad():
            for param, grad in zip(params, grads):
                param.add_(grad, alpha=-self._stepsize)
        return loss

    def _to_message(self, x: Any) -> Any:
        return self._send_form(list(x))
