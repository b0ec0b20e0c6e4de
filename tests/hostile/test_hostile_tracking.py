"""Tracking records from a hostile site: the receivers write only inside their folders, bound what one record may
cost, keep the honest records when a bad one comes, and log a peer's bad records at most once per 10 s.

A record reaches a receiver as a federated event whose origin the transport proved (see test_hostile_fed_events);
everything else in it (tags, values, steps, paths, kwargs) is the sender's word. Before the fixes: one invalid
MLflow name (or a changed parameter) lost every record buffered with it; a 300-character add_scalars tag or a step
past int64 failed with a traceback per record; a record with 10^5 MLflow tags held the event worker for ~30 s.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest
from event_support import RecordingEngine, received_ctx

from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_constant import ReservedKey
from flarelite.apis.shareable import Shareable
from flarelite.app_common.widgets.streaming import MAX_RECORD_ENTRIES

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

FED = "fed.analytix_log_stats"


def record(tag, value, data_type: str, writer: str = "TORCH_TENSORBOARD", **extra) -> Shareable:
    """A record as a peer may send it: anything in the DXO's data, the codec's str values in its meta."""
    data = {"track_key": tag, "track_value": value, **extra}
    return DXO(DataKind.ANALYTIC, data, {"analytics_data_type": data_type, "tracker_key": writer}).to_shareable()


def started(receiver, root: Path) -> RecordingEngine:
    engine = RecordingEngine("server", **{ReservedKey.APP_ROOT: str(root)})
    engine.components = {"receiver": receiver}
    engine.fire_event(EventType.START_RUN, engine.new_context())
    return engine


def files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names]


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    if not folder.is_dir():
        return []
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_tensorboard_names_stay_inside_the_tb_folder(tmp_path: Path) -> None:
    from flarelite.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver

    root = tmp_path / "run"
    receiver = TBAnalyticsReceiver()
    engine = started(receiver, root)
    hostile = ["../../../../escape", str(tmp_path / "abs"), "a\x00b", "..", ".", "", "x" * 1000, "é" * 300]
    for main_tag in hostile:
        engine.fire_event(FED, received_ctx(engine, "site-1", record(main_tag, {"s": 1.0}, "SCALARS")))
    for origin in ["../evil", str(tmp_path / "abs_origin"), "a\x00", "...", "y" * 1000]:  # save's contract: any name
        receiver.save(engine.new_context(), record("loss", 2.0, "SCALAR", global_step=1), origin)
    engine.fire_event(EventType.END_RUN, engine.new_context())
    tb_root = (root / "tb_events").resolve()
    written = files_under(tmp_path)
    assert written and all(tb_root in p.resolve().parents for p in written), written
    assert not (tmp_path / "escape").exists() and not (tmp_path / "abs").exists()
    site = root / "tb_events" / "site-1"
    series = sorted(p.name for p in site.iterdir() if p.is_dir())
    assert len(series) == len(hostile)  # every series was written, each into a folder of its own
    assert all(len(name.encode()) <= 200 for name in series)
    long_series = [p for p in site.iterdir() if p.name.startswith("xxxx")]
    assert scalars(long_series[0], "x" * 1000) == [(0, 1.0)]  # the scalar keeps its full tag
    origins = [p for p in (root / "tb_events").iterdir() if p.name != "site-1"]
    assert len(origins) == 5 and all(scalars(p, "loss") == [(1, 2.0)] for p in origins)


def test_tensorboard_absurd_records_are_refused_once_logged_and_the_good_ones_kept(tmp_path: Path, caplog) -> None:
    from flarelite.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver

    root = tmp_path / "run"
    receiver = TBAnalyticsReceiver()
    engine = started(receiver, root)

    def bad() -> list[Shareable]:  # new objects each time (one object twice is taken as the same record)
        return [
            record("loss", 1.0, "SCALAR", global_step=2**64),  # past int64: TensorBoard cannot hold the step
            record("loss", 10**400, "SCALAR"),  # past a float
            record("loss", {"x": 1}, "SCALAR"),
            record("loss", "high", "METRIC"),
            record("loss", 1.0, "SCALAR", analytics_kwargs={"key": "x", "data_type": "y"}),
            record("loss", 1.0, "HISTOGRAM"),
            record("img", {"a": 1}, "IMAGE"),
        ]

    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            for data in bad():
                engine.fire_event(FED, received_ctx(engine, "site-1", data))
        engine.fire_event(FED, received_ctx(engine, "site-2", bad()[0]))
    failures = [r for r in caplog.records if "failed on a record from" in r.getMessage()]
    assert [r.getMessage().split(" from ")[1][:6] for r in failures] == ["site-1", "site-2"]  # once per peer
    assert "global_step" in failures[0].getMessage() and not failures[0].exc_info  # a bad record, not a bug
    for value, step in [(float("nan"), 1), (float("inf"), 2), (-1e308, 3), (2.5, 4)]:
        engine.fire_event(FED, received_ctx(engine, "site-1", record("v", value, "SCALAR", global_step=step)))
    engine.fire_event(EventType.END_RUN, engine.new_context())
    got = scalars(root / "tb_events" / "site-1", "v")
    assert [s for s, _ in got] == [1, 2, 3, 4] and math.isnan(got[0][1]) and got[1][1] == math.inf
    assert got[3] == (4, 2.5) and scalars(root / "tb_events" / "site-1", "loss") == []


def test_tensorboard_bounds_what_one_peer_makes(tmp_path: Path, caplog) -> None:
    from flarelite.app_opt.tracking.tb.tb_event_writer import MAX_SCALARS_WRITERS
    from flarelite.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver

    root = tmp_path / "run"
    receiver = TBAnalyticsReceiver()
    engine = started(receiver, root)
    huge = {f"t{i}": 1.0 for i in range(MAX_RECORD_ENTRIES + 1)}
    params = {f"p{i}": i for i in range(100_000)}
    with caplog.at_level(logging.WARNING):
        engine.fire_event(FED, received_ctx(engine, "site-1", record("g", huge, "SCALARS")))
        engine.fire_event(FED, received_ctx(engine, "site-2", record("p", params, "PARAMETERS")))
        for i in range(0, 400, 50):  # many small records, 400 distinct series in all
            group = {f"s{j}": 1.0 for j in range(i, i + 50)}
            engine.fire_event(FED, received_ctx(engine, "site-3", record("m", group, "SCALARS")))
    engine.fire_event(EventType.END_RUN, engine.new_context())
    assert not (root / "tb_events" / "site-1").exists() and not (root / "tb_events" / "site-2").exists()
    assert f"more than {MAX_RECORD_ENTRIES} entries" in caplog.text
    series = [p for p in (root / "tb_events" / "site-3").iterdir() if p.is_dir()]
    assert len(series) == MAX_SCALARS_WRITERS


def test_mlflow_keeps_the_good_records_and_its_artifacts_inside(tmp_path: Path, caplog) -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow)")
    from mlflow.tracking import MlflowClient

    from flarelite.app_opt.tracking.mlflow.mlflow_receiver import MLflowReceiver

    root = tmp_path / "run"
    receiver = MLflowReceiver(buffer_flush_time=3600)  # one batch, sent at END_RUN
    engine = started(receiver, root)
    good = [
        record("loss", 0.5, "METRIC", "MLFLOW", global_step=1),
        record("nan_metric", float("nan"), "METRIC", "MLFLOW", global_step=1),
        record("m", {"acc": 0.9, "f1": 0.8}, "METRICS", "MLFLOW", global_step=2),
        record("lr", 0.1, "PARAMETER", "MLFLOW"),
        record("team", "a", "TAG", "MLFLOW"),
        record("ok", "fine", "TEXT", "MLFLOW", path="notes/ok.txt"),
    ]
    bad = [
        record("..", {"": 1.0}, "SCALARS"),  # names MLflow refuses, in the same batch as the good ones
        record("bad name!", 1.0, "METRIC", "MLFLOW"),
        record("k" * 1000, 1.0, "METRIC", "MLFLOW"),
        record("lr", 0.2, "PARAMETER", "MLFLOW"),  # MLflow parameters cannot change
        record("t", {"x" * 1000: "v"}, "TAGS", "MLFLOW"),
        record("m", {f"k{i}": 1.0 for i in range(MAX_RECORD_ENTRIES + 1)}, "METRICS", "MLFLOW"),
        record("t", {f"k{i}": "v" for i in range(100_000)}, "TAGS", "MLFLOW"),
    ]
    paths = ["../../escape.txt", str(tmp_path / "abs.txt"), "a\x00.txt", ".", "a/./../../b.txt", "", "d/"]
    bad += [record("t", "x", "TEXT", "MLFLOW", path=p) for p in paths]
    with caplog.at_level(logging.WARNING):
        for data in good + bad:
            engine.fire_event(FED, received_ctx(engine, "site-1", data))
        engine.fire_event(EventType.END_RUN, engine.new_context())
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = {r.data.tags["site"]: r for r in client.search_runs([receiver.experiment_id])}["site-1"]
    metrics = run.data.metrics
    assert sorted(metrics) == ["acc", "f1", "loss", "nan_metric"] and math.isnan(metrics["nan_metric"])
    assert run.data.params == {"lr": "0.1"} and run.data.tags["team"] == "a"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/ok.txt"]
    written = files_under(tmp_path)
    assert all(root.resolve() in p.resolve().parents for p in written), written
    assert "refused by MLflow" in caplog.text and "cannot change" in caplog.text
    assert caplog.text.count("failed on a record from site-1") <= 1


def test_mlflow_a_refused_batch_is_split_down_to_the_refused_entries(caplog) -> None:
    """Without MLflow's validation at hand (or for what only the store refuses), a batch MLflow refuses is sent
    in halves until the refused entries are alone: they are dropped, every other entry arrives."""
    from types import SimpleNamespace

    from flarelite.app_opt.tracking.mlflow.mlflow_receiver import MLflowReceiver

    class Refused(Exception):
        error_code = "INVALID_PARAMETER_VALUE"  # as MlflowException has it for content it does not take

    class Store:
        def __init__(self) -> None:
            self.calls = 0
            self.logged: list[str] = []
            self.down = False

        def log_batch(self, run_id, metrics, params, tags) -> None:
            self.calls += 1
            if self.down:
                raise OSError("the store cannot be reached")
            entries = metrics + params + tags
            if any(e.key.startswith("bad") for e in entries):
                raise Refused(f"refused one of {len(entries)}")
            self.logged.extend(e.key for e in entries)

    store = Store()
    receiver = MLflowReceiver()
    receiver.mlflow_clients["site-1"], receiver.run_ids["site-1"] = store, "run"
    metrics = [SimpleNamespace(key=f"m{i}") for i in range(600)]
    metrics[17].key, metrics[400].key = "bad1", "bad2"
    params = [SimpleNamespace(key=f"p{i}") for i in range(50)]
    receiver.buffer["site-1"] = {"metrics": metrics, "params": params, "tags": [SimpleNamespace(key="bad3")]}
    with caplog.at_level(logging.WARNING):
        receiver.flush_buffer("site-1")
    assert sorted(store.logged) == sorted(e.key for e in metrics + params if not e.key.startswith("bad"))
    assert store.calls < 60  # about 2 * log2(651) per refused entry, not one call per entry
    assert caplog.text.count("refused by MLflow") == 1  # the other two are counted for its next line
    store.down, store.calls = True, 0  # a store that fails for another reason: no splitting, the error is raised
    receiver.buffer["site-1"]["metrics"] = metrics[:100]
    with pytest.raises(OSError, match="cannot be reached"):
        receiver.flush_buffer("site-1")
    assert store.calls == 1
