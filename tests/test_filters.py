"""Filters: DXOFilter semantics, the stock filters' numbers, FedJob's export of filter chains, the runtime's chains."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from event_support import fixture_module

import flarelite
from flarelite.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from flarelite.apis.dxo_filter import DXOFilter
from flarelite.apis.event_type import EventType
from flarelite.apis.filter import ContentBlockedException, Filter, FilterChainType, FilterContextKey, FilterSource
from flarelite.apis.fl_constant import FLContextKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from flarelite.app_common.filters import ExcludeVars, PercentilePrivacy, SVTPrivacy
from flarelite.app_common.filters.convert_weights import ConvertWeights
from flarelite.app_common.filters.dxo_blocker import DXOBlocker
from flarelite.errors import ComponentBuildError, ConfigError
from flarelite.job_config import FedJob, JobCtx
from flarelite.job_config.defs import FilterType, JobTargetType
from flarelite.runtime.allowlist import ClassPolicy
from flarelite.runtime.components import build_component
from flarelite.runtime.filters import FilterError, SiteFilters, structural_copy

POLICY = ClassPolicy(allowed=["filter_modules"])  # what a site's operator would allow


@pytest.fixture(scope="module")
def fm() -> Iterator[ModuleType]:
    """The fixture components, imported as the top-level module ``filter_modules`` (as a job's custom code)."""
    yield from fixture_module("filter_modules")


def weights(kind: DataKind = DataKind.WEIGHTS, meta: dict | None = None, **arrays: Any) -> Shareable:
    return DXO(kind, dict(arrays), meta).to_shareable()


def data_of(s: Shareable) -> dict:
    return from_shareable(s).data


class Doubler(DXOFilter):
    """Doubles every array; returns None for DXOs with meta skip=True, a str for meta bad=True."""

    def __init__(self, data_kinds: list[str] | None = None, new_dxo: bool = False):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF], data_kinds_to_filter=data_kinds)
        self.new_dxo = new_dxo
        self.calls: list[str] = []

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Any:
        self.calls.append(str(dxo.data_kind))
        if dxo.get_meta_prop("skip"):
            return None
        if dxo.get_meta_prop("bad"):
            return "not a DXO"
        doubled = {k: v * 2 for k, v in dxo.data.items()}
        if self.new_dxo:
            return DXO(dxo.data_kind, doubled, {"fresh": True})
        dxo.data = doubled
        return dxo


# --- DXOFilter --------------------------------------------------------------------------------------------
def test_dxo_filter_filters_its_kinds_and_records_history() -> None:
    f = Doubler()
    out = f.process(weights(w=np.array([1.0, 2.0])), FLContext())
    dxo = from_shareable(out)
    np.testing.assert_array_equal(dxo.data["w"], [2.0, 4.0])
    assert dxo.get_filter_history() == ["Doubler"]
    metrics = DXO(DataKind.METRICS, {"acc": 0.5}).to_shareable()
    assert data_of(f.process(metrics, FLContext())) == {"acc": 0.5}  # not a kind it filters
    assert f.calls == ["WEIGHTS"]


def test_dxo_filter_passes_non_ok_results_plain_shareables_and_none() -> None:
    f = Doubler()
    bad = weights(w=np.array([1.0]))
    bad.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    assert f.process(bad, FLContext()) is bad and f.calls == []
    plain = Shareable({"x": 1})
    assert f.process(plain, FLContext()) is plain
    skipped = f.process(weights(meta={"skip": True}, w=np.array([1.0])), FLContext())
    dxo = from_shareable(skipped)
    np.testing.assert_array_equal(dxo.data["w"], [1.0])
    assert dxo.get_filter_history() is None  # None = not filtered: no history


def test_dxo_filter_walks_collections_recursively() -> None:
    inner = DXO(DataKind.COLLECTION, {"w": DXO(DataKind.WEIGHT_DIFF, {"a": np.array([3.0])})})
    top = DXO(DataKind.COLLECTION, {"inner": inner, "m": DXO(DataKind.METRICS, {"acc": 1.0})})
    f = Doubler()
    dxo = from_shareable(f.process(top.to_shareable(), FLContext()))
    leaf = dxo.data["inner"].data["w"]
    np.testing.assert_array_equal(leaf.data["a"], [6.0])
    assert leaf.get_filter_history() == ["Doubler"]
    assert dxo.data["m"].data == {"acc": 1.0} and dxo.data["m"].get_filter_history() is None
    assert dxo.get_filter_history() is None  # the collection itself is not a leaf


