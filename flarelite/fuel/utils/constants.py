"""Constants of fuel: ``FrameworkType``, the training framework a ScriptRunner script uses."""

from __future__ import annotations

from enum import Enum


class FrameworkType(str, Enum):
    """The framework of a training script; it decides the params exchange format (see ScriptRunner)."""

    RAW = "raw"
    NUMPY = "numpy"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
