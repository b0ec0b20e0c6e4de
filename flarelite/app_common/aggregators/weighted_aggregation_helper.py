"""WeightedAggregationHelper: a thread-safe running weighted average, per key, of numpy arrays, tensors or numbers.

torch is never imported here: tensors are recognised by their methods, so the module works without torch.
A contribution is staged completely (lazy values materialized, every value weighted) before any total
changes, so a value that fails leaves the running average as it was.
"""

from __future__ import annotations

import re
import threading
from typing import Any


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "add_") and hasattr(value, "clone")


def _fresh_copy(value: Any) -> Any:
    """A copy of ``value`` that accumulation may change in place (never the contributor's own object)."""
    if _is_torch_tensor(value):
        return value.detach().clone()
    copy = getattr(value, "copy", None)
    if callable(copy) and hasattr(value, "dtype"):
        return copy()
    return value


def _weighted_copy(value: Any, weight: Any) -> Any:
    """``value * weight``: a new object that accumulation may change in place.

    A large float array is weighted on every core into pooled memory (``flarelite.buffers``): the first
    contribution of every round would otherwise fault in a model's worth of fresh pages.
    """
    import numpy as np

    if (
        type(value) is not np.ndarray
        or type(weight) not in (int, float)
        or value.dtype.kind != "f"
        or not value.dtype.isnative
        or not value.flags.c_contiguous
        or value.size < _PARALLEL_MIN
    ):
        return value * weight
    from ...buffers import POOL

    out = POOL.take(value.nbytes).view(value.dtype).reshape(value.shape)
    _on_every_core(out.reshape(-1), value.reshape(-1), lambda o, v, here: np.multiply(v, weight, out=o))
    return out


def _on_every_core(flat_out: Any, flat_value: Any, work: Any) -> None:
    """``work(out_part, value_part, here)`` over the parts of two flat arrays: the first part on this thread
    (``here`` True), the others on the shared pool's threads (numpy leaves the GIL while it computes); one part
    for arrays under ``_PARALLEL_MIN`` elements or without a pool."""
    pool, parts = _pool(flat_out.size)
    bounds = [flat_out.size * i // parts for i in range(parts + 1)]
    futures = [pool.submit(work, flat_out[a:b], flat_value[a:b], False) for a, b in zip(bounds[1:-1], bounds[2:])]
    work(flat_out[: bounds[1]], flat_value[: bounds[1]], True)
    for future in futures:
        future.result()


_CHUNK = 1 << 16  # elements weighted at a time (256 KiB of float32: stays in the cache)


def _fused_add(total: Any, value: Any, weight: float, scratch: dict, key: str) -> bool:
    """Add ``value * weight`` into ``total`` without a temporary the size of the model; False if it cannot."""
    if _is_torch_tensor(total):
        if _is_torch_tensor(value) and total.is_floating_point() and total.shape == value.shape:
            total.add_(value, alpha=weight)
            return True
        return False
    dtype = getattr(total, "dtype", None)
    if getattr(dtype, "kind", None) != "f" or not getattr(getattr(total, "flags", None), "writeable", False):
        return False
    import numpy as np

    if not isinstance(value, np.ndarray) or value.shape != total.shape or value.dtype != total.dtype:
        return False
    if weight == 1:
        np.add(total, value, out=total)
        return True
    if not (total.flags.c_contiguous and value.flags.c_contiguous):
        np.add(total, value * weight, out=total)
        return True
    _on_every_core(
        total.reshape(-1), value.reshape(-1), lambda t, v, here: _weigh_into(t, v, weight, scratch if here else {})
    )
    return True


_PARALLEL_MIN = 1 << 21  # elements (8 MB of float32): below, one thread weighs the whole array
_pool_lock = threading.Lock()
_pool_state: list = []  # [ThreadPoolExecutor, workers], made on first use


def _pool(size: int) -> tuple[Any, int]:
    """The shared pool and how many parts to cut an array of ``size`` elements into ((None, 1): do it here)."""
    if size < _PARALLEL_MIN:
        return None, 1
    with _pool_lock:
        if not _pool_state:
            import concurrent.futures
            import os

            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = max(0, min(cores, 8) - 1)
            pool = (
                concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="flarelite-aggregate")
                if workers
                else None
            )
            _pool_state.extend([pool, workers + 1])
    pool, parts = _pool_state
    return (pool, parts) if pool is not None else (None, 1)


