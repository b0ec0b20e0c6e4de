"""Tracking receivers end to end: clients log through AnalyticsSender + ConvertToFedEvent, the server's
TBAnalyticsReceiver and MLflowReceiver record them; the event files and the MLflow store are read back."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from event_support import fixture_module

from flarelite.apis.analytix import ANALYTIC_EVENT_TYPE
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_constant import ReservedKey
from flarelite.apis.fl_context import FLContextManager
from flarelite.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from flarelite.app_common.widgets.streaming import AnalyticsSender
from flarelite.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from flarelite.job_config import FedJob

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install tensorboard)",
)

SITES = ["site-1", "site-2"]


@pytest.fixture(scope="module")
def m() -> Iterator[ModuleType]:
    """The fixture components, imported as top-level module ``fed_event_modules`` (as a job's custom code)."""
    yield from fixture_module("fed_event_modules")


def tracking_job(m: ModuleType, *server_receivers: object) -> FedJob:
    job = FedJob(name="tracking", min_clients=2)
    job.to_server(m.OneTaskController())
    for receiver in server_receivers:
        job.to_server(receiver)
    for site in SITES:
        job.to(m.MetricsExecutor(), site)
        job.to(AnalyticsSender(), site, id="analytics_sender")
        job.to(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]), site)
    job.to(TBAnalyticsReceiver(tb_folder="my_tb"), "site-1")  # a client-side receiver: its own run dir
    return job


def load(folder: Path):
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    """(step, value) of each event of ``tag``, by step (the receiver keeps a peer's order only best effort)."""
    return sorted((e.step, round(e.value, 6)) for e in acc.Scalars(tag))


def test_tensorboard_receiver_end_to_end(m: ModuleType, tmp_path: Path) -> None:
    assert tracking_job(m, TBAnalyticsReceiver()).simulator_run(str(tmp_path), protocol="memory") == 0
    root = tmp_path / "server" / "tb_events"
    assert sorted(p.name for p in root.iterdir()) == SITES
    for i, site in enumerate(SITES, 1):
        folder = root / site
        assert list(folder.glob("events.out.tfevents.*"))
        acc = load(folder)
        assert scalars(acc, "loss") == [(0, 1.0 + i), (1, 0.5 + i), (2, round(1 / 3 + i, 6))]
        assert scalars(acc, "unstepped") == [(0, 7.0)]  # no step: TensorBoard shows 0
        assert scalars(acc, "lr") == [(0, 0.1)]  # PARAMETERS split: numbers as scalars...
        assert {"notes", "opt"} <= set(acc.Tags()["tensors"])  # ...strings as texts, like TEXT
        note = acc.Tensors("notes")[0].tensor_proto.string_val[0].decode()
        assert note == f"hello from {site}"
        assert acc.Tensors("opt")[0].tensor_proto.string_val[0] == b"sgd"
        # add_scalars: one subfolder per series, "<main_tag with / as _>_<tag>", scalar tag = main_tag
        assert scalars(load(folder / "acc_group_a"), "acc/group") == [(1, 0.5 + i)]
        assert scalars(load(folder / "acc_group_b"), "acc/group") == [(1, 0.25)]
    # the client-side receiver wrote into site-1's own run dir, under its own name, each record once
    own = load(tmp_path / "site-1" / "my_tb" / "site-1")
    assert scalars(own, "loss") == [(0, 2.0), (1, 1.5), (2, round(1 / 3 + 1, 6))]
    assert not (tmp_path / "site-2" / "my_tb").exists()


def test_tensorboard_missing_is_a_clear_logged_error(monkeypatch, tmp_path: Path, caplog) -> None:
    for name in [n for n in sys.modules if n == "tensorboard" or n.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None: "import tensorboard..." raises ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "flarelite.app_opt.tracking.tb.tb_event_writer", raising=False)
    receiver = TBAnalyticsReceiver()
    manager = FLContextManager(
        identity_name="server", job_id="job", private_stickers={ReservedKey.APP_ROOT: str(tmp_path)}
    )
    with pytest.raises(RuntimeError, match=r"pip install tensorboard"):
        receiver.initialize(manager.new_context())
    with caplog.at_level(logging.ERROR):
        receiver.handle_event(EventType.START_RUN, manager.new_context())  # logged, not raised
    assert "flarelite[tensorboard]" in caplog.text
    assert not (tmp_path / "tb_events").exists()


def test_mlflow_receiver_end_to_end(m: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow)")
    from mlflow.tracking import MlflowClient

    from flarelite.app_opt.tracking.mlflow.mlflow_receiver import MLflowReceiver

    receiver = MLflowReceiver(kw_args={"experiment_name": "exp", "run_tags": {"team": "a"}}, buffer_flush_time=0)
    assert receiver.events == ["fed.analytix_log_stats"]
    assert tracking_job(m, receiver).simulator_run(str(tmp_path), protocol="memory") == 0
    db = tmp_path / "server" / "mlflow.db"
    assert db.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("exp")
    runs = {r.data.tags["site"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == SITES
    for i, site in enumerate(SITES, 1):
        run = runs[site]
        assert run.info.run_name == f"{site}-simula-FLARE FL Run" and run.info.status == "FINISHED"
        assert run.data.tags["team"] == "a" and run.data.tags["job_id"] == "simulate_job"
        history = sorted((h.step, round(h.value, 6)) for h in client.get_metric_history(run.info.run_id, "loss"))
        assert history == [(0, 1.0 + i), (1, 0.5 + i), (2, round(1 / 3 + i, 6))]  # SCALAR became METRIC
        assert [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, "a")] == [(1, 0.5 + i)]
        assert run.data.params == {"lr": "0.1", "opt": "sgd"}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/site.txt"]
    artifacts = tmp_path / "server" / "artifacts"
    assert list(artifacts.rglob("site.txt"))
