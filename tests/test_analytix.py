"""Tracking records: AnalyticsData validation and DXO encoding, analytix_utils, AnalyticsSender, ConvertToFedEvent,
AnalyticsReceiver's contract."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from event_support import RecordingEngine, Watcher, received_ctx

from flarelite.apis.analytix import (
    ANALYTIC_EVENT_TYPE,
    AnalyticsData,
    AnalyticsDataType,
    LogWriterName,
    TrackConst,
)
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_component import FED_EVENT_TOPIC, FLComponent
from flarelite.apis.fl_constant import EventScope, FedEventHeader, FLContextKey
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo
from flarelite.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from flarelite.app_common.widgets.streaming import AnalyticsReceiver, AnalyticsSender
from flarelite.serialization import dumps, loads

T = AnalyticsDataType


# --- AnalyticsData ------------------------------------------------------------------------------------------
def test_the_observed_scalar_encoding() -> None:
    dxo = AnalyticsData("loss", np.float32(0.5), T.SCALAR, global_step=3).to_dxo()
    assert dxo.data_kind == DataKind.ANALYTIC
    assert dxo.data == {
        "track_key": "loss",
        "track_value": 0.5,
        "global_step": 3,
        "analytics_kwargs": {"global_step": 3},
    }
    assert type(dxo.data["track_value"]) is float  # the numpy scalar became a plain float
    assert dxo.meta == {"analytics_data_type": T.SCALAR, "tracker_key": LogWriterName.TORCH_TB}


def test_enum_values_and_keys() -> None:
    assert ANALYTIC_EVENT_TYPE == "analytix_log_stats"
    assert [w.value for w in LogWriterName] == ["TORCH_TENSORBOARD", "MLFLOW", "WEIGHTS_AND_BIASES"]
    assert all(t.value == t.name for t in T) and len(T) == 13
    assert (TrackConst.TRACK_KEY, TrackConst.KWARGS_KEY, TrackConst.DATA_TYPE_KEY) == (
        "track_key",
        "analytics_kwargs",
        "analytics_data_type",
    )


def test_optional_fields_are_left_out_and_path_is_kept() -> None:
    assert AnalyticsData("acc", 1, T.METRIC).to_dxo().data == {"track_key": "acc", "track_value": 1}
    data = AnalyticsData("note", "hi", T.TEXT, sender=LogWriterName.MLFLOW, path="a/b.txt")
    assert (data.tag, data.value, data.step, data.path, data.sender) == (
        "note",
        "hi",
        None,
        "a/b.txt",
        LogWriterName.MLFLOW,
    )
    assert data.to_dxo().data == {
        "track_key": "note",
        "track_value": "hi",
        "path": "a/b.txt",
        "analytics_kwargs": {"path": "a/b.txt"},
    }


@pytest.mark.parametrize(
    "key, value, data_type, kwargs, error, match",
    [
        (1, 1.0, T.SCALAR, {}, TypeError, "key"),
        ("k", 1.0, "SCALAR", {}, TypeError, "AnalyticsDataType"),
        ("k", "1.0", T.SCALAR, {}, TypeError, "int or float"),
        ("k", True, T.METRIC, {}, TypeError, "bool"),
        ("k", np.zeros(2), T.SCALAR, {}, TypeError, "ndarray"),
        ("k", [1.0], T.METRICS, {}, TypeError, "dict of numbers"),
        ("k", {"a": "x"}, T.SCALARS, {}, TypeError, "'a'"),
        ("k", {1: 1.0}, T.SCALARS, {}, TypeError, "keys must be str"),
        ("k", [("a", 1)], T.PARAMETERS, {}, TypeError, "expects a dict"),
        ("k", "x", T.TAGS, {}, TypeError, "expects a dict"),
        ("k", 3, T.TEXT, {}, TypeError, "TEXT expects a str"),
        ("k", 1.0, T.SCALAR, {"global_step": -1}, ValueError, "non-negative"),
        ("k", 1.0, T.SCALAR, {"global_step": 1.5}, TypeError, "global_step"),
        ("k", 1.0, T.SCALAR, {"global_step": True}, TypeError, "global_step"),
        ("k", "t", T.TEXT, {"path": 3}, TypeError, "path"),
        ("k", 1.0, T.SCALAR, {"global_step": 2**63}, ValueError, "too large"),
        ("k", 10**400, T.METRIC, {}, ValueError, "too large for a float"),
        ("k", {"a": 10**400}, T.METRICS, {}, ValueError, "too large for a float"),
    ],
)
def test_validation(key, value, data_type, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        AnalyticsData(key, value, data_type, **kwargs)


def test_numbers_are_converted() -> None:
    data = AnalyticsData("m", {"a": np.int64(2), "b": np.float64(0.25)}, T.METRICS, global_step=np.int32(4))
    assert data.value == {"a": 2, "b": 0.25} and type(data.value["a"]) is int
    assert data.step == 4 and type(data.step) is int
    torch = pytest.importorskip("torch")
    assert AnalyticsData("t", torch.tensor(1.5), T.SCALAR).value == 1.5


def test_from_dxo_after_the_codec_gets_members_back() -> None:
    original = AnalyticsData("loss", 0.5, T.SCALAR, global_step=2, foo="bar")
    dxo = from_shareable(loads(dumps(original.to_dxo().to_shareable())))
    assert dxo.get_meta_prop(TrackConst.DATA_TYPE_KEY) == "SCALAR"  # str on the wire, equal to the member
    back = AnalyticsData.from_dxo(dxo)
    assert back.data_type is T.SCALAR and back.sender is LogWriterName.TORCH_TB
    assert (back.tag, back.value, back.step, back.kwargs) == ("loss", 0.5, 2, {"global_step": 2, "foo": "bar"})
    as_mlflow = AnalyticsData.from_dxo(dxo, receiver=LogWriterName.MLFLOW)
    assert as_mlflow.data_type is T.METRIC


def test_from_dxo_errors() -> None:
    with pytest.raises(TypeError, match="DXO"):
        AnalyticsData.from_dxo({"track_key": "k"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no data"):
        AnalyticsData.from_dxo(DXO(DataKind.ANALYTIC, {}))
    with pytest.raises(ValueError, match="lacks"):
        AnalyticsData.from_dxo(DXO(DataKind.ANALYTIC, {"x": 1}))
    unknown = DXO(DataKind.ANALYTIC, {"track_key": "k", "track_value": 1}, {"analytics_data_type": "HISTOGRAM"})
    with pytest.raises(ValueError, match="HISTOGRAM"):
        AnalyticsData.from_dxo(unknown)
    clash = DXO(DataKind.ANALYTIC, {"track_key": "k", "track_value": 1, "analytics_kwargs": {"value": 2}})
    with pytest.raises(ValueError, match=r"may not hold \['value'\]"):
        AnalyticsData.from_dxo(clash)
    bad_value = DXO(DataKind.ANALYTIC, {"track_key": "k", "track_value": "x"}, {"analytics_data_type": "SCALAR"})
    with pytest.raises(TypeError, match="int or float"):
        AnalyticsData.from_dxo(bad_value)  # what a peer sends is validated again


def test_convert_data_type() -> None:
    tb, ml, wb = LogWriterName.TORCH_TB, LogWriterName.MLFLOW, LogWriterName.WANDB
    convert = AnalyticsData.convert_data_type
    assert convert(T.SCALAR, tb, ml) is T.METRIC and convert(T.SCALARS, tb, ml) is T.METRICS
    assert convert(T.SCALAR, tb, wb) is T.METRIC and convert(T.SCALARS, tb, wb) is T.METRICS
    assert convert(T.METRIC, ml, tb) is T.SCALAR and convert(T.METRICS, ml, tb) is T.SCALARS
    assert convert(T.METRIC, wb, tb) is T.SCALAR
    assert convert(T.TEXT, tb, ml) is T.TEXT and convert(T.METRIC, ml, wb) is T.METRIC
    assert convert(T.SCALAR, tb, tb) is T.SCALAR


# --- events, with a recording engine ------------------------------------------------------------------------
def start(engine: RecordingEngine) -> None:
    ctx = engine.new_context()
    engine.fire_event(EventType.START_RUN, ctx)


def test_create_and_send_analytic_dxo() -> None:
    dxo = create_analytic_dxo("acc", 0.9, T.METRIC, writer=LogWriterName.MLFLOW, global_step=1)
    assert dxo.meta == {"analytics_data_type": T.METRIC, "tracker_key": LogWriterName.MLFLOW}
    engine, watcher, comp = RecordingEngine(), Watcher(), FLComponent()
    engine.components = {"w": watcher}
    ctx = engine.new_context()
    send_analytic_dxo(comp, dxo, ctx)
    [(event_type, scope, data)] = watcher.seen
    assert (event_type, scope) == (ANALYTIC_EVENT_TYPE, EventScope.LOCAL)
    assert isinstance(data, Shareable) and from_shareable(data).data == dxo.data
    assert ctx.get_prop(FLContextKey.EVENT_DATA) is data  # held in EVENT_DATA while the event was fired
    send_analytic_dxo(comp, dxo, ctx, event_type="fed.analytix_log_stats", fire_fed_event=True)
    assert watcher.seen[1][:2] == ("fed.analytix_log_stats", EventScope.FEDERATION)
    assert [(s[0], s[1], s[3]) for s in engine.sent] == [("server", FED_EVENT_TOPIC, 0)]
    with pytest.raises(TypeError, match="DXO"):
        send_analytic_dxo(comp, dxo.data, ctx)  # type: ignore[arg-type]


def test_analytics_sender() -> None:
    engine, watcher = RecordingEngine(), Watcher()
    sender = AnalyticsSender(writer_name="MLFLOW")  # as a job config holds it  # type: ignore[arg-type]
    assert sender.get_writer_name() is LogWriterName.MLFLOW and sender.writer is LogWriterName.MLFLOW
    with pytest.raises(RuntimeError, match="no engine"):
        sender.add("x", 1.0, T.SCALAR)
    engine.components = {"sender": sender, "w": watcher}
    start(engine)
    sender.add("loss", np.float64(0.25), T.SCALAR, global_step=5, note="n")
    [(event_type, scope, data)] = watcher.seen
    assert (event_type, scope) == (ANALYTIC_EVENT_TYPE, EventScope.LOCAL)
    record = AnalyticsData.from_dxo(from_shareable(data), receiver=LogWriterName.MLFLOW)
    assert (record.tag, record.value, record.step, record.data_type) == ("loss", 0.25, 5, T.SCALAR)
    assert record.kwargs == {"global_step": 5, "note": "n"}
    with pytest.raises(TypeError, match="global_step must be an int"):
        sender.add("loss", 1.0, T.SCALAR, global_step="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int or float"):
        sender.add("loss", "high", T.SCALAR)
    sender.close()
    assert sender.engine is None


def test_convert_to_fed_event() -> None:
    engine, watcher = RecordingEngine(), Watcher()
    converter = ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE])
    engine.components = {"sender": AnalyticsSender(), "convert": converter, "w": watcher}
    start(engine)
    engine.components["sender"].add("loss", 1.0, T.SCALAR, global_step=0)
    assert [(e, s) for e, s, _ in watcher.seen] == [
        ("fed.analytix_log_stats", EventScope.FEDERATION),  # converted (fired here too), then the local one
        (ANALYTIC_EVENT_TYPE, EventScope.LOCAL),  # the scope was put back for the components after the converter
    ]
    [(targets, topic, request, timeout)] = engine.sent
    assert (targets, topic, timeout) == ("server", FED_EVENT_TOPIC, 0)
    assert request.get_header(FedEventHeader.EVENT_TYPE) == "fed.analytix_log_stats"
    assert from_shareable(request).data["track_key"] == "loss"
    with pytest.raises(TypeError, match="list of event types"):
        ConvertToFedEvent(events_to_convert="analytix_log_stats")  # type: ignore[arg-type]


# --- AnalyticsReceiver's contract ---------------------------------------------------------------------------
class ListReceiver(AnalyticsReceiver):
    def __init__(self, events: list[str] | None = None, fail: str = "") -> None:
        super().__init__(events=events)
        self.fail = fail
        self.saved: list[tuple[str, Any]] = []
        self.finalized = False

    def initialize(self, fl_ctx: FLContext) -> None:
        if self.fail == "initialize":
            raise OSError("no disk")

    def save(self, fl_ctx: FLContext, shareable: Shareable, record_origin: str) -> None:
        if self.fail == "save":
            raise ValueError("bad record")
        self.saved.append((record_origin, from_shareable(shareable).data["track_value"]))

    def finalize(self, fl_ctx: FLContext) -> None:
        self.finalized = True
        if self.fail == "finalize":
            raise OSError("cannot close")


def received(engine: RecordingEngine, peer: str, value: float) -> FLContext:
    """A context as the fed-event worker builds it for a loss record received from ``peer``."""
    return received_ctx(engine, peer, AnalyticsData("loss", value, T.SCALAR).to_dxo().to_shareable())


def test_receiver_origins_and_end_of_run() -> None:
    assert ListReceiver().events == ["analytix_log_stats", "fed.analytix_log_stats"]
    engine = RecordingEngine("server")
    receiver = ListReceiver()
    converter = ConvertToFedEvent([ANALYTIC_EVENT_TYPE])
    engine.components = {"sender": AnalyticsSender(), "r": receiver, "c": converter}
    start(engine)
    engine.fire_event("fed.analytix_log_stats", received(engine, "site-2", 2.0))
    engine.components["sender"].add("loss", 1.0, T.SCALAR)  # local: origin is this site, saved once
    assert receiver.saved == [("site-2", 2.0), ("server", 1.0)]
    engine.fire_event(EventType.END_RUN, engine.new_context())
    assert receiver.finalized
    engine.fire_event("fed.analytix_log_stats", received(engine, "site-2", 3.0))
    assert len(receiver.saved) == 2  # after END_RUN: dropped


@pytest.mark.parametrize("fail", ["initialize", "save", "finalize"])
def test_receiver_errors_are_logged_not_raised(fail: str, caplog) -> None:
    engine = RecordingEngine("server")
    receiver = ListReceiver(fail=fail)
    engine.components = {"r": receiver}
    with caplog.at_level(logging.WARNING):
        start(engine)
        engine.fire_event("fed.analytix_log_stats", received(engine, "site-1", 1.0))
        engine.fire_event("fed.analytix_log_stats", received(engine, "site-1", 1.0))
        engine.fire_event(EventType.END_RUN, engine.new_context())
    assert f"ListReceiver.{fail} failed" in caplog.text
    if fail == "initialize":
        assert caplog.text.count("is not initialized") == 1 and not receiver.finalized  # told once
    assert receiver.saved == ([("site-1", 1.0)] * 2 if fail == "finalize" else [])


def test_tb_writer_fires_tensorboard_records() -> None:
    from flarelite.app_opt.tracking.tb.tb_writer import TBWriter

    engine, watcher, writer = RecordingEngine(), Watcher(), TBWriter()
    assert writer.get_writer_name() is LogWriterName.TORCH_TB
    assert writer.get_default_metric_data_type() is T.SCALARS
    engine.components = {"tb": writer, "w": watcher}
    start(engine)
    writer.add_scalar("loss", 0.5, global_step=1)
    writer.add_scalars("acc", {"a": 1.0, "b": 2.0}, global_step=2)
    writer.flush()
    records = [AnalyticsData.from_dxo(from_shareable(data)) for _, _, data in watcher.seen]
    assert [(r.tag, r.value, r.data_type, r.step, r.sender) for r in records] == [
        ("loss", 0.5, T.SCALAR, 1, LogWriterName.TORCH_TB),
        ("acc", {"a": 1.0, "b": 2.0}, T.SCALARS, 2, LogWriterName.TORCH_TB),
    ]
    assert {e for e, _, _ in watcher.seen} == {ANALYTIC_EVENT_TYPE}
