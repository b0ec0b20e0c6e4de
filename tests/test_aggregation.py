"""Aggregation by hand: WeightedAggregationHelper, FedAvg's in-time weighting, InTimeAccumulateWeightedAggregator's
reject rules, the shareable generator, the return-code policy and the stop-condition parser (numpy only)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from flarelite.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.app_common.abstract.fl_model import FLModel, ParamsType
from flarelite.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from flarelite.app_common.aggregators import InTimeAccumulateWeightedAggregator
from flarelite.app_common.aggregators.model_aggregator import ModelAggregator
from flarelite.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper
from flarelite.app_common.app_constant import AppConstants
from flarelite.app_common.shareablegenerators import FullModelShareableGenerator
from flarelite.app_common.utils.error_handling_utils import should_ignore_result_error
from flarelite.app_common.utils.fl_model_utils import FLModelUtils
from flarelite.app_common.utils.math_utils import parse_compare_criteria
from flarelite.app_common.workflows.base_fedavg import BaseFedAvg
from flarelite.app_common.workflows.fedavg import FedAvg

NUM_STEPS = MetaKey.NUM_STEPS_CURRENT_ROUND


# ------------------------------------------------------------------------------------ WeightedAggregationHelper
def test_helper_weighs_per_key_and_skips_excluded_vars():
    helper = WeightedAggregationHelper(exclude_vars="^bn\\.")
    helper.add({"w": np.array([1.0, 2.0]), "b": np.array([3.0]), "bn.mean": np.array([9.0])}, 1.0, "site-1", 0)
    helper.add({"w": np.array([4.0, 8.0]), "bn.mean": np.array([9.0])}, 3.0, "site-2", 0)  # no "b"
    helper.add({"w": np.array([0.0, 0.0]), "b": np.array([6.0])}, 2.0, "site-3", 0)
    stats = helper.get_aggregation_stats()
    assert stats["accepted_contributions"] == 3
    assert stats["contributors"] == ["site-1", "site-2", "site-3"]
    assert (stats["keys_aggregated"], stats["fully_matched_keys"], stats["partially_matched_keys"]) == (2, 1, 1)
    assert stats["skipped_keys"] == 1 and stats["keys_seen"] == 3 and stats["round"] == 0
    result = helper.get_result()
    np.testing.assert_allclose(result["w"], [(1 * 1 + 4 * 3 + 0 * 2) / 6, (2 * 1 + 8 * 3 + 0 * 2) / 6])
    np.testing.assert_allclose(result["b"], [(3 * 1 + 6 * 2) / 3])  # averaged over the two that sent it
    assert "bn.mean" not in result
    assert helper.get_len() == 0  # get_result starts over
    assert helper.get_aggregation_stats()["accepted_contributions"] == 3  # ... and keeps the last stats


def test_helper_unweighted_sum_still_divides_by_weights_and_never_touches_inputs():
    helper = WeightedAggregationHelper(weigh_by_local_iter=False)
    first = np.array([2.0, 4.0])
    helper.add({"w": first}, 2.0, "a", 1)
    helper.add({"w": np.array([2.0, 2.0])}, 2.0, "b", 1)
    np.testing.assert_allclose(helper.get_result()["w"], [1.0, 1.5])
    np.testing.assert_array_equal(first, [2.0, 4.0])  # accumulated in place, but into a copy


def test_helper_is_thread_safe():
    helper = WeightedAggregationHelper()

    def worker(i):
        for j in range(50):
            helper.add({"w": np.ones(4) * i}, 1.0, f"t{i}-{j}", 0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert helper.get_len() == 200
    np.testing.assert_allclose(helper.get_result()["w"], np.ones(4) * 1.5)


def test_helper_rejects_a_bad_value_without_changing_the_running_mean():
    helper = WeightedAggregationHelper()
    helper.add({"w": np.array([1.0])}, 1.0, "site-1", 0)
    with pytest.raises(TypeError, match="'x' from site-2"):
        helper.add({"w": np.array([100.0]), "x": "text"}, 1.0, "site-2", 0)
    assert helper.get_len() == 1
    np.testing.assert_allclose(helper.get_result()["w"], [1.0])


# ------------------------------------------------------------------------------------ FedAvg's in-time weighting
def _result(site, params, steps=None, metrics=None):
    meta = {"client_name": site}
    if steps is not None:
        meta[NUM_STEPS] = steps
    return FLModel(params=params, metrics=metrics, meta=meta)


def test_fedavg_weighs_by_aggregation_weights_times_num_steps_per_key():
    fedavg = FedAvg(aggregation_weights={"site-1": 2.0, "site-3": 0.5}, exclude_vars="^skip")
    fedavg.fl_ctx = FLContext()
    fedavg.current_round = 4
    fedavg._reset_round(expected=3)
    results = [
        _result(
            "site-1", {"w": np.array([1.0, 1.0]), "b": np.array([10.0]), "skip_me": np.array([5.0])}, 3, {"acc": 0.5}
        ),
        _result("site-2", {"w": np.array([4.0, 0.0])}, steps=None, metrics={"acc": 0.8, "note": "text"}),  # steps 1.0
        _result("site-3", {"w": np.array([2.0, 6.0]), "b": np.array([40.0])}, 8, {"acc": 0.2}),
    ]
    for r in results:
        assert fedavg._aggregate_one_result(r) is True
    assert fedavg._aggregate_one_result(_result("site-4", {}, 5)) is False  # empty params: skipped
    aggr = fedavg._get_aggregated_result()
    w1, w2, w3 = 2.0 * 3, 1.0 * 1, 0.5 * 8  # aggregation weight * NUM_STEPS_CURRENT_ROUND
    total = w1 + w2 + w3
    np.testing.assert_allclose(aggr.params["w"], [(w1 * 1 + w2 * 4 + w3 * 2) / total, (w1 * 1 + w3 * 6) / total])
    np.testing.assert_allclose(aggr.params["b"], [(w1 * 10 + w3 * 40) / (w1 + w3)])
    assert "skip_me" not in aggr.params
    assert aggr.metrics == pytest.approx({"acc": (w1 * 0.5 + w2 * 0.8 + w3 * 0.2) / total})
    assert aggr.params_type == ParamsType.FULL and aggr.current_round == 4
    assert aggr.meta["nr_aggregated"] == 3 and aggr.meta["current_round"] == 4
    weights = aggr.meta["metrics_aggregation_info"]["site_weights"]
    assert [(s["name"], s["weight"]) for s in weights] == [("site-1", w1), ("site-2", w2), ("site-3", w3)]


def test_fedavg_drops_metrics_for_the_round_when_one_client_sends_none():
    fedavg = FedAvg()
    fedavg.fl_ctx = FLContext()
    fedavg.current_round = 0
    fedavg._reset_round(expected=2)
    fedavg._aggregate_one_result(_result("site-1", {"w": np.array([1.0])}, 1, {"acc": 1.0}))
    fedavg._aggregate_one_result(_result("site-2", {"w": np.array([3.0])}, 1, None))
    aggr = fedavg._get_aggregated_result()
    assert aggr.metrics is None
    np.testing.assert_allclose(aggr.params["w"], [2.0])


def test_base_fedavg_aggregate_fn_uses_finite_positive_num_steps_else_one():
    results = [
        _result("site-1", {"w": np.array([0.0])}, 3),
        _result("site-2", {"w": np.array([4.0])}, float("nan")),  # invalid: weight 1.0
        _result("site-3", {"w": np.array([8.0])}, -2),  # invalid: weight 1.0
    ]
    aggr = BaseFedAvg.aggregate_fn(results)
    np.testing.assert_allclose(aggr.params["w"], [(0 * 3 + 4 + 8) / 5])
    assert aggr.meta["nr_aggregated"] == 3


def test_fedavg_checks_its_arguments():
    with pytest.raises(ValueError, match="operator"):
        FedAvg(stop_cond="accuracy => 80")
    with pytest.raises(TypeError, match="aggregator"):
        FedAvg(aggregator=object())
    with pytest.raises(ValueError, match="task_check_period"):
        FedAvg(task_check_period=0)
    with pytest.raises(ValueError, match="num_clients"):
        FedAvg(num_clients=0)


def test_fedavg_early_stopping_rules():
    fedavg = FedAvg(stop_cond="accuracy >= 0.9", patience=2)
    fedavg.fl_ctx = FLContext()
    assert fedavg.is_curr_model_better(FLModel(params={}, metrics={"accuracy": 0.5}))
    assert not fedavg.is_curr_model_better(FLModel(params={}, metrics={"accuracy": 0.5}))  # equal: no gain
    assert not fedavg.should_stop({"accuracy": 0.5})
    assert not fedavg.is_curr_model_better(FLModel(params={}, metrics={"accuracy": 0.4}))
    assert fedavg.should_stop({"accuracy": 0.5})  # two rounds without improvement
    fedavg2 = FedAvg(stop_cond="accuracy >= 0.9")
    fedavg2.fl_ctx = FLContext()
    assert fedavg2.should_stop({"accuracy": 0.95}) and not fedavg2.should_stop({"loss": 1.0})


# ------------------------------------------------------------------------------- InTimeAccumulateWeightedAggregator
def _ctx(current_round=1):
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, current_round, private=True, sticky=True)
    return ctx


def _contribution(site, data, kind=DataKind.WEIGHT_DIFF, steps=None, round_=1, meta=None):
    dxo_meta = dict(meta or {})
    if steps is not None:
        dxo_meta[NUM_STEPS] = steps
    shareable = DXO(kind, data, meta=dxo_meta).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_)
    return shareable


def test_intime_aggregator_weighted_mean_of_weight_diffs():
    agg = InTimeAccumulateWeightedAggregator(aggregation_weights={"site-1": 2.0}, exclude_vars="frozen")
    agg.handle_event(EventType.START_RUN, _ctx())
    ctx = _ctx()
    assert agg.accept(_contribution("site-1", {"w": np.array([1.0]), "frozen": np.array([7.0])}, steps=2), ctx)
    assert agg.accept(_contribution("site-2", {"w": np.array([7.0])}, steps=4), ctx)
    assert agg.accept(_contribution("site-3", {"w": np.array([0.0])}), ctx)  # no NUM_STEPS: 1.0
    dxo = from_shareable(agg.aggregate(ctx))
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    np.testing.assert_allclose(dxo.data["w"], [(2 * 2 * 1 + 4 * 7 + 0) / (4 + 4 + 1)])
    assert "frozen" not in dxo.data
    agg.reset(ctx)
    assert agg.accept(_contribution("site-1", {"w": np.array([1.0])}), ctx)  # a new round: accepted again


def test_intime_aggregator_reject_rules():
    agg = InTimeAccumulateWeightedAggregator()  # expects WEIGHT_DIFF, as NVFlare's default
    ctx = _ctx(current_round=3)
    not_dxo = Shareable()
    not_dxo.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    assert not agg.accept(not_dxo, ctx)
    assert not agg.accept(_contribution("site-1", {"m": 1}, kind=DataKind.ANALYTIC, round_=3), ctx)
    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    assert not agg.accept(failed, ctx)
    assert not agg.accept(_contribution("site-1", {"w": np.ones(1)}, kind=DataKind.WEIGHTS, round_=3), ctx)
    assert not agg.accept(_contribution("site-1", {"w": np.ones(1)}, round_=2), ctx)  # an old round
    algo = {MetaKey.PROCESSED_ALGORITHM: "dp"}
    assert agg.accept(_contribution("site-1", {"w": np.ones(1)}, round_=3, meta=algo), ctx)
    assert not agg.accept(_contribution("site-1", {"w": np.ones(1)}, round_=3, meta=algo), ctx)  # twice
    other_algo = {MetaKey.PROCESSED_ALGORITHM: "he"}
    assert not agg.accept(_contribution("site-2", {"w": np.ones(1)}, round_=3, meta=other_algo), ctx)
    dxo = from_shareable(agg.aggregate(ctx))
    assert dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) == "dp"
    np.testing.assert_allclose(dxo.data["w"], [1.0])


def test_intime_aggregator_collection_form():
    agg = InTimeAccumulateWeightedAggregator(
        expected_data_kind={"model": DataKind.WEIGHTS, "stats": DataKind.METRICS},
        aggregation_weights={"model": {"site-2": 3.0}, "stats": {}},
        exclude_vars={"model": "ignored", "stats": None},
    )
    agg.handle_event(EventType.START_RUN, _ctx())
    ctx = _ctx()

    def collection(site, w, loss):
        data = {
            "model": DXO(DataKind.WEIGHTS, {"w": np.array([w]), "ignored": np.array([0.0])}),
            "stats": DXO(DataKind.METRICS, {"loss": loss}),
        }
        return _contribution(site, data, kind=DataKind.COLLECTION)

    assert agg.accept(collection("site-1", 1.0, 0.4), ctx)
    assert agg.accept(collection("site-2", 5.0, 0.8), ctx)
    out = from_shareable(agg.aggregate(ctx))
    assert out.data_kind == DataKind.COLLECTION
    model, stats = out.data["model"], out.data["stats"]
    assert model.data_kind == DataKind.WEIGHTS and stats.data_kind == DataKind.METRICS
    np.testing.assert_allclose(model.data["w"], [(1.0 + 3 * 5.0) / 4])
    assert "ignored" not in model.data
    assert stats.data["loss"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"expected_data_kind": DataKind.ANALYTIC}, "expected_data_kind"),
        ({"expected_data_kind": {"a": DataKind.WEIGHTS}, "exclude_vars": {"b": "x"}}, "missing"),
        ({"expected_data_kind": {"a": DataKind.WEIGHTS}, "aggregation_weights": {"b": {"site-1": 1.0}}}, "missing"),
        ({"exclude_vars": 3}, "exclude_vars"),
    ],
)
def test_intime_aggregator_bad_settings_fail_at_start_run(kwargs, match):
    agg = InTimeAccumulateWeightedAggregator(**kwargs)
    with pytest.raises(ValueError, match=match):
        agg.handle_event(EventType.START_RUN, _ctx())


class MaxAggregator(ModelAggregator):
    """Keeps the accepted models; their aggregate is the element-wise maximum of ``w``."""

    def __init__(self):
        super().__init__()
        self.models = []

    def accept_model(self, model):
        self.models.append(model)

    def aggregate_model(self):
        return FLModel(params={"w": np.maximum.reduce([m.params["w"] for m in self.models])})

    def reset_stats(self):
        self.models = []


def test_model_aggregator_adapts_the_shareable_contract():
    agg = MaxAggregator()
    ctx = _ctx()
    assert agg.accept(_contribution("site-1", {"w": np.array([1.0, 5.0])}, kind=DataKind.WEIGHTS), ctx)
    assert agg.accept(_contribution("site-2", {"w": np.array([3.0, 2.0])}, kind=DataKind.WEIGHTS), ctx)
    assert [m.meta["client_name"] for m in agg.models] == ["site-1", "site-2"]
    out = from_shareable(agg.aggregate(ctx))
    assert out.data_kind == DataKind.WEIGHTS
    np.testing.assert_array_equal(out.data["w"], [3.0, 5.0])
    agg.reset(ctx)
    assert agg.models == [] and agg.name == "MaxAggregator"


# ------------------------------------------------------------------------------------ generator, policy, parser
def test_full_model_shareable_generator():
    gen = FullModelShareableGenerator()
    ctx = FLContext()
    base = make_model_learnable({"w": np.array([1.0, 1.0])}, {"v": 1})
    out = from_shareable(gen.learnable_to_shareable(base, ctx))
    assert out.data_kind == DataKind.WEIGHTS and out.meta == {"v": 1}
    ctx.set_prop(AppConstants.GLOBAL_MODEL, base, private=True, sticky=True)
    diff = DXO(DataKind.WEIGHT_DIFF, {"w": np.array([0.5, -1.0])}, meta={"nr": 2}).to_shareable()
    learnable = gen.shareable_to_learnable(diff, ctx)
    np.testing.assert_allclose(learnable[ModelLearnableKey.WEIGHTS]["w"], [1.5, 0.0])
    assert learnable[ModelLearnableKey.META] == {"nr": 2}
    full = DXO(DataKind.WEIGHTS, {"w": np.array([9.0, 9.0])}).to_shareable()
    np.testing.assert_allclose(gen.shareable_to_learnable(full, ctx)[ModelLearnableKey.WEIGHTS]["w"], [9.0, 9.0])
    with pytest.raises(ValueError, match="METRICS"):
        gen.shareable_to_learnable(DXO(DataKind.METRICS, {"a": 1}).to_shareable(), ctx)
    with pytest.raises(ValueError, match="'nope'"):
        gen.shareable_to_learnable(DXO(DataKind.WEIGHT_DIFF, {"nope": 1.0}).to_shareable(), ctx)


def test_result_error_policy():
    assert should_ignore_result_error(True, "s1", set(), 3, 3)
    assert not should_ignore_result_error(False, "s1", set(), 3, 1)
    failed: set[str] = set()
    assert should_ignore_result_error(None, "s1", failed, 3, 2)  # 2 good clients left >= 2
    assert not should_ignore_result_error(None, "s2", failed, 3, 2)  # 1 left < 2
    assert failed == {"s1", "s2"}
    assert not should_ignore_result_error(None, "s1", set(), 3, 0)  # 0: every target is needed


def test_parse_compare_criteria():
    key, target, op = parse_compare_criteria("accuracy >= 80")
    assert (key, target) == ("accuracy", 80.0) and op(80, 80) and not op(79, 80)
    assert parse_compare_criteria("loss < 0.5")[2](0.4, 0.5)
    for bad in ("accuracy>=80", "accuracy >= high", "a ~ 1"):
        with pytest.raises(ValueError):
            parse_compare_criteria(bad)


def test_fedavg_with_a_custom_model_aggregator():
    class LastWins(ModelAggregator):
        def __init__(self):
            super().__init__()
            self.last = None

        def accept_model(self, model):
            self.last = model

        def aggregate_model(self):
            return FLModel(params=dict(self.last.params), meta={"by": "last"})

        def reset_stats(self):
            self.last = None

    fedavg = FedAvg(aggregator=LastWins())
    fedavg.fl_ctx = FLContext()
    fedavg.current_round = 2
    fedavg._reset_round(expected=2)
    fedavg._aggregate_one_result(_result("site-1", {"w": np.array([1.0])}, 5))
    fedavg._aggregate_one_result(_result("site-2", {"w": np.array([7.0])}, 1))
    aggr = fedavg._get_aggregated_result()
    np.testing.assert_array_equal(aggr.params["w"], [7.0])
    assert aggr.meta == {"by": "last", "nr_aggregated": 2, "current_round": 2}


# ------------------------------------------------------------------------------------ hostile contributions
GLOBAL = {"w": np.zeros((3, 3)), "b": np.zeros(3)}


def test_contribution_check_rejects_bad_values_and_shapes_and_drops_unknown_keys():
    from flarelite.app_common.aggregators.contribution_check import check_contribution

    good = {"w": np.ones((3, 3), dtype=np.float32), "b": np.arange(3)}  # other dtypes are fine
    assert check_contribution(good, GLOBAL) == (good, "")
    assert check_contribution({"w": np.ones((3, 3))}, GLOBAL)[1] == ""  # a subset: averaged per key
    for bad, reason in (
        ({"w": np.ones((5, 3, 3))}, "'w' has shape (5, 3, 3), the global model's has shape (3, 3)"),  # would broadcast
        ({"b": np.ones(7)}, "'b' has shape (7,)"),
        ({"w": np.full((3, 3), np.nan)}, "'w' holds NaN or infinite values"),
        ({"b": np.array([1.0, np.inf, 0.0])}, "'b' holds NaN or infinite values"),
        ({"w": "weights"}, "'w' is a str, not a number, a numpy array or a tensor"),
        ({"w": [[1.0] * 3] * 3}, "'w' is a list"),
        ({"b": np.array(["x", "y", "z"])}, "'b' is an array of <U1, not of numbers"),
        ({"b": float("nan")}, "'b' is not a finite number"),
        ([1, 2], "its params are a list, not a dict"),
    ):
        params, note = check_contribution(bad, GLOBAL)
        assert params is None and reason in note, (bad, note)
    many = {f"k{i}": np.float32(i) for i in range(10_000)} | {"w": np.ones((3, 3))}
    params, note = check_contribution(many, GLOBAL)
    assert list(params) == ["w"] and "dropped 10000 key(s)" in note and "'k0'" in note and "9995 more" in note
    # no global model yet (round 0 without an initial model): values are checked, keys and shapes are not
    assert check_contribution({"anything": np.ones(4)}, {})[1] == ""
    assert check_contribution({"w": np.full(2, np.nan)}, None)[0] is None
    # keys the aggregation excludes are not checked
    assert check_contribution({"w": np.ones((3, 3)), "b": "skipped"}, GLOBAL, exclude_vars="^b$")[1] == ""


def _round_with_global(fedavg: FedAvg, global_params=GLOBAL) -> FedAvg:
    fedavg.fl_ctx = FLContext()
    fedavg.current_round = 1
    fedavg._reset_round(expected=4, global_params=global_params)
    return fedavg


def test_fedavg_rejects_hostile_results_and_keeps_the_honest_mean():
    fedavg = _round_with_global(FedAvg())
    # the first result to arrive is the odd one: before the fix it set the shape the others were measured by
    assert not fedavg._aggregate_one_result(_result("site-1", {"w": np.ones((5, 3, 3)), "b": np.ones(3)}))
    assert not fedavg._aggregate_one_result(_result("site-2", {"w": np.full((3, 3), np.nan), "b": np.ones(3)}))
    assert fedavg._aggregate_one_result(_result("site-3", {"w": np.full((3, 3), 2.0), "b": np.ones(3), "evil": 1}))
    assert fedavg._aggregate_one_result(_result("site-4", {"w": np.full((3, 3), 4.0), "b": np.full(3, 3.0)}))
    diff = FLModel(params={"w": np.ones((3, 3))}, params_type=ParamsType.DIFF, meta={"client_name": "site-5"})
    assert not fedavg._aggregate_one_result(diff)  # FULL and DIFF are never averaged together
    aggr = fedavg._get_aggregated_result()
    assert sorted(aggr.params) == ["b", "w"] and aggr.meta["nr_aggregated"] == 2  # "evil" was dropped
    np.testing.assert_allclose(aggr.params["w"], np.full((3, 3), 3.0))
    np.testing.assert_allclose(aggr.params["b"], np.full(3, 2.0))


def test_fedavg_rejects_a_diff_when_there_is_no_global_model_to_apply_it_to():
    fedavg = _round_with_global(FedAvg(), global_params={})
    diff = FLModel(params={"w": np.ones(2)}, params_type=ParamsType.DIFF, meta={"client_name": "site-1"})
    assert not fedavg._aggregate_one_result(diff)  # before: a KeyError in update_model ended the run
    assert fedavg._aggregate_one_result(_result("site-2", {"w": np.ones(2)}))  # FULL params define the model


@pytest.mark.parametrize("steps", [0, -3, float("nan"), float("inf"), "lots", True, None, [4]])
def test_fedavg_weighs_invalid_num_steps_as_one(steps):
    fedavg = _round_with_global(FedAvg(aggregation_weights={"site-1": 3.0}), global_params={"w": np.zeros(1)})
    assert fedavg._aggregate_one_result(_result("site-1", {"w": np.array([0.0])}, steps))  # weight 3 * 1.0
    assert fedavg._aggregate_one_result(_result("site-2", {"w": np.array([8.0])}, 5))  # weight 1 * 5
    np.testing.assert_allclose(fedavg._get_aggregated_result().params["w"], [8.0 * 5 / 8])


def test_fedavg_refuses_aggregation_weights_that_are_not_numbers():
    with pytest.raises(ValueError, match="site-2"):
        FedAvg(aggregation_weights={"site-1": 2.0, "site-2": "high"})
    with pytest.raises(ValueError, match="site-1"):
        FedAvg(aggregation_weights={"site-1": float("nan")})


def test_intime_aggregator_checks_contributions_against_the_global_model():
    agg = InTimeAccumulateWeightedAggregator()  # WEIGHT_DIFF
    ctx = _ctx()
    base = make_model_learnable({"w": np.zeros(2)}, {})
    ctx.set_prop(AppConstants.GLOBAL_MODEL, base, private=True, sticky=True)
    assert not agg.accept(_contribution("site-1", {"w": np.ones((4, 2))}), ctx)  # would broadcast
    assert not agg.accept(_contribution("site-2", {"w": np.array([np.nan, 1.0])}), ctx)
    assert agg.accept(_contribution("site-3", {"w": np.array([1.0, 1.0]), "evil": np.ones(2)}, steps=0), ctx)
    assert agg.accept(_contribution("site-4", {"w": np.array([3.0, 5.0])}, steps=float("nan")), ctx)
    aggregate = agg.aggregate(ctx)
    np.testing.assert_allclose(from_shareable(aggregate).data["w"], [2.0, 3.0])  # both weighted 1.0
    # the dropped key no longer ends the run in the shareable generator ("a diff names a weight ... lacks")
    learnable = FullModelShareableGenerator().shareable_to_learnable(aggregate, ctx)
    assert sorted(learnable[ModelLearnableKey.WEIGHTS]) == ["w"]


def test_model_aggregator_names_the_sender_the_connection_proved():
    agg = MaxAggregator()
    ctx = _ctx()
    forged = _contribution("site-1", {"w": np.ones(1)}, kind=DataKind.WEIGHTS, meta={"client_name": "site-2"})
    assert agg.accept(forged, ctx)
    assert agg.models[0].meta["client_name"] == "site-1"
    bad_round = _contribution("site-1", {"w": np.ones(1)}, kind=DataKind.WEIGHTS)
    bad_round.set_header(AppConstants.CURRENT_ROUND, "abc")
    assert not agg.accept(bad_round, ctx)  # logged, not raised into the workflow


def test_model_selector_ignores_a_non_finite_metric():
    from flarelite.apis.dxo import MetaKey as Key
    from flarelite.app_common.app_event_type import AppEventType
    from flarelite.app_common.widgets.intime_model_selector import IntimeModelSelector

    fired = []

    class Engine:
        def fire_event(self, event_type, fl_ctx):
            fired.append((event_type, fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)))

    selector = IntimeModelSelector(key_metric="accuracy", weigh_by_local_iter=True)
    ctx = _ctx(current_round=1)
    ctx.set_prop(ReservedKey.ENGINE, Engine(), private=True, sticky=True)
    for site, acc, steps in (("site-1", float("nan"), 1), ("site-2", 0.6, "many"), ("site-3", 0.9, 3)):
        result = _contribution(site, {"w": np.ones(1)}, steps=steps, meta={Key.INITIAL_METRICS: {"accuracy": acc}})
        ctx.set_prop(AppConstants.TRAINING_RESULT, result, private=True, sticky=False)
        selector.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, ctx)
    selector.handle_event(AppEventType.BEFORE_AGGREGATION, ctx)
    # NaN skipped; "many" steps count as 1: (0.6 * 1 + 0.9 * 3) / 4
    best = [value for event, value in fired if event == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE]
    assert best == [pytest.approx(0.825)]


def test_fedavg_averages_weighted_diffs_and_applies_them_to_the_global_model():
    fedavg = _round_with_global(FedAvg(), global_params={"w": np.array([10.0, 10.0])})
    for site, diff, steps in (("site-1", [1.0, 2.0], 1), ("site-2", [3.0, 6.0], 3)):
        model = FLModel(params={"w": np.array(diff)}, params_type=ParamsType.DIFF, meta={"client_name": site})
        model.meta[NUM_STEPS] = steps
        assert fedavg._aggregate_one_result(model)
    aggr = fedavg._get_aggregated_result()
    assert aggr.params_type == ParamsType.DIFF
    np.testing.assert_allclose(aggr.params["w"], [(1 + 3 * 3) / 4, (2 + 6 * 3) / 4])
    updated = FLModelUtils.update_model(FLModel(params={"w": np.array([10.0, 10.0])}), aggr)
    np.testing.assert_allclose(updated.params["w"], [12.5, 15.0])


def test_sample_clients_returns_all_clients_with_an_error_when_asked_for_more(caplog):
    from flarelite.apis.client import Client

    class Engine:
        def get_clients(self):
            return [Client("site-1"), Client("site-2")]

    fedavg = FedAvg()
    fedavg.fl_ctx = FLContext()
    fedavg.engine = Engine()
    with caplog.at_level("ERROR"):
        assert sorted(fedavg.sample_clients(3)) == ["site-1", "site-2"]  # FedAvg's default num_clients is 3
    assert "greater than the number of available clients (2)" in caplog.text
    assert len(fedavg.sample_clients(1)) == 1 and sorted(fedavg.sample_clients()) == ["site-1", "site-2"]
    with pytest.raises(ValueError, match="num_clients"):
        fedavg.sample_clients(-1)


def test_a_large_array_is_weighed_on_several_cores_to_the_same_average():
    from flarelite.app_common.aggregators import weighted_aggregation_helper as wah

    rng = np.random.default_rng(1)
    size = wah._PARALLEL_MIN + 12_345  # over the threshold, and not a multiple of the parts
    values = [rng.standard_normal(size).astype(np.float32) for _ in range(3)]
    weights = [1.0, 2.5, 0.5]
    originals = [v.copy() for v in values]
    helper = wah.WeightedAggregationHelper()
    for i, (value, weight) in enumerate(zip(values, weights)):
        helper.add({"x": value}, weight, f"site-{i}", 0)
    got = helper.get_result()["x"]
    expected = sum(v.astype(np.float64) * w for v, w in zip(values, weights)) / sum(weights)
    assert np.allclose(got, expected, atol=1e-5)
    assert all(np.array_equal(v, o) for v, o in zip(values, originals))  # the contributions are untouched
