"""Small helpers for the torch-based algorithms (torch is imported only when they are called)."""

from __future__ import annotations

from typing import Any

__all__ = ["get_device"]


def get_device() -> Any:
    """Return ``torch.device("cuda")`` when a GPU is available, else ``mps`` on Apple silicon, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