def test_dxo_filter_new_dxo_keeps_history_and_wrong_type_raises() -> None:
    s = weights(meta={MetaKey.FILTER_HISTORY: ["Earlier"]}, w=np.array([1.0]))
    dxo = from_shareable(Doubler(new_dxo=True).process(s, FLContext()))
    assert dxo.meta["fresh"] is True and dxo.get_filter_history() == ["Earlier", "Doubler"]
    with pytest.raises(RuntimeError, match="Doubler.process_dxo returned str"):
        Doubler().process(weights(meta={"bad": True}, w=np.array([1.0])), FLContext())


def test_dxo_filter_kind_arguments() -> None:
    assert Doubler().data_kinds == [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF]  # empty: the supported kinds
    assert Doubler([DataKind.WEIGHT_DIFF]).data_kinds == [DataKind.WEIGHT_DIFF]
    with pytest.raises(ValueError, match="cannot filter data kinds"):
        Doubler([DataKind.METRICS])
    with pytest.raises(ValueError, match="must be a list"):
        Doubler("WEIGHTS")  # type: ignore[arg-type]
    f = Doubler()
    f.set_prop(FilterContextKey.SOURCE, FilterSource.JOB)
    assert f.get_prop(FilterContextKey.SOURCE) == "job" and f.get_prop("nothing", 7) == 7


def test_filter_add_to_fed_job_checks_its_arguments() -> None:
    calls: list = []

    class Job:
        def add_filter(self, obj: Any, filter_type: str, tasks: list, ctx: Any) -> None:
            calls.append((obj, filter_type, tasks, ctx))

    f = Doubler()
    with pytest.raises(ValueError, match="filter_type=FilterType.TASK_DATA"):
        f.add_to_fed_job(Job(), "ctx")
    with pytest.raises(ValueError, match="list of task names"):
        f.add_to_fed_job(Job(), "ctx", filter_type=FilterType.TASK_DATA, tasks="train")  # type: ignore[arg-type]
    f.add_to_fed_job(Job(), "ctx", filter_type=FilterType.TASK_RESULT)
    assert calls == [(f, "TASK_RESULT", ["*"], "ctx")]
    assert FilterChainType.TASK_DATA_CHAIN == "task_data" and FilterContextKey.CHAIN_TYPE == "__chain_type"
    assert flarelite.FilterType is FilterType and "FilterType" in flarelite.__all__
    assert JobTargetType.get_target_type("server") == "server"
    assert JobTargetType.get_target_type("@ALL") == JobTargetType.get_target_type("site-1") == "client"


# --- ExcludeVars --------------------------------------------------------------------------------------------
def test_exclude_vars_list_and_regex() -> None:
    s = weights(**{"conv.w": np.ones(2), "conv.b": np.ones(1), "fc.w": np.ones(3)})
    assert sorted(data_of(ExcludeVars(["conv.b", "absent"]).process(s, FLContext()))) == ["conv.w", "fc.w"]
    s = weights(**{"conv.w": np.ones(2), "conv.b": np.ones(1), "fc.w": np.ones(3)})
    assert sorted(data_of(ExcludeVars(r"\.w$").process(s, FLContext()))) == ["conv.b"]  # search, not match
    s = weights(DataKind.WEIGHT_DIFF, **{"conv.w": np.ones(2), "fc.w": np.ones(3)})
    assert sorted(data_of(ExcludeVars("conv").process(s, FLContext()))) == ["fc.w"]
    m = DXO(DataKind.METRICS, {"conv": 1.0}).to_shareable()
    assert data_of(ExcludeVars("conv").process(m, FLContext())) == {"conv": 1.0}


