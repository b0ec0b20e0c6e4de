"""app_common workflows in real simulator runs: FedAvg (weighting, persistence, early stop, metrics artifacts),
ScatterAndGather, CrossSiteModelEval / CrossSiteEval, CyclicController / Cyclic, a user ModelController, and the
``ignore_result_error`` policy with a failing client. Numpy only; the site components are in
tests/fedjob_fixtures/wf_fixtures.py so that process-mode sites can import them from the job's custom/ folder."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.dxo import from_file as dxo_from_file
from flarelite.apis.executor import Executor
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal
from flarelite.app_common.aggregators import InTimeAccumulateWeightedAggregator
from flarelite.app_common.app_constant import AppConstants
from flarelite.app_common.np.np_model_locator import NPModelLocator
from flarelite.app_common.np.np_model_persistor import NPModelPersistor
from flarelite.app_common.np.np_validator import NPValidator
from flarelite.app_common.shareablegenerators import FullModelShareableGenerator
from flarelite.app_common.utils.fl_model_utils import FLModelUtils
from flarelite.app_common.widgets.intime_model_selector import IntimeModelSelector
from flarelite.app_common.widgets.metrics_artifact_writer import MetricsArtifactWriter
from flarelite.app_common.widgets.validation_json_generator import ValidationJsonGenerator
from flarelite.app_common.workflows.cross_site_eval import CrossSiteEval
from flarelite.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from flarelite.app_common.workflows.cyclic import Cyclic
from flarelite.app_common.workflows.cyclic_ctl import CyclicController
from flarelite.app_common.workflows.fedavg import FedAvg
from flarelite.app_common.workflows.scatter_and_gather import ScatterAndGather
from flarelite.errors import RunFailedError
from flarelite.job_config import FedJob

FIXTURES = str(Path(__file__).parent / "fedjob_fixtures")
ADD = {"site-1": 1.0, "site-2": 2.0, "site-3": 4.0}  # what each site adds to the model it receives
STEPS = {"site-1": 1, "site-2": 3}  # NUM_STEPS_CURRENT_ROUND; site-3 sends none (weight 1.0)
ZEROS = [[0.0, 0.0], [0.0, 0.0]]


@pytest.fixture(scope="module")
def m() -> Iterator[ModuleType]:
    """The fixture components, imported as top-level module ``wf_fixtures`` (FedJob copies it to custom/)."""
    added = FIXTURES not in sys.path
    if added:
        sys.path.insert(0, FIXTURES)
    yield importlib.import_module("wf_fixtures")
    if added and FIXTURES in sys.path:
        sys.path.remove(FIXTURES)


@pytest.fixture(autouse=True)
def _clean(m: ModuleType) -> Iterator[None]:
    m.reset()
    yield
    m.reset()


def server_npy(ws: Path) -> np.ndarray:
    return np.load(ws / "server" / "models" / "server.npy", allow_pickle=False)


def weighted_add(sites: list[str], agg_weights: dict | None = None) -> float:
    """The hand-computed FedAvg step: sum(w_i * add_i) / sum(w_i), w_i = aggregation weight * NUM_STEPS."""
    w = {s: (agg_weights or {}).get(s, 1.0) * STEPS.get(s, 1) for s in sites}
    return sum(w[s] * ADD[s] for s in sites) / sum(w.values())


def test_fedavg_with_np_persistor_in_processes(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="fedavg_np", min_clients=3)
    job.to_server(FedAvg(num_clients=3, num_rounds=2, aggregation_weights={"site-1": 2.0}))
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(m.AddTrainer(add=ADD, steps=STEPS), tasks=["train"])
    assert job.simulator_run(str(tmp_path / "ws"), n_clients=3) == 0  # default: one process per site
    step = weighted_add(["site-1", "site-2", "site-3"], {"site-1": 2.0})
    assert step == pytest.approx(2.0)  # (2*1*1 + 1*3*2 + 1*1*4) / (2 + 3 + 1)
    np.testing.assert_allclose(server_npy(tmp_path / "ws"), np.full((2, 2), 2 * step))


def test_user_model_controller_writes_only_run_in_processes(m: ModuleType, tmp_path: Path) -> None:
    job = FedJob(name="mean", min_clients=3)
    job.to_server(m.MeanController(rounds=2, n=3))
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(m.AddTrainer(add=ADD), tasks=["train"])
    assert job.simulator_run(str(tmp_path / "ws"), n_clients=3) == 0
    np.testing.assert_allclose(server_npy(tmp_path / "ws"), np.full((2, 2), 2 * 7.0 / 3))


def test_fedavg_events_feed_the_model_selector_and_the_metrics_artifacts(m: ModuleType, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="fedavg_metrics", min_clients=3)
    job.to_server(FedAvg(num_clients=3, num_rounds=2))
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_server(IntimeModelSelector(key_metric="accuracy"), id="model_selector")
    job.to_server(MetricsArtifactWriter(), id="metrics_writer")
    job.to_clients(m.AddTrainer(add=ADD, steps=STEPS, metrics=True), tasks=["train"])
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    step = weighted_add(["site-1", "site-2", "site-3"])
    np.testing.assert_allclose(server_npy(ws), np.full((2, 2), 2 * step))
    # the clients got the aggregate of round 0 in round 1
    assert sorted(v for v in m.VISITS if v[1] == 1) == [
        (s, 1, pytest.approx(step)) for s in ("site-1", "site-2", "site-3")
    ]

    rounds = [json.loads(line) for line in (ws / "server" / "metrics" / "round_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert [r["aggregated_metrics"] for r in rounds] == [
        [{"name": "accuracy", "value": pytest.approx(10.0)}],
        [{"name": "accuracy", "value": pytest.approx(20.0)}],
    ]
    sites = {s["name"]: s for s in rounds[1]["sites"]}
    assert sorted(sites) == ["site-1", "site-2", "site-3"]
    assert sites["site-2"]["weight"] == pytest.approx(3.0)
    summary = json.loads((ws / "server" / "metrics" / "metrics_summary.json").read_text())
    assert summary["final_round"] == 1
    assert summary["final_aggregated_metrics"] == [{"name": "accuracy", "value": pytest.approx(20.0)}]
    assert summary["best_round"] == 1  # round 0 is skipped by the selector
    assert summary["key_metric"] == {"name": "accuracy", "mode": "max"}


def test_fedavg_stop_cond_stops_early_and_saves_to_the_run_folder(m: ModuleType, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="fedavg_stop", min_clients=3)
    job.to_server(
        FedAvg(num_clients=3, num_rounds=5, stop_cond="accuracy >= 20", persistor_id="", model={"numpy_key": [0.0]})
    )
    job.to_clients(m.AddTrainer(add=ADD, steps=STEPS, metrics=True), tasks=["train"])
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    assert {v[1] for v in m.VISITS} == {0, 1}  # round 1 reached accuracy 20: no round 2
    saved = FLModelUtils.from_dxo(dxo_from_file(str(ws / "server" / "FL_global_model.pt")))  # safe codec, no pickle
    np.testing.assert_allclose(saved.params["numpy_key"], [2 * weighted_add(["site-1", "site-2", "site-3"])])
    assert saved.metrics == {"accuracy": pytest.approx(20.0)}


@pytest.mark.parametrize("policy", [True, False, None])
def test_ignore_result_error_policy_with_a_failing_client(m: ModuleType, tmp_path: Path, policy) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="fedavg_fail", min_clients=3)
    job.to_server(FedAvg(num_clients=3, num_rounds=1, ignore_result_error=policy))
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(m.AddTrainer(add=ADD, steps=STEPS, fail_sites=["site-3"]), tasks=["train"])
    if policy is True:
        assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
        np.testing.assert_allclose(server_npy(ws), np.full((2, 2), weighted_add(["site-1", "site-2"])))
    else:  # False always fails; None fails because FedAvg waits for every sampled client
        with pytest.raises(RunFailedError, match="site-3"):
            job.simulator_run(str(ws), n_clients=3, protocol="memory")
        assert not (ws / "server" / "models" / "server.npy").exists()


def test_scatter_and_gather_ignores_a_failure_while_min_clients_is_reachable(m: ModuleType, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="sag", min_clients=3)
    job.to_server(
        ScatterAndGather(min_clients=2, num_rounds=2, wait_time_after_min_received=10, persistor_id="persistor")
    )
    job.to_server(InTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS), id="aggregator")
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(m.AddTrainer(add=ADD, steps=STEPS, fail_sites=["site-3"]), tasks=["train"])
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    np.testing.assert_allclose(server_npy(ws), np.full((2, 2), 2 * weighted_add(["site-1", "site-2"])))
    assert sorted({v[1] for v in m.VISITS}) == [0, 1]  # the round header reached the clients


def test_cross_site_model_eval_writes_cross_val_results(m: ModuleType, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="cse", min_clients=2)
    job.to_server(FedAvg(num_clients=2, num_rounds=1))
    job.to_server(CrossSiteModelEval(model_locator_id="model_locator"))
    job.to_server(NPModelPersistor(model=[[1.0, 2.0], [3.0, 4.0]]), id="persistor")
    job.to_server(NPModelLocator(), id="model_locator")
    job.to_server(ValidationJsonGenerator(), id="json_generator")
    job.to_clients(m.AddTrainer(add=ADD, steps=STEPS), tasks=["train"])
    job.to_clients(m.LocalModelSubmitter(), tasks=["submit_model"])
    job.to_clients(NPValidator(epsilon=0), tasks=["validate"])
    assert job.simulator_run(str(ws), n_clients=2, protocol="memory") == 0

    server_model = np.array([[1.0, 2.0], [3.0, 4.0]]) + weighted_add(["site-1", "site-2"])
    expected_server = float(np.sum(server_model / server_model.max()))
    results = json.loads((ws / "server" / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(results) == ["site-1", "site-2"]
    for data_client in ("site-1", "site-2"):
        assert results[data_client] == {
            "site-1": {"accuracy": pytest.approx(2.5)},  # sum(w / max(w)) of [[k, 2k], [3k, 4k]]
            "site-2": {"accuracy": pytest.approx(2.5)},
            "SRV_server": {"accuracy": pytest.approx(expected_server)},
        }
    cross_val = ws / "server" / "cross_site_val"
    assert sorted(p.name for p in (cross_val / "model_shareables").iterdir()) == ["SRV_server", "site-1", "site-2"]
    assert len(list((cross_val / "result_shareables").iterdir())) == 6
    saved = dxo_from_file(str(cross_val / "model_shareables" / "site-2"))
    np.testing.assert_allclose(saved.data["numpy_key"], [[2.0, 4.0], [6.0, 8.0]])


def test_cross_site_eval_validates_client_models_and_the_saved_global_model(m: ModuleType, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="cse_flmodel", min_clients=2)
    job.to_server(FedAvg(num_clients=2, num_rounds=1, persistor_id="", model={"w": [0.0]}))
    job.to_server(CrossSiteEval())
    job.to_clients(m.AddTrainer(add=ADD, steps=STEPS), tasks=["train"])
    job.to_clients(m.FLModelSiteExecutor(), tasks=["submit_model", "validate"])
    assert job.simulator_run(str(ws), n_clients=2, protocol="memory") == 0
    results = json.loads((ws / "server" / "cross_site_val" / "cross_val_results.json").read_text())
    global_sum = weighted_add(["site-1", "site-2"])
    for data_client in ("site-1", "site-2"):
        assert results[data_client] == {
            "site-1": {"sum": 1.0},
            "site-2": {"sum": 2.0},
            "FL_global_model.pt": {"sum": pytest.approx(global_sum)},
        }


def test_cyclic_controller_relays_the_model_in_fixed_order(m: ModuleType, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="cyclic_ctl", min_clients=3)
    job.to_server(CyclicController(num_rounds=2))
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_clients(m.AddTrainer(add=ADD), tasks=["train"])
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    assert m.VISITS == [
        ("site-1", 0, 0.0),
        ("site-2", 0, 1.0),
        ("site-3", 0, 3.0),
        ("site-1", 1, 7.0),
        ("site-2", 1, 8.0),
        ("site-3", 1, 10.0),
    ]
    np.testing.assert_allclose(server_npy(ws), np.full((2, 2), 14.0))


def test_cyclic_model_controller_passes_the_model_around(m: ModuleType, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="cyclic", min_clients=3)
    job.to_server(Cyclic(num_clients=3, num_rounds=1))
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(m.AddTrainer(add=ADD), tasks=["train"])
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    assert [(site, first) for site, _, first in m.VISITS] == [("site-1", 0.0), ("site-2", 1.0), ("site-3", 3.0)]
    np.testing.assert_allclose(server_npy(ws), np.full((2, 2), 7.0))


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (
            FedAvg,
            {
                "num_clients": 2,
                "num_rounds": 7,
                "persistor_id": "p",
                "ignore_result_error": True,
                "task_check_period": 0.1,
                "stop_cond": "acc > 1",
                "patience": 2,
                "exclude_vars": "x",
                "aggregation_weights": {"site-1": 2.0},
                "save_filename": "m.bin",
                "fedprox_mu": 0.1,
            },
        ),
        (Cyclic, {"num_clients": 3, "num_rounds": 2, "start_round": 1, "memory_gc_rounds": 2}),
        (
            ScatterAndGather,
            {
                "min_clients": 2,
                "num_rounds": 3,
                "wait_time_after_min_received": 1,
                "persistor_id": "p",
                "train_timeout": 5,
                "ignore_result_error": False,
                "persist_every_n_rounds": 2,
            },
        ),
        (
            CrossSiteModelEval,
            {
                "task_check_period": 0.1,
                "submit_model_timeout": 5,
                "validation_timeout": 6,
                "model_locator_id": "loc",
                "submit_model_task_name": "",
                "cleanup_models": True,
                "participating_clients": ["site-1"],
                "wait_for_clients_timeout": 3,
            },
        ),
        (CrossSiteEval, {"submit_model_timeout": 5, "validation_timeout": 6, "server_models": ["a"]}),
        (
            CyclicController,
            {
                "num_rounds": 2,
                "task_assignment_timeout": 3,
                "order": ["site-2", "site-1"],
                "allow_early_termination": True,
                "persist_every_n_rounds": 0,
            },
        ),
        (
            InTimeAccumulateWeightedAggregator,
            {
                "exclude_vars": "x",
                "aggregation_weights": {"site-1": 2.0},
                "expected_data_kind": "WEIGHTS",
                "weigh_by_local_iter": False,
            },
        ),
        (
            NPModelPersistor,
            {"model_dir": "m", "model_name": "x.npy", "model": [[1.0]], "source_ckpt_file_full_name": "c"},
        ),
        (NPModelLocator, {"model_dir": "m", "model_name": {"a": "a.npy"}}),
        (NPValidator, {"epsilon": 0, "sleep_time": 1, "validate_task_name": "val"}),
        (
            IntimeModelSelector,
            {
                "weigh_by_local_iter": True,
                "aggregation_weights": {"s": 1.0},
                "validation_metric_name": "m",
                "key_metric": "acc",
                "negate_key_metric": True,
            },
        ),
        (ValidationJsonGenerator, {"results_dir": "r", "json_file_name": "j.json"}),
        (
            MetricsArtifactWriter,
            {
                "results_dir": "r",
                "summary_file_name": "s.json",
                "round_file_name": "r.jsonl",
                "limits": {"max_sites_per_round": 5},
            },
        ),
    ],
)
def test_every_argument_reaches_the_job_config(cls, kwargs) -> None:
    from flarelite.job_config.exporter import record_component

    recorded = record_component(cls(**kwargs), cls.__name__)
    assert recorded["args"] == kwargs  # each argument is stored under its name, so the sites get it


def test_cyclic_relay_orders() -> None:
    from flarelite.apis.client import Client
    from flarelite.apis.fl_constant import ReservedKey
    from flarelite.apis.fl_context import FLContext

    class Engine:
        def get_clients(self):
            return [Client(f"site-{i}") for i in range(1, 5)]

    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, Engine(), private=True, sticky=True)
    assert CyclicController()._get_relay_orders(fl_ctx) == ["site-1", "site-2", "site-3", "site-4"]
    assert CyclicController(order=["site-3", "site-1"])._get_relay_orders(fl_ctx) == ["site-3", "site-1"]
    no_repeat = CyclicController(order="RANDOM_WITHOUT_SAME_IN_A_ROW")
    for _ in range(30):
        no_repeat._last_client = "site-2"
        order = no_repeat._get_relay_orders(fl_ctx)
        assert sorted(order) == ["site-1", "site-2", "site-3", "site-4"] and order[0] != "site-2"
    with pytest.raises(ValueError, match="order"):
        CyclicController(order="SORTED")


# ------------------------------------------------------------------------------------ hostile clients
class OddSite(Executor):
    """Answers "train" with the received numpy model + 1 (``diff``: the difference, 1), except ``odd_site``,
    which sends ``mischief``: ``shape``, ``nan``, ``text``, ``extra`` (a key the model lacks) or ``round``
    (a forged round header)."""

    def __init__(self, mischief: str = "shape", odd_site: str = "site-1", diff: bool = False) -> None:
        super().__init__()
        self.mischief = mischief
        self.odd_site = odd_site
        self.diff = diff

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        w = np.asarray(from_shareable(shareable).data["numpy_key"], dtype=np.float64)
        data: dict = {"numpy_key": np.ones_like(w) if self.diff else w + 1.0}
        odd = fl_ctx.get_identity_name() == self.odd_site
        if odd and self.mischief == "shape":
            data = {"numpy_key": np.ones((5, *w.shape))}
        elif odd and self.mischief == "nan":
            data = {"numpy_key": np.full(w.shape, np.nan)}
        elif odd and self.mischief == "text":
            data = {"numpy_key": "weights"}
        elif odd and self.mischief == "extra":
            data["evil"] = np.ones(3)
        result = DXO(DataKind.WEIGHT_DIFF if self.diff else DataKind.WEIGHTS, data).to_shareable()
        if odd and self.mischief == "round":
            result.set_header(AppConstants.CURRENT_ROUND, "abc")
        return result


@pytest.mark.parametrize(
    "mischief, logged",
    [
        ("shape", "'numpy_key' has shape (5, 2, 2), the global model's has shape (2, 2)"),
        ("nan", "'numpy_key' holds NaN or infinite values"),
        ("text", "'numpy_key' is a str"),
        ("extra", "dropped 1 key(s) the global model does not have: 'evil'"),
        ("round", "is not a valid FLModel: FLModel current_round must be an int or None, got str"),
    ],
)
def test_fedavg_keeps_going_when_a_client_sends_hostile_params(tmp_path: Path, mischief, logged) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="fedavg_odd", min_clients=3)
    job.to_server(FedAvg(num_clients=3, num_rounds=2))
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(OddSite(mischief), tasks=["train"])
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    np.testing.assert_array_equal(server_npy(ws), np.full((2, 2), 2.0))  # the honest sites' mean, shape kept
    log = (ws / "server" / "log.txt").read_text()
    assert logged in log and "site-1" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("mischief", ["extra", "shape", "nan"])
def test_scatter_and_gather_keeps_going_when_a_client_sends_a_hostile_diff(tmp_path: Path, mischief) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="sag_odd", min_clients=3)
    job.to_server(ScatterAndGather(min_clients=3, num_rounds=2, persistor_id="persistor"))
    job.to_server(InTimeAccumulateWeightedAggregator(), id="aggregator")  # WEIGHT_DIFF
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(OddSite(mischief, diff=True), tasks=["train"])
    # before: "extra" ended the run in the shareable generator, "shape" made the model (5, 2, 2), "nan" NaN
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    np.testing.assert_array_equal(server_npy(ws), np.full((2, 2), 2.0))


class NamedModelSite(Executor):
    """Cross-site evaluation by site names: submits ``[len(name)]``; validates with ``{"sum": sum(weights)}`` and
    a forged ``_model_owner_`` cookie."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name == AppConstants.TASK_SUBMIT_MODEL:
            return DXO(DataKind.WEIGHTS, {"w": np.array([float(len(fl_ctx.get_identity_name()))])}).to_shareable()
        total = float(np.sum(from_shareable(shareable).data["w"]))
        result = DXO(DataKind.METRICS, {"sum": total}).to_shareable()
        result.add_cookie(AppConstants.MODEL_OWNER, "a")  # a lie: the server knows which model it sent
        return result


