"""The Client API's configuration: exchange formats, transfer types, config keys and ``ClientConfig``."""

from __future__ import annotations

import copy
import json
from enum import Enum
from typing import Any


class ExchangeFormat(str, Enum):
    """How model params are represented: as the trainer holds them, or as the server expects them."""

    RAW = "raw"
    PYTORCH = "pytorch"
    NUMPY = "numpy"
    KERAS_LAYER_WEIGHTS = "keras_layer_weights"


class TransferType(str, Enum):
    """Whether the trainer sends full params or their difference against the received ones."""

    FULL = "FULL"
    DIFF = "DIFF"


class ConfigKey:
    """Keys of the Client API config (``{"site_name", "job_id", "TASK_NAME", "TASK_EXCHANGE": {...}}``)."""

    EXCHANGE_FORMAT = "exchange_format"
    SERVER_EXPECTED_FORMAT = "server_expected_format"
    TRANSFER_TYPE = "transfer_type"
    TRAIN_WITH_EVAL = "train_with_eval"
    TRAIN_TASK_NAME = "train_task_name"
    EVAL_TASK_NAME = "eval_task_name"
    SUBMIT_MODEL_TASK_NAME = "submit_model_task_name"
    TASK_NAME = "TASK_NAME"
    TASK_EXCHANGE = "TASK_EXCHANGE"
    MEMORY_GC_ROUNDS = "memory_gc_rounds"
    CUDA_EMPTY_CACHE = "cuda_empty_cache"
    LAUNCH_ONCE = "launch_once"


class ClientConfig:
    """A Client API config dict with typed getters (defaults as NVFlare's)."""

    def __init__(self, config: dict | None = None) -> None:
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"ClientConfig expects a dict or None, got {type(config).__name__}")
        self.config: dict = config if config is not None else {}

    def get_config(self) -> dict:
        """Return the config dict itself."""
        return self.config

    def _exchange(self, key: str, default: Any) -> Any:
        section = self.config.get(ConfigKey.TASK_EXCHANGE) or {}
        return section.get(key, default)

    def get_exchange_format(self) -> str:
        """The trainer-side params format (default ``""``: none declared)."""
        return self._exchange(ConfigKey.EXCHANGE_FORMAT, "")

    def get_server_expected_format(self) -> str:
        """The server-side params format (default ``ExchangeFormat.NUMPY``)."""
        return self._exchange(ConfigKey.SERVER_EXPECTED_FORMAT, ExchangeFormat.NUMPY)

    def get_transfer_type(self) -> str:
        """``"FULL"`` (default) or ``"DIFF"``."""
        return self._exchange(ConfigKey.TRANSFER_TYPE, "FULL")

    def get_train_task(self) -> str:
        """The name of the training task (default ``""``)."""
        return self._exchange(ConfigKey.TRAIN_TASK_NAME, "")

    def get_eval_task(self) -> str:
        """The name of the evaluation task (default ``""``)."""
        return self._exchange(ConfigKey.EVAL_TASK_NAME, "")

    def get_submit_model_task(self) -> str:
        """The name of the submit-model task (default ``""``)."""
        return self._exchange(ConfigKey.SUBMIT_MODEL_TASK_NAME, "")

    def get_train_with_eval(self) -> bool:
        """Whether the training task also evaluates (default False)."""
        return bool(self._exchange(ConfigKey.TRAIN_WITH_EVAL, False))

    def get_memory_gc_rounds(self) -> int:
        """Run ``gc.collect()`` after every N-th ``send`` (0, the default: never)."""
        return int(self._exchange(ConfigKey.MEMORY_GC_ROUNDS, 0) or 0)

    def get_cuda_empty_cache(self) -> bool:
        """Also empty torch's CUDA cache when collecting garbage (default False)."""
        return bool(self._exchange(ConfigKey.CUDA_EMPTY_CACHE, False))

    def to_dict(self) -> dict:
        """Return a deep copy of the config."""
        return copy.deepcopy(self.config)

    def to_json(self, config_file: str) -> None:
        """Write the config to ``config_file`` as JSON (enum values as their strings)."""
        with open(config_file, "w", encoding="utf-8") as f:
            json.dump(self.config, f, indent=2, default=lambda v: v.value if isinstance(v, Enum) else str(v))


def from_json(config_file: str) -> ClientConfig:
    """Read a ClientConfig from a JSON file.

    Raises:
        ValueError: the file does not hold a JSON object.
    """
    with open(config_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{config_file}: expected a JSON object, got {type(data).__name__}")
    return ClientConfig(data)