def test_exclude_vars_skips_what_it_cannot_use(caplog: pytest.LogCaptureFixture) -> None:
    for arg in (None, "", [], 5, ["ok", 3]):
        f = ExcludeVars(arg)  # type: ignore[arg-type]
        assert f.skip, arg
        assert sorted(data_of(f.process(weights(a=np.ones(1), b=np.ones(1)), FLContext()))) == ["a", "b"]
    with caplog.at_level(logging.WARNING):
        out = ExcludeVars("^nomatch").process(weights(a=np.ones(1)), FLContext())
    assert list(data_of(out)) == ["a"]
    assert "no variable matches the regex '^nomatch'" in caplog.text
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ExcludeVars("(unclosed")


# --- PercentilePrivacy ------------------------------------------------------------------------------------
def test_percentile_privacy_by_hand() -> None:
    s = weights(
        DataKind.WEIGHT_DIFF,
        meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 2},
        a=np.array([0.001, -0.02, 0.005, 0.03]),
        b=np.array([[-0.004, 0.0]]),
    )
    out = data_of(PercentilePrivacy(percentile=50, gamma=0.012).process(s, FLContext()))
    # /2: |a| = .0005 .01 .0025 .015, |b| = .002 0; median of the six = (.002 + .0025) / 2 = .00225:
    # below it -> 0, the rest clipped to +-.012, times 2
    np.testing.assert_allclose(out["a"], [0.0, -0.02, 0.005, 0.024])
    np.testing.assert_allclose(out["b"], [[0.0, 0.0]])
    assert out["b"].shape == (1, 2)


def test_percentile_privacy_no_change_cases_and_scalars() -> None:
    for f in (PercentilePrivacy(gamma=0), PercentilePrivacy(percentile=101), PercentilePrivacy(percentile=-1)):
        out = from_shareable(f.process(weights(a=np.array([0.5, -0.5])), FLContext()))
        np.testing.assert_array_equal(out.data["a"], [0.5, -0.5])
        assert out.get_filter_history() is None
    out = data_of(PercentilePrivacy(percentile=0, gamma=1.0).process(weights(a=np.array([2.0]), n=3), FLContext()))
    assert out["n"] == 3 and out["a"].tolist() == [1.0]
    with pytest.raises(TypeError, match="works on numpy arrays: variable 'a' is builtins.list"):
        PercentilePrivacy().process(weights(a=[1.0, 2.0]), FLContext())


