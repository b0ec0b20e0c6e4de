"""InTimeAccumulateWeightedAggregator: the Shareable-based weighted FedAvg aggregator of ScatterAndGather.

Each contribution is added to a running weighted mean as it arrives. With a dict ``expected_data_kind``
(``{name: kind}``) the clients send a COLLECTION DXO and each named DXO inside it is aggregated on its own;
``exclude_vars`` and ``aggregation_weights`` may then be dicts of the same names too.
"""

from __future__ import annotations

from typing import Any

from ...apis.dxo import DXO, DataKind, from_shareable
from ...apis.event_type import EventType
from ...apis.fl_constant import ReservedKey, ReturnCode
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable
from ..abstract.aggregator import Aggregator
from ..app_constant import AppConstants
from .dxo_aggregator import DXOAggregator

_ALLOWED_KINDS = (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS, DataKind.METRICS)
_SINGLE = ""  # the key of the single-DXO form


def _is_nested(aggregation_weights: Any) -> bool:
    if not aggregation_weights or not isinstance(aggregation_weights, dict):
        return False
    return isinstance(next(iter(aggregation_weights.values())), dict)


class InTimeAccumulateWeightedAggregator(Aggregator):
    """Weighted mean of the round's DXOs; the weight is ``aggregation_weights[client] * NUM_STEPS_CURRENT_ROUND``.

    The default ``expected_data_kind`` is WEIGHT_DIFF, as in NVFlare: results holding full WEIGHTS are rejected
    unless it is set to ``DataKind.WEIGHTS``. Settings are checked when the run starts (START_RUN) and a bad one
    raises ValueError naming it.
    """

    def __init__(
        self,
        exclude_vars: str | dict[str, str] | None = None,
        aggregation_weights: dict[str, Any] | None = None,
        expected_data_kind: DataKind | dict[str, DataKind] = DataKind.WEIGHT_DIFF,
        weigh_by_local_iter: bool = True,
    ) -> None:
        super().__init__()
        self.exclude_vars = exclude_vars
        self.aggregation_weights = aggregation_weights
        self.expected_data_kind = expected_data_kind
        self.weigh_by_local_iter = weigh_by_local_iter
        self.dxo_aggregators: dict[str, DXOAggregator] | None = None
        self._kinds: dict[str, DataKind] = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Check the settings and set up the per-DXO aggregators at START_RUN."""
        if event_type == EventType.START_RUN:
            self._setup()

    @staticmethod
    def _kind(value: Any, where: str) -> DataKind:
        try:
            kind = DataKind(value)
        except ValueError:
            kind = None
        if kind not in _ALLOWED_KINDS:
            raise ValueError(
                f"InTimeAccumulateWeightedAggregator: {where} = {value!r} is not one of "
                f"{[str(k) for k in _ALLOWED_KINDS]}"
            )
        return kind

    def _setup(self) -> None:
        expected = self.expected_data_kind
        if isinstance(expected, dict):
            if not expected:
                raise ValueError("InTimeAccumulateWeightedAggregator: expected_data_kind is an empty dict")
            kinds = {str(k): self._kind(v, f"expected_data_kind[{k!r}]") for k, v in expected.items()}
        else:
            kinds = {_SINGLE: self._kind(expected, "expected_data_kind")}
        exclude = self.exclude_vars
        if exclude and not isinstance(exclude, (str, dict)):
            raise ValueError(
                f"InTimeAccumulateWeightedAggregator: exclude_vars must be a regex str or a dict of them, "
                f"got {type(exclude).__name__}"
            )
        if isinstance(exclude, dict):
            missing = [k for k in kinds if k not in exclude]
            if missing:
                raise ValueError(
                    "InTimeAccumulateWeightedAggregator: a dict exclude_vars must name every key of "
                    f"expected_data_kind; missing {missing}"
                )
            for k in kinds:
                if exclude[k] is not None and not isinstance(exclude[k], str):
                    raise ValueError(
                        f"InTimeAccumulateWeightedAggregator: exclude_vars[{k!r}] must be a regex str, "
                        f"got {type(exclude[k]).__name__}"
                    )
        weights = self.aggregation_weights or {}
        if not isinstance(weights, dict):
            raise ValueError(
                f"InTimeAccumulateWeightedAggregator: aggregation_weights must be a dict, got {type(weights).__name__}"
            )
        nested = _is_nested(weights)
        if nested:
            missing = [k for k in kinds if k not in weights]
            if missing:
                raise ValueError(
                    "InTimeAccumulateWeightedAggregator: a dict of dict aggregation_weights must name every key "
                    f"of expected_data_kind; missing {missing}"
                )
        self._kinds = kinds
        self.dxo_aggregators = {
            k: DXOAggregator(
                exclude_vars=exclude[k] if isinstance(exclude, dict) else exclude,
                aggregation_weights=weights[k] if nested else weights,
                expected_data_kind=kind,
                name_postfix=k,
                weigh_by_local_iter=self.weigh_by_local_iter,
            )
            for k, kind in kinds.items()
        }

    def _aggregators(self) -> dict[str, DXOAggregator]:
        if self.dxo_aggregators is None:
            self._setup()
        assert self.dxo_aggregators is not None
        return self.dxo_aggregators

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Add one client's result; return False (with a log line) when it is rejected."""
        aggregators = self._aggregators()
        contributor_name = shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
        rc = shareable.get_return_code()
        if rc and rc != ReturnCode.OK:
            self.log_warning(fl_ctx, f"Contributor {contributor_name} returned rc: {rc}. Disregarding contribution.")
            return False
        try:
            dxo = from_shareable(shareable)
        except ValueError as exc:
            self.log_error(fl_ctx, f"the result of {contributor_name} is not a valid DXO: {exc}")
            return False
        if dxo.data_kind not in (*_ALLOWED_KINDS, DataKind.COLLECTION):
            self.log_error(
                fl_ctx,
                f"cannot handle data kind {dxo.data_kind} from {contributor_name}; expecting WEIGHT_DIFF, WEIGHTS, "
                "METRICS or COLLECTION",
            )
            return False
        contribution_round = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        n_accepted = 0
        for key, aggregator in aggregators.items():
            sub_dxo = dxo if key == _SINGLE else (dxo.data.get(key) if isinstance(dxo.data, dict) else None)
            if not isinstance(sub_dxo, DXO):
                self.log_warning(
                    fl_ctx, f"the COLLECTION of {contributor_name} has no DXO {key!r} (got {type(sub_dxo).__name__})"
                )
                continue
            if not aggregator.accept(sub_dxo, contributor_name, contribution_round, fl_ctx):
                return False
            n_accepted += 1
        if n_accepted == 0:
            self.log_warning(fl_ctx, f"Did not accept any DXO from {contributor_name} in round {contribution_round}")
            return False
        return True

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """Return the aggregate: one DXO of the expected kind, or a COLLECTION of the named ones."""
        aggregators = self._aggregators()
        if _SINGLE in aggregators:
            return aggregators[_SINGLE].aggregate(fl_ctx).to_shareable()
        result = {key: aggregator.aggregate(fl_ctx) for key, aggregator in aggregators.items()}
        return DXO(data_kind=DataKind.COLLECTION, data=result).to_shareable()

    def reset(self, fl_ctx: FLContext) -> None:
        """Forget the round's contributions."""
        for aggregator in self._aggregators().values():
            aggregator.reset_aggregation_helper()
