"""Params representation conversion at ``receive``/``send``: the trainer's format <-> the server's (NUMPY<->PYTORCH).

Identical formats, or RAW on either side, need no conversion. PYTORCH->NUMPY turns each tensor into
``detach().cpu().numpy()`` and keeps non-tensor entries aside (with a warning); NUMPY->PYTORCH makes each array a
tensor with ``torch.as_tensor`` (sharing its memory), reshaped to the shape the trainer last sent under that key,
and puts the kept-aside entries back. torch is imported only when a PYTORCH conversion runs.

flarelite difference: NUMPY<->KERAS_LAYER_WEIGHTS is refused when the executor is built (flarelite has no
TensorFlow support); NVFlare 2.9.0 converts it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .config import ExchangeFormat

_log = logging.getLogger("flarelite.client")
_CONVERTED = {(ExchangeFormat.PYTORCH, ExchangeFormat.NUMPY), (ExchangeFormat.NUMPY, ExchangeFormat.PYTORCH)}
_REFUSED = {
    (ExchangeFormat.KERAS_LAYER_WEIGHTS, ExchangeFormat.NUMPY),
    (ExchangeFormat.NUMPY, ExchangeFormat.KERAS_LAYER_WEIGHTS),
}


def as_format(value: Any, what: str) -> ExchangeFormat:
    """Return ``value`` (an ExchangeFormat or its string) as an ExchangeFormat.

    Raises:
        ValueError: not one of the formats.
    """
    try:
        return ExchangeFormat(value)
    except ValueError:
        names = ", ".join(repr(f.value) for f in ExchangeFormat)
        raise ValueError(f"{what} must be an ExchangeFormat ({names}), got {value!r}") from None


def check_format_pair(exchange_format: Any, server_format: Any) -> tuple[ExchangeFormat, ExchangeFormat]:
    """Return the pair as ExchangeFormats if it can be converted (or needs no conversion).

    Raises:
        ValueError: an unknown format, or an unsupported conversion.
    """
    trainer = as_format(exchange_format, "params_exchange_format")
    server = as_format(server_format, "server_expected_format")
    if trainer == server or ExchangeFormat.RAW in (trainer, server) or (trainer, server) in _CONVERTED:
        return trainer, server
    if (trainer, server) in _REFUSED:
        raise ValueError(
            f"unsupported parameter format conversion from {trainer.value!r} to {server.value!r}: flarelite does not "
            "support TensorFlow/Keras layer weights; use 'numpy' or 'raw' and convert in the training script"
        )
    raise ValueError(
        f"unsupported parameter format conversion from {trainer.value!r} to {server.value!r}: supported are "
        "numpy<->pytorch, identical formats, and 'raw' on either side"
    )


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError("the 'pytorch' params exchange format needs torch; pip install torch") from exc
    return torch


class FormatConverter:
    """Converts params between the trainer's format and the server's, remembering shapes and non-tensor entries."""

    def __init__(self, exchange_format: Any, server_format: Any) -> None:
        self.trainer_format, self.server_format = check_format_pair(exchange_format, server_format)
        self._shapes: dict[Any, tuple[int, ...]] = {}
        self._aside: dict[Any, Any] = {}
        self._warned = False

    @property
    def active(self) -> bool:
        """Whether any conversion happens."""
        return (self.trainer_format, self.server_format) in _CONVERTED

    def to_trainer(self, params: Any) -> Any:
        """Convert received params (server format) to the trainer's format."""
        if params is None or not self.active:
            return params
        if self.trainer_format == ExchangeFormat.PYTORCH:
            return self._numpy_to_torch(params)
        return self._torch_to_numpy(params)

    def to_server(self, params: Any) -> Any:
        """Convert params about to be sent (trainer format) to the server's format."""
        if params is None or not self.active:
            return params
        if self.trainer_format == ExchangeFormat.PYTORCH:
            return self._torch_to_numpy(params)
        return self._numpy_to_torch(params)

    @staticmethod
    def _require_dict(params: Any) -> dict:
        if not isinstance(params, dict):
            raise TypeError(f"PyTorch params conversion needs a dict of params, got {type(params).__name__}")
        return params

    def _torch_to_numpy(self, params: Any) -> dict:
        torch = _torch()
        out = {}
        aside = {}
        for key, value in self._require_dict(params).items():
            if isinstance(value, torch.Tensor):
                self._shapes[key] = tuple(value.shape)
                out[key] = value.detach().cpu().numpy()
            else:
                aside[key] = value
        if aside:
            if not self._warned:
                _log.warning(
                    "params entries %s are not tensors: they stay with the trainer and come back at the next receive",
                    sorted(map(str, aside)),
                )
                self._warned = True
            self._aside = aside
        return out

    def _numpy_to_torch(self, params: Any) -> dict:
        torch = _torch()
        out = {}
        for key, value in self._require_dict(params).items():
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            shape = self._shapes.get(key)
            if shape is not None and tuple(tensor.shape) != shape and tensor.numel() == math.prod(shape):
                tensor = tensor.reshape(shape)
            out[key] = tensor
        for key, value in self._aside.items():
            out.setdefault(key, value)
        return out


def numerical_params_diff(original: dict, new: dict) -> dict:
    """Return ``new - original`` per key present in both (keys missing on either side are skipped).

    Raises:
        RuntimeError: the two have no key in common.
    """
    if not isinstance(original, dict) or not isinstance(new, dict):
        raise RuntimeError(
            f"DIFF transfer needs dict params on both sides, got {type(original).__name__} and {type(new).__name__}"
        )
    diff = {k: new[k] - original[k] for k in new if k in original}
    if not diff:
        raise RuntimeError("DIFF transfer: the sent params have no key in common with the received ones")
    return diff