# --- SVTPrivacy -------------------------------------------------------------------------------------------
class RecordingRng:
    """A numpy Generator that records the Laplace scales asked for."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.scales: list[float] = []

    def laplace(self, scale: float, size: Any = None) -> Any:
        self.scales.append(scale)
        return self.rng.laplace(scale=scale, size=size)

    def choice(self, *args: Any, **kwargs: Any) -> Any:
        return self.rng.choice(*args, **kwargs)


def test_svt_privacy_with_negligible_noise_by_hand() -> None:
    f = SVTPrivacy(fraction=0.75, epsilon=1e12, noise_var=1e12, gamma=0.5, tau=0.3, replace=False)
    s = weights(DataKind.WEIGHT_DIFF, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 2}, w=np.array([0.8, -0.2, 1.8, -1.4]))
    out = data_of(f.process(s, FLContext()))
    # /2 -> .4 -.1 .9 -.7; |clip .5| = .4 .1 .5 .5: three reach the threshold .3 = c = ceil(.75 * 4);
    # released clipped to +-.5, the rest 0, times 2
    np.testing.assert_allclose(out["w"], [0.8, 0.0, 1.0, -1.0], atol=1e-6)


def test_svt_privacy_budget_split_and_noise_scales() -> None:
    f = SVTPrivacy(fraction=0.5, epsilon=0.3, noise_var=0.1, gamma=0.01, tau=0.0)
    assert f.budgets(4) == pytest.approx((0.06, 0.24, 0.4))  # 1 : (2*4)^(2/3) = 1 : 4; release 4 * noise_var
    f.rng = RecordingRng()  # type: ignore[assignment]
    f.process(weights(w=np.arange(8, dtype=np.float64) * 0.003), FLContext())
    gamma, c = 0.01, 4
    threshold, first_query, *_, release = f.rng.scales  # type: ignore[attr-defined]
    assert threshold == pytest.approx(gamma / 0.06)
    assert first_query == pytest.approx(2 * c * gamma / 0.24)
    assert release == pytest.approx(2 * c * gamma / 0.4) == pytest.approx(2 * gamma / 0.1)
    g = SVTPrivacy(epsilon=1.0, epsilon_threshold=0.25, epsilon_release=2.0)
    assert g.budgets(10) == pytest.approx((0.25, 0.75, 2.0))
    with pytest.raises(ValueError, match="nothing is left"):
        SVTPrivacy(epsilon=0.1, epsilon_query=0.2)
    for bad in ({"fraction": 0}, {"fraction": 1.5}, {"epsilon": -1}, {"gamma": 0}, {"epsilon_release": 0}):
        with pytest.raises(ValueError, match="SVTPrivacy"):
            SVTPrivacy(**bad)


def test_svt_privacy_releases_at_most_c_values_keeps_scalars_and_dtype() -> None:
    f = SVTPrivacy(fraction=0.1, epsilon=1.0, gamma=1e-3)
    f.rng = np.random.default_rng(1)
    s = weights(w=np.random.default_rng(2).normal(0, 1e-3, size=(10, 10)).astype(np.float32), n=5)
    out = data_of(f.process(s, FLContext()))
    assert out["n"] == 5 and out["w"].dtype == np.float32 and out["w"].shape == (10, 10)
    assert 1 <= np.count_nonzero(out["w"]) <= 11  # c = ceil(0.1 * 101) = 11 draws, with replacement
    assert np.all(np.abs(out["w"]) <= 1e-3 + 1e-9)


def test_svt_privacy_gives_up_after_a_bounded_number_of_passes(caplog: pytest.LogCaptureFixture) -> None:
    """A threshold no noisy query reaches (tau far above gamma): NVFlare loops forever; here the selection stops
    after MAX_SELECTION_PASSES (about 0.3 s per 10^6 values each), releases nothing, and says so."""
    from flarelite.app_common.filters.svt_privacy import MAX_SELECTION_PASSES

    assert MAX_SELECTION_PASSES <= 100
    f = SVTPrivacy(fraction=0.1, epsilon=100.0, gamma=1e-5, tau=1.0)
    with caplog.at_level(logging.WARNING):
        out = data_of(f.process(weights(DataKind.WEIGHT_DIFF, w=np.full(1000, 1e-3)), FLContext()))
    assert np.count_nonzero(out["w"]) == 0
    assert f"only 0 of 100 values passed the noisy threshold in {MAX_SELECTION_PASSES} passes" in caplog.text


def test_svt_privacy_ledger_and_reset_at_start_run() -> None:
    f = SVTPrivacy(fraction=0.5, epsilon=0.3, noise_var=0.1)
    ctx = FLContext()
    ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    for _ in range(2):
        f.process(weights(w=np.full(4, 1e-5)), ctx)
    ledger = f.get_privacy_ledger()
    assert [e["n_upload"] for e in ledger] == [2, 2] and ledger[0]["task_name"] == "train"
    per_call = 0.3 + 2 * 0.1
    assert ledger[0]["epsilon"] == pytest.approx(per_call)
    assert f.get_privacy_spent() == pytest.approx(2 * per_call)
    f.handle_event(EventType.START_RUN, ctx)
    assert f.get_privacy_ledger() == [] and f.get_privacy_spent() == 0.0
    assert (f.frac, f.eps_1, f.eps_3) == (0.5, 0.3, 0.1)


# --- DXOBlocker and ConvertWeights ------------------------------------------------------------------------
def test_dxo_blocker() -> None:
    blocker = DXOBlocker([DataKind.WEIGHTS])
    with pytest.raises(ContentBlockedException, match="WEIGHTS is blocked"):
        blocker.process(weights(a=np.ones(1)), FLContext())
    assert data_of(blocker.process(DXO(DataKind.METRICS, {"m": 1}).to_shareable(), FLContext())) == {"m": 1}
    allow = DXOBlocker([DataKind.METRICS], allow_data_kinds=True)
    with pytest.raises(ContentBlockedException, match="WEIGHT_DIFF is blocked"):
        allow.process(weights(DataKind.WEIGHT_DIFF, a=np.ones(1)), FLContext())
    for bad in ([], "WEIGHTS", [1]):
        with pytest.raises(ValueError, match="DXOBlocker"):
            DXOBlocker(bad)  # type: ignore[arg-type]


def test_convert_weights_against_the_task_data() -> None:
    base = np.array([1.0, 2.0])
    base.setflags(write=False)  # received arrays may be read-only: nothing is written in place
    ctx = FLContext()
    ctx.set_prop(FLContextKey.TASK_DATA, weights(w=base, other=np.ones(1)), private=True, sticky=False)
    mine = np.array([1.5, 1.0])
    mine.setflags(write=False)
    diff = from_shareable(ConvertWeights("weights_to_diff").process(weights(w=mine, extra=np.ones(1)), ctx))
    assert diff.data_kind == DataKind.WEIGHT_DIFF
    np.testing.assert_allclose(diff.data["w"], [0.5, -1.0])
    np.testing.assert_allclose(diff.data["extra"], [1.0])  # not in the base: unchanged
    back = from_shareable(ConvertWeights("diff_to_weights").process(diff.to_shareable(), ctx))
    assert back.data_kind == DataKind.WEIGHTS
    np.testing.assert_allclose(back.data["w"], [1.5, 1.0])
    # no task data, or a result of the other kind: unchanged
    untouched = from_shareable(ConvertWeights("weights_to_diff").process(weights(w=mine), FLContext()))
    assert untouched.data_kind == DataKind.WEIGHTS and untouched.get_filter_history() is None
    with pytest.raises(ValueError, match="invalid direction"):
        ConvertWeights("sideways")


# --- FedJob export ----------------------------------------------------------------------------------------
def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def test_export_writes_nvflare_filter_chains_and_they_build_again(fm: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="fj")
    job.to_server(fm.TraceController(tasks=["train"], out_file="x"))
    job.to_clients(fm.TraceExecutor())
    job.to(PercentilePrivacy(percentile=20, gamma=0.05), "server", tasks=["train"], filter_type=FilterType.TASK_RESULT)
    job.to(fm.TraceFilter("a"), "@ALL", tasks=["train", "validate"], filter_type=FilterType.TASK_RESULT)
    job.to(fm.TraceFilter("b"), "@ALL", tasks=["validate", "train"], filter_type=FilterType.TASK_RESULT)  # same set
    job.to(ExcludeVars(r"^bn\."), "@ALL", filter_type=FilterType.TASK_DATA)
    job.to(SVTPrivacy(fraction=0.5, epsilon=0.2), "@ALL", tasks=["submit"], filter_type=FilterType.TASK_RESULT)
    job_dir = Path(job.export_job(str(tmp_path)))
    server = read(job_dir / "app/config/config_fed_server.json")
    client = read(job_dir / "app/config/config_fed_client.json")
    pp = "flarelite.app_common.filters.percentile_privacy.PercentilePrivacy"
    kinds = ["WEIGHT_DIFF", "WEIGHTS"]
    assert server["task_data_filters"] == []
    assert server["task_result_filters"] == [
        {"tasks": ["train"], "filters": [{"path": pp, "args": {"percentile": 20, "gamma": 0.05, "data_kinds": kinds}}]}
    ]
    assert client["task_result_filters"] == [
        {
            "tasks": ["train", "validate"],
            "filters": [
                {"path": "filter_modules.TraceFilter", "args": {"mark": "a"}},
                {"path": "filter_modules.TraceFilter", "args": {"mark": "b"}},
            ],
        },
        {
            "tasks": ["submit"],
            "filters": [
                {
                    "path": "flarelite.app_common.filters.svt_privacy.SVTPrivacy",
                    "args": {"fraction": 0.5, "epsilon": 0.2, "data_kinds": kinds},
                }
            ],
        },
    ]
    ev = "flarelite.app_common.filters.exclude_vars.ExcludeVars"
    assert client["task_data_filters"] == [
        {"tasks": ["*"], "filters": [{"path": ev, "args": {"exclude_vars": r"^bn\.", "data_kinds": kinds}}]}
    ]
    assert sorted(p.name for p in (job_dir / "app/custom").iterdir()) == ["filter_modules.py"]  # no stdlib copied
    rebuilt = build_component(client["task_data_filters"][0]["filters"][0], "test")
    out = data_of(rebuilt.process(weights(**{"bn.w": np.ones(1), "fc.w": np.ones(1)}), FLContext()))
    assert list(out) == ["fc.w"]
    svt = build_component(client["task_result_filters"][1]["filters"][0], "test")
    assert (svt.fraction, svt.epsilon) == (0.5, 0.2)


def test_export_per_site_filters_merge_with_all(fm: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="fj")
    job.to_server(fm.TraceController(tasks=["train"], out_file="x"))
    job.to_clients(fm.TraceExecutor())
    job.to(fm.TraceFilter("all"), "@ALL", tasks=["train"], filter_type=FilterType.TASK_DATA)
    job.to(fm.TraceFilter("one"), "site-1", tasks=["train"], filter_type=FilterType.TASK_DATA)
    job_dir = Path(job.export_job(str(tmp_path)))
    chain = read(job_dir / "app_site-1/config/config_fed_client.json")["task_data_filters"]
    assert chain == [
        {
            "tasks": ["train"],
            "filters": [
                {"path": "filter_modules.TraceFilter", "args": {"mark": "all"}},
                {"path": "filter_modules.TraceFilter", "args": {"mark": "one"}},
            ],
        }
    ]


def test_filter_task_sets_must_be_equal_or_disjoint_and_filter_type_valid(fm: ModuleType) -> None:
    job = FedJob()
    job.to(fm.TraceFilter("a"), "server", tasks=["train", "validate"], filter_type=FilterType.TASK_RESULT)
    with pytest.raises(RuntimeError, match="overlap the task set"):
        job.to(fm.TraceFilter("b"), "server", tasks=["train"], filter_type=FilterType.TASK_RESULT)
    job.to(fm.TraceFilter("c"), "server", tasks=["train"], filter_type=FilterType.TASK_DATA)  # another chain
    job.to(fm.TraceFilter("d"), "@ALL", tasks=["train", "x"], filter_type=FilterType.TASK_DATA)
    with pytest.raises(RuntimeError, match="shares an app with 'site-1'"):
        job.to(fm.TraceFilter("e"), "site-1", tasks=["x"], filter_type=FilterType.TASK_DATA)
    with pytest.raises(ValueError, match="invalid filter_type 'TASK_BOTH'"):
        job.to(fm.TraceFilter("f"), "server", filter_type="TASK_BOTH")
    with pytest.raises(ValueError, match="needs filter_type"):
        job.to(fm.TraceFilter("g"), "server")
    with pytest.raises(TypeError, match="not a Filter"):
        job.add_filter(object(), FilterType.TASK_DATA, ["t"], JobCtx(object(), "server", None))  # type: ignore[arg-type]
    assert "site-1" not in job.clients  # the failed first to() left no empty app behind


# --- the runtime's chains ---------------------------------------------------------------------------------
class FakeSite:
    """Just what SiteFilters uses of a site runtime."""

    def __init__(self) -> None:
        self.name = "site-9"
        self.components: dict[str, Any] = {}
        self.events: list[str] = []
        self.log = logging.LoggerAdapter(logging.getLogger("test.filters"), {})

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        self.events.append(event_type)


def spec(fm: ModuleType, cls: str, **args: Any) -> dict:
    return {"path": f"filter_modules.{cls}", "args": args}


def test_site_chains_run_every_matching_entry_in_order(fm: ModuleType) -> None:
    site = FakeSite()
    chains = SiteFilters("client")
    config = {
        "task_data_filters": [
            {"tasks": ["*"], "filters": [spec(fm, "TraceFilter", mark="star")]},
            {"tasks": ["train"], "filters": [spec(fm, "TraceFilter", mark="t1"), spec(fm, "TraceFilter", mark="t2")]},
            {"tasks": ["val_*"], "filters": [spec(fm, "TraceFilter", mark="val")]},
        ],
        "task_result_filters": [{"tasks": ["train"], "filters": [spec(fm, "TraceFilter", mark="r")]}],
    }
    chains.load(site, config, POLICY)
    assert sorted(site.components) == [
        "task_data_filter_0",
        "task_data_filter_1",
        "task_data_filter_2",
        "task_data_filter_3",
        "task_result_filter_0",
    ]
    assert all(isinstance(c, Filter) for c in site.components.values())
    assert site.components["task_data_filter_0"].get_prop(FilterContextKey.CHAIN_TYPE) == "task_data"
    assert site.components["task_result_filter_0"].get_prop(FilterContextKey.SOURCE) == FilterSource.JOB

    def marks(task: str) -> list[str]:
        out = chains.apply(site, FilterChainType.TASK_DATA_CHAIN, task, Shareable({"trace": []}), FLContext())
        return [t.split("|")[0] for t in out["trace"]]

    assert marks("train") == ["star", "t1", "t2"]  # "*" applies to every task, next to the named entry
    assert marks("val_1") == ["star", "val"]  # config order
    assert marks("other") == ["star"]
    assert site.events[:2] == [EventType.BEFORE_TASK_DATA_FILTER, EventType.AFTER_TASK_DATA_FILTER]
    ctx = FLContext()
    out = chains.apply(site, FilterChainType.TASK_RESULT_CHAIN, "validate", Shareable({"trace": []}), ctx)
    assert out["trace"] == [] and ctx.get_prop("__filter_dir__") == "out"


def test_site_chain_errors(fm: ModuleType) -> None:
    site = FakeSite()
    chains = SiteFilters("server")
    chains.load(site, {"task_result_filters": [{"tasks": ["t"], "filters": [spec(fm, "FailingFilter")]}]}, POLICY)
    result = make_reply(ReturnCode.OK)
    result.add_cookie("round", 3)
    with pytest.raises(FilterError) as info:
        chains.apply(site, FilterChainType.TASK_RESULT_CHAIN, "t", result, FLContext())
    reply = info.value.reply(like=result)
    assert reply.get_return_code() == ReturnCode.TASK_RESULT_FILTER_ERROR and reply.get_cookie("round") == 3
    assert "FailingFilter failed on task 't' at site-9" in reply.get_header(ReservedHeaderKey.ERROR)
    assert info.value.reply(aborted=True).get_return_code() == ReturnCode.TASK_ABORTED
    bad_configs = [
        ({"task_data_filters": [{"tasks": ["t"], "filters": [spec(fm, "TraceExecutor")]}]}, "is not a Filter"),
        ({"task_data_filters": [{"tasks": "t", "filters": []}]}, "'tasks' must be"),
        ({"task_data_filters": [{"tasks": ["t"], "filters": [], "direction": "up"}]}, "'direction'"),
        ({"task_data_filters": [{"tasks": ["t"], "filters": [], "extra": 1}]}, "unknown keys"),
        ({"task_data_filters": [{"tasks": ["t"], "filters": []}, {"tasks": ["t"], "filters": []}]}, "already has"),
    ]
    for config, message in bad_configs:
        with pytest.raises(ConfigError, match=message):
            SiteFilters("client").load(FakeSite(), config, POLICY)
    with pytest.raises(ComponentBuildError, match="is not allowed"):  # the site's ClassPolicy decides
        SiteFilters("client").load(FakeSite(), {"task_data_filters": [{"filters": [spec(fm, "TraceFilter")]}]}, None)


def test_structural_copy_shares_arrays_only() -> None:
    arr = np.ones(3)
    s = DXO(DataKind.WEIGHTS, {"a": arr, "nested": {"b": [arr]}}).to_shareable()
    c = structural_copy(s)
    assert isinstance(c, Shareable) and c is not s
    assert c["DXO"]["data"] is not s["DXO"]["data"] and c["DXO"]["data"]["a"] is arr
    del c["DXO"]["data"]["nested"]
    assert "nested" in s["DXO"]["data"]