def test_cross_site_model_eval_is_safe_with_every_site_name_the_runtime_admits(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    clients = ["a", "a_b", "b_c", "c", "SRV_x"]  # a_b + c and a + b_c share "a_b_c"; SRV_ is the server's prefix
    job = FedJob(name="cse_names", min_clients=len(clients))
    job.to_server(CrossSiteModelEval())
    job.to_server(ValidationJsonGenerator(), id="json_generator")
    job.to_clients(NamedModelSite(), tasks=["submit_model", "validate"])
    assert job.simulator_run(str(ws), clients=clients, protocol="memory") == 0
    results = json.loads((ws / "server" / "cross_site_val" / "cross_val_results.json").read_text())
    owners = ["a", "a_b", "b_c", "c"]  # SRV_x's model is refused: its file would replace a server model's
    assert results == {d: {o: {"sum": float(len(o))} for o in owners} for d in clients}
    cross_val = ws / "server" / "cross_site_val"
    assert sorted(p.name for p in (cross_val / "model_shareables").iterdir()) == owners
    assert len(list((cross_val / "result_shareables").iterdir())) == len(clients) * len(owners)  # none replaced
    assert {p.name for p in (cross_val / "result_shareables").iterdir()} >= {"a_b_c", "a_b_c.2"}
    assert "names starting with 'SRV_' are the server's models" in (ws / "server" / "log.txt").read_text()


def test_validation_json_generator_records_what_json_can_hold_and_skips_the_rest(tmp_path: Path) -> None:
    from flarelite.apis.event_type import EventType
    from flarelite.apis.fl_constant import ReservedKey
    from flarelite.apis.fl_context import FLContextManager
    from flarelite.apis.workspace import Workspace
    from flarelite.app_common.app_event_type import AppEventType

    workspace = Workspace(str(tmp_path), "server", str(tmp_path / "server"))
    fl_ctx = FLContextManager(private_stickers={ReservedKey.WORKSPACE_OBJECT: workspace}).new_context()
    generator = ValidationJsonGenerator()
    generator.handle_event(EventType.START_RUN, fl_ctx)
    for client, metrics in (
        ("site-1", {"accuracy": np.float32(0.5), "per_class": np.array([0.25, 0.75])}),
        ("site-2", {"accuracy": 0.9, "note": b"\x00bytes"}),  # bytes: before, the whole file was lost
    ):
        fl_ctx.set_prop(AppConstants.MODEL_OWNER, "SRV_server", private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.DATA_CLIENT, client, private=True, sticky=False)
        result = DXO(DataKind.METRICS, metrics).to_shareable()
        fl_ctx.set_prop(AppConstants.VALIDATION_RESULT, result, private=True, sticky=False)
        generator.handle_event(AppEventType.VALIDATION_RESULT_RECEIVED, fl_ctx)
    generator.handle_event(EventType.END_RUN, fl_ctx)
    path = tmp_path / "server" / "cross_site_val" / "cross_val_results.json"
    assert json.loads(path.read_text()) == {"site-1": {"SRV_server": {"accuracy": 0.5, "per_class": [0.25, 0.75]}}}
    assert [p.name for p in path.parent.iterdir()] == ["cross_val_results.json"]  # no temporary file left


@pytest.mark.parametrize("controller", ["Cyclic", "CyclicController"])
@pytest.mark.parametrize("mischief", ["nan", "shape"])
def test_cyclic_workflows_do_not_pass_on_a_hostile_model(tmp_path: Path, controller, mischief) -> None:
    ws = tmp_path / "ws"
    job = FedJob(name="cyclic_odd", min_clients=3)
    if controller == "Cyclic":
        job.to_server(Cyclic(num_clients=3, num_rounds=1))
    else:
        job.to_server(CyclicController(num_rounds=1))
        job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_server(NPModelPersistor(model=ZEROS), id="persistor")
    job.to_clients(OddSite(mischief, odd_site="site-2"), tasks=["train"])
    assert job.simulator_run(str(ws), n_clients=3, protocol="memory") == 0
    # site-1 adds 1, site-2's model is not passed on, site-3 adds 1 to site-1's
    np.testing.assert_array_equal(server_npy(ws), np.full((2, 2), 2.0))
    assert "site-2" in (ws / "server" / "log.txt").read_text()