def _weigh_into(flat_total: Any, flat_value: Any, weight: float, scratch: dict) -> None:
    """``flat_total += flat_value * weight``, a cache-sized chunk at a time: one pass over memory, not three."""
    import numpy as np

    step = min(flat_total.size, _CHUNK)
    if step == 0:
        return
    buf = scratch.get(flat_total.dtype.str)
    if buf is None or buf.size < step:
        buf = scratch[flat_total.dtype.str] = np.empty(step, dtype=flat_total.dtype)
    for start in range(0, flat_total.size, step):
        part = flat_total[start : start + step]
        scaled = buf[: part.size]
        np.multiply(flat_value[start : start + step], weight, out=scaled)
        np.add(part, scaled, out=part)


def _accumulate(total: Any, value: Any) -> Any:
    """Return ``total + value``, added in place for float tensors and writable float arrays."""
    if _is_torch_tensor(total) and total.is_floating_point():
        total.add_(value)
        return total
    dtype = getattr(total, "dtype", None)
    kind = getattr(dtype, "kind", None)
    if kind in ("f", "c") and getattr(getattr(total, "flags", None), "writeable", False) and hasattr(total, "shape"):
        import numpy as np

        if np.shape(value) == total.shape:
            np.add(total, value, out=total, casting="same_kind")
            return total
    return total + value


class _Fused:
    """A contribution to be weighted and added in one pass (see ``_fused_add``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _fuse(total: Any, value: Any) -> bool:
    """Whether ``value`` can be weighted while it is added to ``total`` (same-shaped float arrays or tensors)."""
    if _is_torch_tensor(total):
        return _is_torch_tensor(value) and total.is_floating_point()
    return getattr(getattr(total, "dtype", None), "kind", None) == "f" and type(value).__name__ == "ndarray"


def _scaled(total: Any, factor: float) -> Any:
    """``total * factor``, in place for the helper's own float arrays and tensors (they are dropped after)."""
    if _is_torch_tensor(total) and total.is_floating_point():
        return total.mul_(factor)
    if getattr(getattr(total, "dtype", None), "kind", None) == "f" and getattr(total.flags, "writeable", False):
        import numpy as np

        return np.multiply(total, factor, out=total)
    return total * factor


