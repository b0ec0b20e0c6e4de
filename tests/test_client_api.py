"""The Client API's semantics (NVFlare 2.9.0's), its exchanges, the local channel and its trust rules."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import flarelite.client as flare
import flarelite.client.api as flare_api
from flarelite.apis.dxo import DataKind, from_shareable
from flarelite.apis.shareable import Shareable
from flarelite.app_common.abstract.fl_model import FLModel, ParamsType
from flarelite.app_common.utils.fl_model_utils import FLModelUtils
from flarelite.client.channel import HELLO_MAX_SIZE, Channel, Msg
from flarelite.client.config import ConfigKey, ExchangeFormat, TransferType
from flarelite.client.exchange import TaskMessage
from flarelite.client.in_process import InProcessExchange, TaskState
from flarelite.client.thread_binding import SiteBinding, bind_thread, register, unbind_thread, unregister
from flarelite.client.tracking import MLflowWriter, SummaryWriter, WandBWriter
from flarelite.errors import ProtocolError, TransportClosed

FIXTURES = os.path.join(os.path.dirname(__file__), "client_api_fixtures")


def _config(**exchange) -> dict:
    task_exchange = {
        ConfigKey.TRAIN_WITH_EVAL: False,
        ConfigKey.EXCHANGE_FORMAT: ExchangeFormat.RAW,
        ConfigKey.SERVER_EXPECTED_FORMAT: ExchangeFormat.NUMPY,
        ConfigKey.TRANSFER_TYPE: TransferType.FULL,
        ConfigKey.TRAIN_TASK_NAME: "train",
        ConfigKey.EVAL_TASK_NAME: "validate",
        ConfigKey.SUBMIT_MODEL_TASK_NAME: "submit_model",
    }
    task_exchange.update(exchange)
    return {"site_name": "site-1", "job_id": "job-1", ConfigKey.TASK_NAME: None, ConfigKey.TASK_EXCHANGE: task_exchange}


class Site:
    """An in-process site without an executor: the test plays the executor's side of the exchange."""

    def __init__(self, name: str = "site-1", **exchange) -> None:
        config = _config(**exchange)
        config["site_name"] = name
        self.records: list[dict] = []
        self.lines: list[str] = []
        self.exchange = InProcessExchange(config, self.records.append)
        self.binding = SiteBinding(name, "job-1", self.exchange, self.lines.append)
        self.n = 0

    def offer(self, params=None, name: str = "train", current_round: int = 0) -> str:
        self.n += 1
        task_id = f"t{self.n}"
        model = FLModel(params=params if params is not None else {"x": np.arange(3.0)}, current_round=current_round)
        self.exchange.offer_task(TaskMessage(task_id, name, FLModelUtils.to_shareable(model)))
        return task_id

    def result(self, task_id: str) -> Shareable:
        state, result = self.exchange.await_result(task_id, 5.0)
        assert state == TaskState.RESULT, state
        return result


@pytest.fixture
def site():
    s = Site()
    register(s.binding)
    bind_thread(s.binding)
    try:
        yield s
    finally:
        unbind_thread()
        unregister(s.binding)


# ------------------------------------------------------------------------------------------ outside a job


def test_errors_outside_a_job_and_before_init(monkeypatch):
    monkeypatch.delenv("FLARELITE_CLIENT_API_BOOTSTRAP", raising=False)
    monkeypatch.delenv("CLIENT_API_TYPE", raising=False)
    with pytest.raises(RuntimeError, match="api None is not a valid InProcessClientAPI"):
        flare.init()
    before_init = "APIContext is None. Did you call flare.init\\(\\) before using the Client API\\?"
    for call in (flare.receive, flare.system_info, flare.is_running, flare.get_task_name, flare_api.clear):
        with pytest.raises(RuntimeError, match=before_init):
            call()
    with pytest.raises(RuntimeError, match=before_init):
        flare.send(FLModel(params={"a": 1}))
    with pytest.raises(RuntimeError, match=before_init):
        SummaryWriter()  # writers resolve their context when created
    monkeypatch.setenv("CLIENT_API_TYPE", "EX_PROCESS_API")
    with pytest.raises(RuntimeError, match="FLARELITE_CLIENT_API_BOOTSTRAP is not set"):
        flare.init()
    assert not hasattr(flare, "clear") and hasattr(flare_api, "clear") and flare_api.ClientAPIType.IN_PROCESS_API


