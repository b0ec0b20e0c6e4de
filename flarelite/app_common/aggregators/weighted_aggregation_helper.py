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
            try:
                weighted = value * weight if self.weigh_by_local_iter else _fresh_copy(value)
            except TypeError as exc:
                raise TypeError(
                    f"WeightedAggregationHelper: value {key!r} from {contributor_name} is a {type(value).__name__}, "
                    "which cannot be weighted; send numpy arrays, torch tensors or numbers"
                ) from exc
            staged.append((key, weighted))
        with self.lock:
            for key, weighted in staged:
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
                result[key] = total * (1.0 / count)
            self.reset_stats()
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
