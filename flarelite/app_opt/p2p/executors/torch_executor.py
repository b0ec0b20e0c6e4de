"""TorchSyncAlgorithmExecutor: the shared part of DGD, gradient tracking and GTAdam on torch models."""

from __future__ import annotations

import os
import time
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal

from ..utils.metrics import MetricsWriter, compute_loss_over_dataset
from ..utils.utils import get_device
from .base_dist_opt_executor import AlgorithmStopped
from .sync_executor import SyncAlgorithmExecutor

if TYPE_CHECKING:
    import torch

METRICS_FILE = "metrics.csv"
TRAIN_LOSS_FILE = "train_loss_sequence.pt"
TEST_LOSS_FILE = "test_loss_sequence.pt"
MODEL_FILE = "model.pt"


class TorchSyncAlgorithmExecutor(SyncAlgorithmExecutor):
    """A synchronous algorithm that trains a torch model on local data; subclasses implement ``_step``.

    Subclasses build the model, the loss and the data loaders in their ``__init__`` (they cannot travel in
    a job config) and pass them on. ``extra["iterations"]`` and ``extra["stepsize"]`` come from the
    controller. Each iteration takes the next batch of ``train_dataloader`` (starting over after each
    epoch); the algorithm's step (``_step``) returns the batch's loss.

    History, in the site's folder: ``metrics.csv`` (one row per iteration: ``iteration``, ``elapsed_s``,
    ``loss`` on the batch, and at each epoch's start ``train_loss`` / ``test_loss`` over the whole local
    datasets), and at the end ``train_loss_sequence.pt`` / ``test_loss_sequence.pt`` (rows of
    ``(elapsed seconds, loss)``, as NVFlare's) and the final parameters in ``model.pt`` (a state dict).
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
        super().__init__(sync_timeout=sync_timeout)
        self.device = get_device()
        self.model = model.to(self.device) if model is not None else None
        self.loss = loss.to(self.device) if loss is not None and hasattr(loss, "to") else loss
        self.train_dataloader = train_dataloader
        self.test_dataloader = test_dataloader
        self.val_dataloader = val_dataloader
        self.train_loss_sequence: list[tuple[float, float]] = []
        self.test_loss_sequence: list[tuple[float, float]] = []
        self._iterations = 0
        self._stepsize = 0.0
        self._start = 0.0
        self._writer: MetricsWriter | None = None

    # parameters --------------------------------------------------------------------------------------
    def _trainable(self) -> list[torch.Tensor]:
        assert self.model is not None
        return [p for p in self.model.parameters() if p.requires_grad]

    def _mix(self, tensors: list[torch.Tensor], neighbor_tensors: dict[Any, list[torch.Tensor]]) -> None:
        """In place: ``t <- w_self * t + sum_j w_j * t_j`` for each tensor and the neighbours' tensors."""
        weight = self._require_weights()
        for idx, tensor in enumerate(tensors):
            tensor.mul_(weight)
            for neighbor in self.neighbors:
                tensor.add_(neighbor_tensors[neighbor.id][idx].to(tensor.device), alpha=float(neighbor.weight or 0.0))

    @staticmethod
    def _send_form(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.detach().cpu() for t in tensors]

    def _gradient(self, data: torch.Tensor, label: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        """Return the batch's loss and the gradient of each trainable parameter (zeros where none)."""
        assert self.model is not None and self.loss is not None
        self.model.zero_grad()
        value = self.loss(self.model(data), label)
        value.backward()
        import torch

        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self._trainable()]
        return float(value.item()), grads

    # the run -----------------------------------------------------------------------------------------
    def _pre_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Read ``iterations`` and ``stepsize``, check the model and data, open the metrics file."""
        if self.model is None or self.loss is None or self.train_dataloader is None:
            raise AlgorithmStopped(
                f"{type(self).__name__} needs a model, a loss and a train_dataloader: pass them to "
                "super().__init__() in your subclass's __init__"
            )
        self._iterations = int(self._extra(shareable, "iterations"))
        self._stepsize = float(self._extra(shareable, "stepsize"))
        self._require_weights()
        columns = ["iteration", "elapsed_s", "loss", "train_loss"]
        if self.test_dataloader is not None:
            columns.append("test_loss")
        self._writer = MetricsWriter(os.path.join(self._site_dir(fl_ctx), METRICS_FILE), columns)
        self._start = time.monotonic()

    def _epoch_metrics(self) -> dict:
        elapsed = time.monotonic() - self._start
        row: dict[str, Any] = {}
        train = compute_loss_over_dataset(self.model, self.loss, self.train_dataloader, self.device)
        self.train_loss_sequence.append((elapsed, train))
        row["train_loss"] = train
        if self.test_dataloader is not None:
            test = compute_loss_over_dataset(self.model, self.loss, self.test_dataloader, self.device)
            self.test_loss_sequence.append((elapsed, test))
            row["test_loss"] = test
        return row

    def run_algorithm(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Run ``iterations`` steps of ``_step`` on successive batches."""
        assert self._writer is not None
        batches = iter(self.train_dataloader)
        epoch_row = self._epoch_metrics()
        every = max(1, self._iterations // 10)
        try:
            for iteration in range(self._iterations):
                if abort_signal.triggered:
                    break
                try:
                    data, label = next(batches)
                except StopIteration:
                    epoch_row = self._epoch_metrics()
                    batches = iter(self.train_dataloader)
                    data, label = next(batches)
                data, label = data.to(self.device), label.to(self.device)
                loss = self._step(fl_ctx, data, label, iteration)
                self._writer.write(
                    iteration=iteration, elapsed_s=round(time.monotonic() - self._start, 6), loss=loss, **epoch_row
                )
                epoch_row = {}
                if (iteration + 1) % every == 0 or iteration + 1 == self._iterations:
                    self.log_info(fl_ctx, f"iteration {iteration + 1}/{self._iterations}: loss {loss:.6g}")
        finally:
            self._writer.close()

    @abstractmethod
    def _step(self, fl_ctx: FLContext, data: torch.Tensor, label: torch.Tensor, iteration: int) -> float:
        """Run one iteration of the algorithm on a batch (exchanging with the neighbours); return the batch loss."""

    def _post_algorithm_run(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> None:
        """Record the final losses and save the loss sequences and the model in the site's folder."""
        import torch

        assert self.model is not None
        self._epoch_metrics()
        folder = self._site_dir(fl_ctx)
        torch.save(torch.tensor(self.train_loss_sequence, dtype=torch.float64), os.path.join(folder, TRAIN_LOSS_FILE))
        if self.test_loss_sequence:
            torch.save(torch.tensor(self.test_loss_sequence, dtype=torch.float64), os.path.join(folder, TEST_LOSS_FILE))
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, os.path.join(folder, MODEL_FILE))
        final = self.train_loss_sequence[-1][1]
        self.log_info(fl_ctx, f"final local train loss {final:.6g}; history saved in {folder}")