def test_exports():
    assert set(flare.__all__) == {
        "FLModel", "ParamsType", "AnalyticsDataType", "init", "receive", "send", "is_running", "is_train",
        "is_evaluate", "is_submit_model", "get_task_name", "get_job_id", "get_site_name", "get_config",
        "system_info", "log", "shutdown", "train", "evaluate",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ init and receive


def test_init_is_cached_per_rank_and_config(site, monkeypatch, caplog):
    ctx = flare.init()
    with caplog.at_level(logging.WARNING, logger="flarelite.client"):
        assert flare.init() is ctx
    assert "already called" in caplog.text
    assert flare.init(rank=0) is ctx  # an int rank is its str
    monkeypatch.setenv("RANK", "0")
    assert flare.init() is ctx
    other = flare.init(rank=1)
    assert other is not ctx and other.rank == "1"
    with pytest.raises(ValueError):
        flare.init(rank=1.5)
    with ctx:
        assert flare.system_info(ctx) == {"site_name": "site-1", "job_id": "job-1"}
    assert site.exchange.trainer_done  # the context manager shut the trainer down


def test_receive_caches_until_send_and_second_send_raises(site):
    flare.init()
    config = flare.get_config()
    assert config["site_name"] == "site-1" and config["TASK_NAME"] is None
    assert config["TASK_EXCHANGE"]["exchange_format"] == ExchangeFormat.RAW
    task_id = site.offer(current_round=3)
    model = flare.receive()
    assert flare.receive() is model  # cached
    assert flare.is_running() and flare.receive() is model
    assert (flare.get_task_name(), flare.is_train(), flare.is_evaluate(), flare.is_submit_model()) == (
        "train", True, False, False,
    )  # fmt: skip
    assert model.current_round == 3
    assert (flare.get_site_name(), flare.get_job_id()) == ("site-1", "job-1")
    new = FLModel(params={"x": model.params["x"] + 1}, metrics={"acc": 1.0})
    flare.send(new)
    assert new.params is None and model.params is None  # clear_cache on both, as NVFlare 2.9.0
    result = site.result(task_id)
    np.testing.assert_array_equal(from_shareable(result).data["x"], [1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match='"receive" needs to be called before sending model!'):
        flare.send(FLModel(params={"x": 1}))
    with pytest.raises(TypeError):
        flare.send({"x": 1})


def test_send_without_clearing_the_cache(site):
    flare.init()
    first = site.offer()
    model = flare.receive()
    flare.send(FLModel(metrics={"m": 1}), clear_cache=False)
    assert flare.receive() is model and model.params is not None  # still cached
    assert from_shareable(site.result(first)).data_kind == DataKind.METRICS
    with pytest.raises(RuntimeError, match="neither params nor metrics"):
        flare.send(FLModel())
    flare_api.clear()
    second = site.offer(name="validate")
    assert flare.receive() is not model and flare.is_evaluate()
    flare.send(FLModel(metrics={"m": 2}))
    assert from_shareable(site.result(second)).data == {"m": 2}


def test_receive_returns_none_at_the_end(site):
    flare.init()
    assert flare.receive(timeout=0.05) is None  # nothing came
    site.exchange.stop("END_RUN received")
    assert flare.receive(timeout=1.0) is None and not flare.is_running()


def test_receive_raises_when_the_job_was_aborted(site):
    flare.init()
    site.exchange.abort("server said so")
    with pytest.raises(RuntimeError, match="aborted: server said so"):
        flare.receive()


def test_task_abort_drops_the_result_without_raising(site, caplog):
    flare.init()
    task_id = site.offer()
    flare.receive()
    site.exchange.abort_task(task_id)
    with caplog.at_level(logging.WARNING, logger="flarelite.client"):
        flare.send(FLModel(params={"x": 1}))
    assert "dropped" in caplog.text
    nxt = site.offer()
    assert flare.receive().params is not None
    flare.send(FLModel(params={"x": 2}))
    assert from_shareable(site.result(nxt)).data == {"x": 2}


def test_send_and_log_after_the_job_ended_warn_and_drop(site, caplog):
    flare.init()
    site.exchange.stop("END_RUN received")
    with caplog.at_level(logging.WARNING, logger="flarelite.client"):
        flare.send(FLModel(params={"x": 1}))
        flare.log("loss", 1.0, flare.AnalyticsDataType.SCALAR)
    assert "dropped" in caplog.text and site.records == []


def test_failed_conversion_is_a_runtime_error(site):
    flare.init()
    site.exchange.offer_task(TaskMessage("bad", "train", Shareable({"no": "dxo"})))
    with pytest.raises(RuntimeError, match="failed to receive task"):
        flare.receive()


# ------------------------------------------------------------------------------------------ DIFF, formats


def test_diff_transfer_sends_new_minus_received():
    s = Site(**{ConfigKey.TRANSFER_TYPE: TransferType.DIFF})
    register(s.binding)
    bind_thread(s.binding)
    try:
        flare.init()
        task_id = s.offer(params={"a": np.array([1.0, 2.0]), "b": np.array([5.0])})
        flare.receive()
        flare.send(FLModel(params={"a": np.array([4.0, 4.0]), "new": np.array([1.0])}))
        dxo = from_shareable(s.result(task_id))
        assert dxo.data_kind == DataKind.WEIGHT_DIFF and set(dxo.data) == {"a"}
        np.testing.assert_array_equal(dxo.data["a"], [3.0, 2.0])
        task_id = s.offer(params={"a": np.array([1.0])})
        flare.receive()
        flare.send(FLModel(params_type=ParamsType.DIFF, params={"a": np.array([9.0])}))  # already DIFF: as is
        np.testing.assert_array_equal(from_shareable(s.result(task_id)).data["a"], [9.0])
        s.offer(params={"a": np.array([1.0])})
        flare.receive()
        with pytest.raises(RuntimeError, match="no key in common"):
            flare.send(FLModel(params={"z": np.array([1.0])}))
    finally:
        unbind_thread()
        unregister(s.binding)


def test_numpy_to_pytorch_conversion_at_receive_and_send():
    torch = pytest.importorskip("torch")
    s = Site(**{ConfigKey.EXCHANGE_FORMAT: ExchangeFormat.PYTORCH})
    register(s.binding)
    bind_thread(s.binding)
    try:
        flare.init()
        task_id = s.offer(params={"w": np.ones((2, 3), dtype=np.float32)})
        model = flare.receive()
        assert isinstance(model.params["w"], torch.Tensor) and model.params["w"].shape == (2, 3)
        flare.send(FLModel(params={"w": model.params["w"].flatten() + 1, "step": 7}))
        sent = from_shareable(s.result(task_id)).data
        assert set(sent) == {"w"} and isinstance(sent["w"], np.ndarray)  # "step" stays with the trainer
        np.testing.assert_array_equal(sent["w"], np.full(6, 2.0, dtype=np.float32))
        s.offer(params={"w": np.arange(6, dtype=np.float32)})
        again = flare.receive()
        assert again.params["w"].shape == (6,) and again.params["step"] == 7  # shape as last sent, aside restored
    finally:
        unbind_thread()
        unregister(s.binding)


def test_format_pairs():
    from flarelite.client.converter_utils import FormatConverter, check_format_pair

    assert check_format_pair("raw", "pytorch") == (ExchangeFormat.RAW, ExchangeFormat.PYTORCH)
    with pytest.raises(ValueError, match="unsupported parameter format conversion"):
        check_format_pair(ExchangeFormat.PYTORCH, ExchangeFormat.KERAS_LAYER_WEIGHTS)
    with pytest.raises(ValueError):
        check_format_pair("tensorflow", "numpy")
    assert not FormatConverter("numpy", "numpy").active
    with pytest.raises(TypeError):
        FormatConverter("pytorch", "numpy").to_trainer([1, 2])


# ------------------------------------------------------------------------------------------ ranks, metrics


def test_rank_zero_only_functions(site):
    ctx = flare.init(rank=1)
    for call in (flare.get_task_name, flare.is_train, flare.is_evaluate, flare.is_submit_model):
        with pytest.raises(RuntimeError, match="only rank 0"):
            call(ctx)
    with pytest.raises(RuntimeError, match="only rank 0"):
        flare.log("k", 1.0, flare.AnalyticsDataType.SCALAR, ctx=ctx)


def test_writers_send_records(site):
    flare.init()
    SummaryWriter().add_scalar("loss", np.float32(0.5), global_step=3)
    SummaryWriter().add_scalars("both", {"a": 1.0})
    WandBWriter().log({"acc": 1.0}, step=2)
    mlflow = MLflowWriter()
    mlflow.log_metric("m", 1.0, step=1)
    mlflow.log_text("hello", "notes.txt")
    mlflow.set_tags({"k": "v"})
    keys = [(r["key"], r["data_type"], r["kwargs"].get("writer")) for r in site.records]
    assert keys == [
        ("loss", "SCALAR", "TORCH_TENSORBOARD"), ("both", "SCALARS", "TORCH_TENSORBOARD"),
        ("metrics", "METRICS", "WEIGHTS_AND_BIASES"), ("m", "METRIC", "MLFLOW"), ("text", "TEXT", "MLFLOW"),
        ("tags", "TAGS", "MLFLOW"),
    ]  # fmt: skip
    assert site.records[0]["kwargs"]["global_step"] == 3 and site.records[4]["kwargs"]["path"] == "notes.txt"


def test_two_sites_in_one_process_stay_apart():
    sites = [Site("site-a"), Site("site-b")]
    seen: dict[str, tuple] = {}

    def script(s: Site) -> None:
        flare.init()
        print(f"printed by {s.binding.site_name}")
        model = flare.receive()
        seen[s.binding.site_name] = (flare.get_site_name(), float(model.params["x"][0]))
        flare.send(FLModel(params={"x": model.params["x"]}))

    threads = []
    for i, s in enumerate(sites):
        register(s.binding)
        thread = threading.Thread(target=script, args=(s,))
        bind_thread(s.binding, thread)
        threads.append(thread)
    try:
        ids = [s.offer(params={"x": np.array([float(i)])}) for i, s in enumerate(sites)]
        for thread in threads:
            thread.start()
        for s, task_id in zip(sites, ids):
            s.result(task_id)
        for thread in threads:
            thread.join(5)
        with pytest.raises(RuntimeError, match="2 sites run in this process"):
            flare.init()  # this thread belongs to neither
    finally:
        for s in sites:
            unregister(s.binding)
    assert seen == {"site-a": ("site-a", 0.0), "site-b": ("site-b", 1.0)}
    assert sites[0].lines == ["printed by site-a"] and sites[1].lines == ["printed by site-b"]


# ------------------------------------------------------------------------------------------ the local channel


def test_channel_round_trip_out_of_band():
    a, b = socket.socketpair()
    left, right = Channel(a, peer="left"), Channel(b, peer="right")
    try:
        data = FLModelUtils.to_shareable(FLModel(params={"w": np.arange(1 << 16, dtype=np.float64)}))
        sender = threading.Thread(
            target=left.send, args=(Msg.TASK, {"task_id": "1", "task_name": "train", "data": data})
        )
        sender.start()
        kind, body = right.recv(deadline=time.monotonic() + 10)
        sender.join(10)
        assert kind == Msg.TASK and body["task_id"] == "1"
        w = from_shareable(body["data"]).data["w"]
        np.testing.assert_array_equal(w, np.arange(1 << 16, dtype=np.float64))
        assert w.flags.writeable  # received into buffers of its own
    finally:
        left.close()
        right.close()


def _raw_recv(raw: bytes, **kwargs):
    a, b = socket.socketpair()
    try:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        return Channel(b, peer="peer", **kwargs).recv(deadline=time.monotonic() + 5)
    finally:
        a.close()
        b.close()


def test_channel_rejects_bad_frames():
    prefix = struct.Struct("<4sBBHIIQ")
    with pytest.raises(ProtocolError, match="not a flarelite Client API message"):
        _raw_recv(b"GET / HTTP/1.1\r\n\r\n" + bytes(16))
    with pytest.raises(ProtocolError, match="over the limit"):
        _raw_recv(prefix.pack(b"FLCA", 1, Msg.RESULT, 0, 10, 0, 1 << 40))
    with pytest.raises(ProtocolError, match="over the limit"):
        _raw_recv(prefix.pack(b"FLCA", 1, Msg.HELLO, 0, 10, 0, HELLO_MAX_SIZE), max_message_size=HELLO_MAX_SIZE)
    with pytest.raises(ProtocolError, match="unknown message kind"):
        _raw_recv(prefix.pack(b"FLCA", 1, 99, 0, 10, 0, 0))
    with pytest.raises(ProtocolError, match="malformed"):
        _raw_recv(prefix.pack(b"FLCA", 1, Msg.HEARTBEAT, 0, 5, 0, 0) + b"nope!")
    with pytest.raises(TransportClosed):
        _raw_recv(prefix.pack(b"FLCA", 1, Msg.HEARTBEAT, 0, 50, 0, 0) + b"[1, ")  # truncated
    a, b = socket.socketpair()
    try:
        Channel(a, peer="x").send(Msg.ACCEPTED, {"task_id": 5})
        with pytest.raises(ProtocolError, match="'task_id' must be str"):
            Channel(b, peer="peer").recv(deadline=time.monotonic() + 5)
    finally:
        a.close()
        b.close()


class _FakeExecutor:
    heartbeat_interval = 0.5
    heartbeat_timeout = 5.0
    task_wait_timeout: float | None = None
    result_wait_timeout: float | None = None

    def __init__(self) -> None:
        self.logged: list[str] = []

    def log_info(self, fl_ctx, msg, fire_event=False):
        self.logged.append(msg)

    log_warning = log_error = log_info


class _FakeBackend:
    """What a _Trainer asks of its backend, recorded."""

    site_name = "site-1"
    job_id = "job-1"

    def __init__(self) -> None:
        self.executor = _FakeExecutor()
        self.output: list[str] = []
        self.logs: list[dict] = []
        self.gone: list[str] = []

    def new_context(self):
        return None

    def script_output(self, line, level=logging.INFO, stream=""):
        self.output.append(line)

    def trainer_config(self):
        return _config()

    def trainer_gone(self, trainer):
        self.gone.append(trainer.gone)

    def handle_log(self, record, federated):
        self.logs.append(record)


def test_external_handshake_refuses_strangers_then_serves_the_script(tmp_path):
    from flarelite.app_common.executors.client_api.external_process_backend import _Trainer

    backend = _FakeBackend()
    trainer = _Trainer(backend, "handshake_client.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(FIXTURES), os.environ.get("PYTHONPATH", "")]))
    trainer.start([sys.executable, "-u", os.path.join(FIXTURES, "handshake_client.py")], str(tmp_path), env, 30.0)
    try:
        assert os.stat(trainer.folder).st_mode & 0o777 == 0o700
        assert os.stat(os.path.join(trainer.folder, "bootstrap.json")).st_mode & 0o777 == 0o600
        with trainer.cond:
            assert trainer.cond.wait_for(lambda: trainer.ready or trainer.gone, timeout=30), "no handshake"
        assert trainer.ready, trainer.gone
        data = FLModelUtils.to_shareable(FLModel(params={"w": np.ones(4)}))
        assert trainer.send_task("t1", "train", data)
        with trainer.cond:
            assert trainer.cond.wait_for(lambda: "t1" in trainer.results or trainer.gone, timeout=30)
        np.testing.assert_array_equal(from_shareable(trainer.results["t1"]).data["w"], np.full(4, 2.0))
        assert backend.logs and backend.logs[0]["key"] == "loss"
    finally:
        trainer.stop("test over", 10.0, 5.0)
    assert trainer.exit_code == 0 and not trainer.killed
    assert "garbage connection closed by the site: True" in backend.output
    assert "wrong-token connection closed by the site: True" in backend.output
    assert "handshake client done" in backend.output
    assert sum("refused a connection" in m for m in backend.executor.logged) == 2
    assert not os.path.exists(trainer.folder)  # the private folder (socket, bootstrap) is removed


def _in_process_backend(**timeouts):
    from flarelite.app_common.executors.client_api.in_process_backend import InProcessBackend

    executor = _FakeExecutor()
    for name, value in timeouts.items():
        setattr(executor, name, value)
    backend = InProcessBackend(executor)
    backend.exchange = InProcessExchange(_config(), lambda record: None)
    return backend, executor


def _task() -> Shareable:
    return FLModelUtils.to_shareable(FLModel(params={"x": np.ones(2)}))


def test_in_process_task_waits_and_aborts_say_what_the_script_did():
    from flarelite.apis.fl_context import FLContext
    from flarelite.apis.signal import Signal

    backend, _ = _in_process_backend(task_wait_timeout=0.0)
    reply = backend.execute("train", _task(), FLContext(), Signal())  # the script never takes it
    assert reply.get_return_code() == "EXECUTION_EXCEPTION"
    assert "did not take task 'train' within 0.0s (task_wait_timeout)" in reply.get_header("__error__")
    aborted = Signal()
    aborted.trigger("stop")
    backend, _ = _in_process_backend()
    backend.binding = SiteBinding("site-1", "job-1", backend.exchange, print)  # its script has not called init
    reply = backend.execute("train", _task(), FLContext(), aborted)
    assert reply.get_return_code() == "TASK_ABORTED"
    error = reply.get_header("__error__")
    assert "aborted before the training script took it; the script has not called flare.init()" in error
    backend, _ = _in_process_backend(result_wait_timeout=0.3)
    exchange = backend.exchange
    taker = threading.Thread(target=exchange.receive_task, args=(10.0,))
    taker.start()
    reply = backend.execute("train", _task(), FLContext(), Signal())  # taken, never answered
    taker.join(10)
    assert reply.get_return_code() == "EXECUTION_EXCEPTION"
    assert "sent no result for task 'train' within 0.3s (result_wait_timeout)" in reply.get_header("__error__")


def test_bad_metrics_are_logged_once_per_key_not_once_per_record():
    backend, executor = _in_process_backend()
    for _ in range(200):
        backend.handle_log({"key": "loss", "value": "not a number", "data_type": "SCALAR", "kwargs": {}}, False)
    backend.handle_log({"key": "acc", "value": [1], "data_type": "SCALAR", "kwargs": {}}, False)
    dropped = [m for m in executor.logged if "from the training script dropped" in m]
    assert len(dropped) == 2 and "'loss'" in dropped[0] and "'acc'" in dropped[1]


def _start_trainer(tmp_path, script: str, backend: _FakeBackend):
    from flarelite.app_common.executors.client_api.external_process_backend import _Trainer

    trainer = _Trainer(backend, script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(FIXTURES), os.environ.get("PYTHONPATH", "")]))
    trainer.start([sys.executable, "-u", os.path.join(FIXTURES, script)], str(tmp_path), env, 30.0)
    return trainer


def _wait(trainer, predicate, timeout: float = 30.0) -> None:
    with trainer.cond:
        assert trainer.cond.wait_for(lambda: predicate() or trainer.gone, timeout=timeout), "timed out"
    assert not trainer.gone, trainer.gone


def test_results_for_tasks_not_in_flight_are_dropped(tmp_path):
    backend = _FakeBackend()
    trainer = _start_trainer(tmp_path, "stray_results_client.py", backend)
    try:
        _wait(trainer, lambda: trainer.ready)
        deadline = time.monotonic() + 30
        while not backend.logs and trainer.gone is None and time.monotonic() < deadline:
            with trainer.cond:
                trainer.cond.wait(0.05)
        assert backend.logs and backend.logs[0]["key"] == "strays_sent"
        assert trainer.results == {} and trainer.accepted == set()  # nothing kept for tasks it was never given
        data = FLModelUtils.to_shareable(FLModel(params={"w": np.ones(4)}))
        assert trainer.send_task("t1", "train", data)
        _wait(trainer, lambda: "t1" in trainer.results)
        np.testing.assert_array_equal(from_shareable(trainer.results["t1"]).data["w"], np.full(4, 2.0))
    finally:
        trainer.stop("test over", 10.0, 5.0)
    assert trainer.exit_code == 0 and not trainer.killed
    assert any("not in flight" in m for m in backend.executor.logged)
    assert sum("not in flight" in m for m in backend.executor.logged) < 5  # rate-limited, not one line per message


def test_handshake_is_not_held_up_by_slow_or_many_connections(tmp_path):
    from flarelite.app_common.executors.client_api.handshake import MAX_PENDING

    backend = _FakeBackend()
    trainer = _start_trainer(tmp_path, "slow_knock_client.py", backend)
    try:
        _wait(trainer, lambda: trainer.ready)
        data = FLModelUtils.to_shareable(FLModel(params={"w": np.ones(2)}))
        assert trainer.send_task("t1", "train", data)
        _wait(trainer, lambda: "t1" in trainer.results)
    finally:
        trainer.stop("test over", 10.0, 5.0)
    took = [line.split() for line in backend.output if line.startswith("init took")]
    assert took, backend.output
    assert int(took[0][4]) >= MAX_PENDING  # the stalled connections filled the doorman (some were pushed out)
    assert float(took[0][2][:-1]) < 5.0  # not one HELLO_TIMEOUT (10 s) per stalled connection


def test_channel_memory_follows_the_bytes_received():
    if not os.path.exists("/proc/self/status"):
        pytest.skip("reads VmRSS from /proc")

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    a, b = socket.socketpair()
    channel = Channel(b, peer="script")
    errors: list[Exception] = []

    def read() -> None:
        try:
            channel.recv()
        except Exception as exc:  # the connection is closed below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()

    def wait_for_progress(since: float) -> None:
        deadline = time.monotonic() + 10
        while channel.last_seen <= since and time.monotonic() < deadline:
            time.sleep(0.01)
        assert channel.last_seen > since, "the reader did not get the bytes"

    try:
        from flarelite.serialization import encode

        meta, _ = encode({"task_id": "t", "data": Shareable({"b": b"0123456789"})})
        announced = 256 << 20
        prefix = struct.Struct("<4sBBHIIQ").pack(b"FLCA", 1, Msg.RESULT, 0, len(meta), 1, announced)
        before = rss_mib()
        mark = channel.last_seen
        a.sendall(prefix + struct.pack("<Q", announced) + meta)
        wait_for_progress(mark)
        mark = channel.last_seen
        a.sendall(b"abc")  # 3 of the 256 MiB announced
        wait_for_progress(mark)
        grown = rss_mib() - before
    finally:
        a.close()
        reader.join(10)
        channel.close()
    assert grown < 32, f"announcing 256 MiB and sending 3 bytes made the reader grow by {grown:.0f} MiB"
    assert errors and isinstance(errors[0], TransportClosed)


def test_script_process_dies_with_its_site_process():
    helper = subprocess.Popen([sys.executable, os.path.join(FIXTURES, "sleeper.py")], stdout=subprocess.PIPE, text=True)
    try:
        child = int(helper.stdout.readline())
        assert os.path.exists(f"/proc/{child}") or sys.platform != "linux"
    finally:
        helper.send_signal(signal.SIGKILL)
        helper.wait(10)
        helper.stdout.close()
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), f"the script process {child} outlived its site process"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
