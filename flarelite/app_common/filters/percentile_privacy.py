"""PercentilePrivacy: share only the largest weight changes, clipped (Shokri and Shmatikov, CCS '15)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...apis.dxo import DXO, DataKind, MetaKey
from ...apis.dxo_filter import DXOFilter
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable


def numeric_array(filter_name: str, key: str, value: Any) -> np.ndarray:
    """Return ``value`` (a numpy array or a number) as a numpy array; raise TypeError for anything else."""
    if isinstance(value, np.ndarray) and (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        return value
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return np.asarray(value)
    raise TypeError(
        f"{filter_name} works on numpy arrays: variable {key!r} is {type(value).__module__}.{type(value).__name__}; "
        "send numpy params (e.g. tensor.cpu().numpy()) or put a converting filter before it"
    )


def num_steps(dxo: DXO) -> float:
    """The DXO's ``NUM_STEPS_CURRENT_ROUND`` meta (default 1)."""
    return dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)


class PercentilePrivacy(DXOFilter):
    """Zero the weight changes below a percentile of their magnitudes and clip the rest to ``[-gamma, gamma]``.

    For each variable: divide by meta ``NUM_STEPS_CURRENT_ROUND`` (default 1); take as cutoff the
    ``percentile``-th percentile of the absolute values of all variables; set values with ``|x| < cutoff`` to
    0; clip the others to ``[-gamma, gamma]``; multiply back by the step count. Scalars pass through.

    Parameters:
        percentile: 0..100; a value outside that range leaves the data unchanged.
        gamma: the clipping bound; ``gamma <= 0`` leaves the data unchanged.
        data_kinds: the kinds to filter (default ``[WEIGHT_DIFF, WEIGHTS]``).
    """

    def __init__(self, percentile: float = 10, gamma: float = 0.01, data_kinds: list[str] | None = None) -> None:
        if not data_kinds:
            data_kinds = [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS]
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF], data_kinds_to_filter=data_kinds)
        self.percentile = percentile
        self.gamma = gamma

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Return ``dxo`` with its values truncated and clipped (None when the parameters say no change).

        Raises:
            TypeError: a variable is not a numpy array or a number.
        """
        if self.gamma <= 0:
            self.log_debug(fl_ctx, f"no change: gamma is {self.gamma}")
            return None
        if self.percentile < 0 or self.percentile > 100:
            self.log_debug(fl_ctx, f"no change: percentile {self.percentile} is outside 0..100")
            return None
        name = type(self).__name__
        steps = num_steps(dxo)
        arrays = {k: numeric_array(name, k, v) for k, v in dxo.data.items()}
        delta_w = {k: a / steps for k, a in arrays.items()}
        all_abs = np.concatenate([np.abs(d).ravel() for d in delta_w.values()])
        if all_abs.size == 0:
            return None
        cutoff = np.percentile(all_abs, q=self.percentile)
        self.log_info(
            fl_ctx,
            f"max abs delta_w: {np.max(all_abs)}, min abs delta_w: {np.min(all_abs)}, cutoff: {cutoff}, scale: {steps}",
        )
        out: dict[str, Any] = {}
        for k, d in delta_w.items():
            if np.ndim(d) == 0:  # a scalar: not truncated
                out[k] = dxo.data[k]
                continue
            d = np.where(np.abs(d) < cutoff, 0.0, d).astype(d.dtype, copy=False)
            out[k] = np.clip(d, -self.gamma, self.gamma) * steps
        dxo.data = out
        return dxo
