"""Metrics: a model's loss over a dataset, and the per-iteration CSV file each site writes."""

from __future__ import annotations

import csv
import os
from typing import IO, Any

__all__ = ["compute_loss_over_dataset", "MetricsWriter"]


def compute_loss_over_dataset(model: Any = None, loss: Any = None, dataloader: Any = None, device: Any = None) -> float:
    """Return the average of ``loss(model(x), y)`` over ``dataloader``'s dataset (weighted by batch size).

    Raises:
        ValueError: ``model``, ``loss`` or ``dataloader`` is missing.
    """
    if model is None or loss is None or dataloader is None:
        raise ValueError("compute_loss_over_dataset needs a model, a loss and a dataloader")
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in dataloader:
                if device is not None:
                    x, y = x.to(device), y.to(device)
                total += float(loss(model(x), y).item()) * len(x)
                count += len(x)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("compute_loss_over_dataset: the dataloader yielded no samples")
    return total / count


class MetricsWriter:
    """Appends rows to a CSV file (header first), flushing each row so the file can be read while it grows."""

    def __init__(self, path: str, fieldnames: list[str]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.fieldnames = list(fieldnames)
        self._file: IO[str] | None = open(path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self.fieldnames, extrasaction="raise")
        self._writer.writeheader()
        self._file.flush()

    def write(self, **row: Any) -> None:
        """Write one row; columns not given stay empty."""
        if self._file is None:
            raise ValueError(f"metrics file {self.path} is closed")
        self._writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        """Close the file (a second close does nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None
