"""SVTPrivacy: differential privacy for model updates with the sparse vector technique (SVT)."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from ...apis.dxo import DXO, DataKind
from ...apis.dxo_filter import DXOFilter
from ...apis.event_type import EventType
from ...apis.fl_constant import FLContextKey
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable
from .percentile_privacy import num_steps, numeric_array

# Rounds of noisy queries before the selection gives up on finding more entries and releases those it found (one
# pass costs about 3 ms per 10^5 values). With the usual settings about half the queries pass the threshold in
# each pass, so one or two passes do; NVFlare loops until enough pass, forever when tau is far above gamma.
MAX_SELECTION_PASSES = 100


class SVTPrivacy(DXOFilter):
    """Release about ``ceil(fraction * n)`` of ``n`` step-normalized update values with Laplace noise; zero the rest.

    The sparse vector technique (Lyu, Su and Li, VLDB 2017), with sensitivity ``gamma`` (values are clipped to
    ``[-gamma, gamma]``) and ``c = min(ceil(fraction * n), n)`` values to upload:

    1. Divide every variable by meta ``NUM_STEPS_CURRENT_ROUND`` (default 1) and flatten them (sorted by name).
    2. Threshold: ``tau + Lap(gamma / epsilon_threshold)``.
    3. Queries: ``|clip(x, gamma)| + Lap(2 c gamma / epsilon_query)`` for the entries not selected yet, in
       passes, until ``c`` entries are at or above the threshold (at most ``MAX_SELECTION_PASSES`` passes: then
       those found, with a warning); then ``c`` of them are drawn (with replacement when ``replace``, as NVFlare
       does, so fewer distinct entries are released: about ``0.9 c`` when many passed, ``0.63 c`` when ``c`` did).
    4. Release: each drawn entry becomes ``clip(x + Lap(2 c gamma / epsilon_release), gamma)``; every other
       entry becomes 0. Scalars pass through. The result is multiplied back by the step count.

    Budget: ``epsilon`` is split between threshold and query as ``1 : (2c)^(2/3)`` unless
    ``epsilon_threshold`` / ``epsilon_query`` are given (given one, the other is the rest of ``epsilon``); the
    release budget defaults to ``c * noise_var`` (so the release noise scale is ``2 gamma / noise_var``). Every
    filtered DXO adds an entry to the privacy ledger (``get_privacy_ledger()``, ``get_privacy_spent()``),
    which START_RUN clears. Noise comes from a ``numpy.random.Generator`` (``self.rng``).

    Parameters:
        fraction: the share of values to release, in (0, 1].
        epsilon: the budget of threshold plus queries (> 0).
        noise_var: the release budget per released value (> 0), used when ``epsilon_release`` is None.
        gamma: the clipping bound and sensitivity (> 0).
        tau: the threshold before noise.
        data_kinds: the kinds to filter (default ``[WEIGHT_DIFF, WEIGHTS]``).
        replace: draw the released entries with replacement (NVFlare's default).
        epsilon_threshold, epsilon_query, epsilon_release: explicit budgets (> 0), see above.

    Raises:
        ValueError: a parameter is out of range, or explicit budgets leave nothing of ``epsilon``.

    The arguments are stored under their own names (NVFlare keeps ``frac``, ``eps_1``, ``eps_3``, which its job
    export cannot read back, so an exported SVTPrivacy silently reverts to its defaults); ``frac``, ``eps_1``
    and ``eps_3`` are read-only aliases.
    """

    def __init__(
        self,
        fraction: float = 0.1,
        epsilon: float = 0.1,
        noise_var: float = 0.1,
        gamma: float = 1e-5,
        tau: float = 1e-6,
        data_kinds: list[str] | None = None,
        replace: bool = True,
        epsilon_threshold: float | None = None,
        epsilon_query: float | None = None,
        epsilon_release: float | None = None,
    ) -> None:
        if not data_kinds:
            data_kinds = [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS]
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF], data_kinds_to_filter=data_kinds)
        _positive("fraction", fraction)
        if fraction > 1:
            raise ValueError(f"SVTPrivacy: fraction must be in (0, 1], got {fraction!r}")
        for name, value in (("epsilon", epsilon), ("noise_var", noise_var), ("gamma", gamma)):
            _positive(name, value)
        if not isinstance(tau, (int, float)) or isinstance(tau, bool):
            raise ValueError(f"SVTPrivacy: tau must be a number, got {tau!r}")
        for name, value in (
            ("epsilon_threshold", epsilon_threshold),
            ("epsilon_query", epsilon_query),
            ("epsilon_release", epsilon_release),
        ):
            if value is not None:
                _positive(name, value)
        if (epsilon_threshold is None) != (epsilon_query is None):
            given = epsilon_threshold if epsilon_threshold is not None else epsilon_query
            if given >= epsilon:  # type: ignore[operator]
                raise ValueError(
                    f"SVTPrivacy: with only one of epsilon_threshold / epsilon_query given ({given}), the other gets "
                    f"the rest of epsilon={epsilon}, and nothing is left; give both, or a larger epsilon"
                )
        self.fraction = fraction
        self.epsilon = epsilon
        self.noise_var = noise_var
        self.gamma = gamma
        self.tau = tau
        self.replace = replace
        self.epsilon_threshold = epsilon_threshold
        self.epsilon_query = epsilon_query
        self.epsilon_release = epsilon_release
        self.rng = np.random.default_rng()
        self._ledger: list[dict[str, Any]] = []
        self._ledger_lock = threading.Lock()

    @property
    def frac(self) -> float:
        """NVFlare's name for ``fraction``."""
        return self.fraction

    @property
    def eps_1(self) -> float:
        """NVFlare's name for ``epsilon``."""
        return self.epsilon

    @property
    def eps_3(self) -> float:
        """NVFlare's name for ``noise_var``."""
        return self.noise_var

    def budgets(self, n_upload: int) -> tuple[float, float, float]:
        """Return ``(epsilon_threshold, epsilon_query, epsilon_release)`` for ``n_upload`` released values."""
        eps_t, eps_q = self.epsilon_threshold, self.epsilon_query
        if eps_t is None and eps_q is None:
            eps_t = self.epsilon / (1.0 + (2.0 * n_upload) ** (2.0 / 3.0))
            eps_q = self.epsilon - eps_t
        elif eps_q is None:
            eps_q = self.epsilon - eps_t  # type: ignore[operator]
        elif eps_t is None:
            eps_t = self.epsilon - eps_q
        eps_r = self.epsilon_release if self.epsilon_release is not None else n_upload * self.noise_var
        return float(eps_t), float(eps_q), float(eps_r)  # type: ignore[arg-type]

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Clear the privacy ledger at START_RUN."""
        if event_type == EventType.START_RUN:
            with self._ledger_lock:
                self._ledger.clear()

    def get_privacy_spent(self) -> float:
        """Return the total epsilon spent on the DXOs filtered so far in this run (sequential composition)."""
        with self._ledger_lock:
            return float(sum(entry["epsilon"] for entry in self._ledger))

    def get_privacy_ledger(self) -> list[dict[str, Any]]:
        """Return one entry per filtered DXO: its budgets, ``epsilon`` (their sum), sizes, task and site."""
        with self._ledger_lock:
            return [dict(entry) for entry in self._ledger]

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Return ``dxo`` with its values replaced by the SVT release.

        Raises:
            TypeError: a variable is not a numpy array or a number.
        """
        name = type(self).__name__
        steps = num_steps(dxo)
        names = sorted(dxo.data)
        arrays = {k: numeric_array(name, k, dxo.data[k]) for k in names}
        delta_w = np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() / float(steps) for k in names])
        n = delta_w.size
        if n == 0:
            return None
        c = int(min(math.ceil(n * self.fraction), n))
        eps_t, eps_q, eps_r = self.budgets(c)
        rng = self.rng
        threshold = self.tau + rng.laplace(scale=self.gamma / eps_t)
        query_scale = 2.0 * c * self.gamma / eps_q
        clipped = np.abs(np.clip(delta_w, -self.gamma, self.gamma))
        accepted: list[int] = []
        candidates = np.arange(n)
        passes = 0
        while len(accepted) < c and candidates.size and passes < MAX_SELECTION_PASSES:
            above = clipped[candidates] + rng.laplace(scale=query_scale, size=candidates.shape) >= threshold
            accepted.extend(candidates[above].tolist())
            candidates = candidates[~above]
            passes += 1
        if len(accepted) < c:
            self.log_warning(
                fl_ctx,
                f"only {len(accepted)} of {c} values passed the noisy threshold in {passes} passes; releasing those",
            )
        size = c if self.replace else min(c, len(accepted))
        chosen = rng.choice(np.asarray(accepted, dtype=np.int64), size=size, replace=self.replace) if accepted else []
        chosen = np.asarray(chosen, dtype=np.int64)
        released = np.zeros_like(delta_w)
        noise = rng.laplace(scale=2.0 * c * self.gamma / eps_r, size=chosen.shape)
        released[chosen] = np.clip(delta_w[chosen] + noise, -self.gamma, self.gamma)
        self.log_info(
            fl_ctx,
            f"{n} values, {c} to release ({len(set(chosen.tolist()))} distinct released), threshold {threshold}, "
            f"epsilon threshold/query/release {eps_t:.4g}/{eps_q:.4g}/{eps_r:.4g}",
        )
        out: dict[str, Any] = {}
        start = 0
        for k in names:
            a = arrays[k]
            if np.ndim(a) == 0:  # a scalar: passes through
                out[k] = dxo.data[k]
                start += 1
                continue
            dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64
            out[k] = (released[start : start + a.size].reshape(a.shape) * float(steps)).astype(dtype, copy=False)
            start += a.size
        with self._ledger_lock:
            self._ledger.append(
                {
                    "epsilon_threshold": eps_t,
                    "epsilon_query": eps_q,
                    "epsilon_release": eps_r,
                    "epsilon": eps_t + eps_q + eps_r,
                    "n_params": n,
                    "n_upload": c,
                    "task_name": fl_ctx.get_prop(FLContextKey.TASK_NAME),
                    "site": fl_ctx.get_identity_name(),
                }
            )
        dxo.data = out
        return dxo


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"SVTPrivacy: {name} must be a positive number, got {value!r}")
