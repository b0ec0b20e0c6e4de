"""PyTorch pieces: the file model persistor and locator, job helpers (``job_config``) and recipes (``recipes``).

``PTFileModelPersistor`` and ``PTFileModelLocator`` are exported here, as in NVFlare; they import torch when
first used, so importing ``flarelite.app_opt.pt.job_config`` or ``.recipes`` loads torch only where needed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PTFileModelLocator", "PTFileModelPersistor"]


def __getattr__(name: str) -> Any:
    if name == "PTFileModelPersistor":
        from .file_model_persistor import PTFileModelPersistor

        return PTFileModelPersistor
    if name == "PTFileModelLocator":
        from .file_model_locator import PTFileModelLocator

        return PTFileModelLocator
    raise AttributeError(f"module 'flarelite.app_opt.pt' has no attribute {name!r}")