class WeightedAggregationHelper:
    """Sums ``value * weight`` and ``weight`` per key; ``get_result`` divides them (a per-key weighted mean).

    Parameters:
        exclude_vars: a regex; keys it matches (``re.search``) are not aggregated.
        weigh_by_local_iter: False sums the values unweighted but still divides by the weights (used with
            homomorphic encryption, where the weighting happens elsewhere).
    """

    def __init__(self, exclude_vars: str | None = None, weigh_by_local_iter: bool = True) -> None:
        self.lock = threading.Lock()
        self.exclude_vars = re.compile(exclude_vars) if exclude_vars else None
        self.weigh_by_local_iter = weigh_by_local_iter
        self.total: dict[str, Any] = {}
        self.counts: dict[str, float] = {}
        self.history: list[dict] = []
        self._key_contributions: dict[str, int] = {}
        self._skipped: set[str] = set()
        self._last_stats: dict | None = None
        self._scratch: dict[str, Any] = {}  # per dtype: a small buffer where contributions are weighted

    def reset_stats(self) -> None:
        """Forget every contribution."""
        self.total = {}
        self.counts = {}
        self.history = []
        self._key_contributions = {}
        self._skipped = set()

    def add(self, data: dict, weight: float, contributor_name: str, contribution_round: int | None) -> None:
        """Add ``data`` (``{key: value}``) with ``weight``; keys matching ``exclude_vars`` are skipped.

        Raises:
            TypeError: ``data`` is not a dict, or a value cannot be weighted and summed (the message names the
                key and the contributor); nothing of this contribution is added then.
        """
        if not isinstance(data, dict):
            raise TypeError(
                f"WeightedAggregationHelper.add: data from {contributor_name} must be a dict, got {type(data).__name__}"
            )
        staged: list[tuple[str, Any]] = []
        skipped: list[str] = []
        for key, value in data.items():
            if self.exclude_vars is not None and self.exclude_vars.search(str(key)):
                skipped.append(key)
                continue
            materialize = getattr(value, "materialize", None)
            if callable(materialize):
                value = materialize()
            if self.weigh_by_local_iter and key in self.total and _fuse(self.total[key], value):
                staged.append((key, _Fused(value)))  # weighted while it is added (under the lock)
                continue
            try:
                weighted = _weighted_copy(value, weight) if self.weigh_by_local_iter else _fresh_copy(value)
            except TypeError as exc:
                raise TypeError(
                    f"WeightedAggregationHelper: value {key!r} from {contributor_name} is a {type(value).__name__}, "
                    "which cannot be weighted; send numpy arrays, torch tensors or numbers"
                ) from exc
            staged.append((key, weighted))
        with self.lock:
            for key, weighted in staged:
                if isinstance(weighted, _Fused):
                    if key in self.total and _fused_add(self.total[key], weighted.value, weight, self._scratch, key):
                        self.counts[key] = self.counts[key] + weight
                        self._key_contributions[key] = self._key_contributions.get(key, 0) + 1
                        continue
                    weighted = weighted.value * weight
                if key in self.total:
                    try:
                        self.total[key] = _accumulate(self.total[key], weighted)
                    except (TypeError, ValueError) as exc:
                        raise TypeError(
                            f"WeightedAggregationHelper: value {key!r} from {contributor_name} does not match the "
                            f"earlier contributions ({type(weighted).__name__}: {exc})"
                        ) from exc
                    self.counts[key] = self.counts[key] + weight
                else:
                    self.total[key] = weighted
                    self.counts[key] = weight
                self._key_contributions[key] = self._key_contributions.get(key, 0) + 1
            self._skipped.update(skipped)
            self.history.append({"contributor_name": contributor_name, "round": contribution_round, "weight": weight})

    def get_result(self) -> dict:
        """Return ``{key: total / sum of weights}`` and start over.

        Raises:
            ZeroDivisionError: a key's weights sum to 0.
        """
        with self.lock:
            self._last_stats = self._stats()
            result = {}
            for key, total in self.total.items():
                count = self.counts[key]
                if count == 0:
                    raise ZeroDivisionError(f"WeightedAggregationHelper: the weights of {key!r} sum to 0")
                result[key] = _scaled(total, 1.0 / count)
            self.reset_stats()
            self._scratch = {}
            return result

    def get_history(self) -> list[dict]:
        """Return ``[{contributor_name, round, weight}]`` of the contributions so far."""
        return self.history

    def get_len(self) -> int:
        """Return the number of contributions so far."""
        return len(self.get_history())

    def _stats(self) -> dict:
        n = len(self.history)
        fully = sum(1 for c in self._key_contributions.values() if c == n)
        return {
            "round": self.history[-1]["round"] if self.history else None,
            "accepted_contributions": n,
            "contributors": [h["contributor_name"] for h in self.history],
            "keys_aggregated": len(self._key_contributions),
            "keys_seen": len(self._key_contributions) + len(self._skipped - set(self._key_contributions)),
            "fully_matched_keys": fully,
            "partially_matched_keys": len(self._key_contributions) - fully,
            "skipped_keys": len(self._skipped),
        }

    def get_aggregation_stats(self) -> dict:
        """Return counts of the contributions and keys: of the running aggregation, or of the last result."""
        with self.lock:
            if self.history or self._last_stats is None:
                return self._stats()
            return dict(self._last_stats)
