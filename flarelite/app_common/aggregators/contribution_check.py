"""What the server checks in a client's contribution before it is averaged into the global model.

A contribution arrives from another process, so nothing in it is trusted:

- its weight, meta ``NUM_STEPS_CURRENT_ROUND``, counts only as a finite number > 0 (else 1.0);
- every value must be a number, a numeric numpy array or a torch tensor, with no NaN or infinity (one
  non-finite value would turn the whole global model into NaN);
- where the global model has the key, the shape must be the global model's (numpy would otherwise broadcast a
  ``(5, 3, 3)`` contribution into a ``(3, 3)`` model and change the model's shape, or make the honest
  contributions of the round fail instead of the odd one);
- keys the global model does not have are dropped (a client cannot add weights to the global model).

NVFlare 2.9.0 does none of this: it averages whatever arrives. For well-formed contributions the result is the
same.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ...apis.fl_constant import FLMetaKey

_NUMERIC_KINDS = "biufc"  # numpy dtype kinds: bool, int, uint, float, complex


def num_steps_weight(meta: dict | None) -> float:
    """Return meta ``NUM_STEPS_CURRENT_ROUND`` as a float when it is a finite number > 0, else 1.0."""
    value = (meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
    if isinstance(value, bool) or value is None:
        return 1.0
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 1.0
    return value if math.isfinite(value) and value > 0 else 1.0


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "is_floating_point")


def _shape(value: Any) -> tuple | None:
    """The shape of an array, tensor or number (``()``); None for anything else."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return tuple(shape)
    if isinstance(value, (int, float, complex)):
        return ()
    if isinstance(value, (list, tuple)):  # a global model given as nested lists (FedAvg(model={...}))
        import numpy as np

        try:
            return tuple(np.shape(value))
        except ValueError:
            return None
    return None


def _value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be averaged (None when it can)."""
    if callable(getattr(value, "materialize", None)):
        return None  # a lazy reference: the aggregation helper materializes it
    if isinstance(value, int):  # bool too
        return None
    if isinstance(value, (float, complex)):
        return None if math.isfinite(abs(value)) else "is not a finite number"
    if _is_torch_tensor(value):
        if value.is_floating_point() or value.is_complex():
            import torch

            if not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all()):
                return "holds NaN or infinite values"
        return None
    dtype = getattr(value, "dtype", None)
    kind = getattr(dtype, "kind", None)
    if kind is None or not hasattr(value, "shape"):
        return f"is a {type(value).__name__}, not a number, a numpy array or a tensor"
    if kind not in _NUMERIC_KINDS:
        return f"is an array of {dtype}, not of numbers"
    if kind in "fc":
        import numpy as np

        with np.errstate(all="ignore"):  # a finite sum means every element is finite; else look closer
            if not np.isfinite(value.sum()) and not np.isfinite(value).all():
                return "holds NaN or infinite values"
    return None


def _names(keys: list) -> str:
    shown = ", ".join(repr(k) for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def check_contribution(
    data: Any, reference: Any = None, exclude_vars: str | re.Pattern | None = None
) -> tuple[dict | None, str]:
    """Check a contribution's params against the global model's (``reference``; None or empty: no model yet).

    Returns:
        ``(params to aggregate, note)``: the params without the keys the global model lacks, and a note naming
        what was dropped (``""`` if nothing); or ``(None, reason)`` when the contribution must be rejected.
        Keys matching ``exclude_vars`` are not checked (the aggregation skips them).
    """
    if not isinstance(data, dict):
        return None, f"its params are a {type(data).__name__}, not a dict of named weights"
    pattern = re.compile(exclude_vars) if isinstance(exclude_vars, str) and exclude_vars else exclude_vars or None
    ref = reference if isinstance(reference, dict) and reference else None
    unknown = [k for k in data if k not in ref] if ref is not None else []
    params = {k: v for k, v in data.items() if k in ref} if unknown else data
    for key, value in params.items():
        if pattern is not None and pattern.search(str(key)):
            continue
        problem = _value_problem(value)
        if problem:
            return None, f"{key!r} {problem}"
        if ref is not None:
            expected = _shape(ref[key])
            got = _shape(value)
            if expected is not None and got != expected:
                return None, f"{key!r} has shape {got}, the global model's has shape {expected}"
    note = f"dropped {len(unknown)} key(s) the global model does not have: {_names(unknown)}" if unknown else ""
    return params, note
