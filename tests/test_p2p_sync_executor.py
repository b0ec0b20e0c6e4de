"""SyncAlgorithmExecutor's exchange, unit-tested with a fake engine that delivers aux requests directly."""

from __future__ import annotations

import threading
import time

import pytest

from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.event_type import EventType
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContextManager
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from flarelite.apis.signal import Signal
from flarelite.app_opt.p2p.executors import AlgorithmStopped, ConsensusExecutor, SyncAlgorithmExecutor
from flarelite.app_opt.p2p.types import LocalConfig, Neighbor
from flarelite.serialization import decode, encode


class FakeEngine:
    """Routes aux requests to the registered handlers of other fake sites, through the codec."""

    def __init__(self, name: str, network: dict) -> None:
        self.name = name
        self.network = network
        network[name] = self
        self.handlers: dict = {}
        self.aborted: list[str] = []
        self.abort_signal = Signal()
        self.ctx = FLContextManager(
            engine=self,
            identity_name=name,
            job_id="job",
            private_stickers={ReservedKey.RUN_ABORT_SIGNAL: self.abort_signal},
        )

    def new_context(self):
        return self.ctx.new_context()

    def register_aux_message_handler(self, topic, message_handle_func):
        self.handlers[topic] = message_handle_func

    def send_aux_request(self, targets, topic, request, timeout, fl_ctx, optional=False, secure=False):
        replies = {}
        for target in targets:
            peer = self.network.get(target)
            if peer is None or topic not in peer.handlers:
                replies[target] = make_reply(
                    ReturnCode.TOPIC_UNKNOWN, {ReservedHeaderKey.ERROR: f"nothing at {target}"}
                )
                continue
            encoded = encode(request)
            received = decode(encoded.meta, encoded.buffers)
            received.set_peer_props({ReservedKey.IDENTITY_NAME: self.name})
            replies[target] = peer.handlers[topic](topic=topic, request=received, fl_ctx=peer.new_context())
        return replies

    def fire_event(self, event_type, fl_ctx):
        pass

    def abort_run(self, reason, fl_ctx=None):
        self.aborted.append(reason)
        self.abort_signal.trigger(reason)


class Plain(SyncAlgorithmExecutor):
    def run_algorithm(self, fl_ctx, shareable, abort_signal):
        pass


def make_site(name: str, network: dict, neighbours: list[str], out: list[str] | None = None, timeout: float = 5):
    engine = FakeEngine(name, network)
    executor = Plain(sync_timeout=timeout)
    ctx = engine.new_context()
    executor.handle_event(EventType.START_RUN, ctx)
    config = LocalConfig(neighbors=[Neighbor(n, 0.25) for n in neighbours], out_neighbors=out)
    task = DXO(data_kind=DataKind.APP_DEFINED, data=config.to_dict()).to_shareable()
    assert executor.execute("config", task, ctx, Signal()).get_return_code() == ReturnCode.OK
    return executor, engine, ctx


def push(engine_from: FakeEngine, to: str, value, iteration: int) -> Shareable:
    request = DXO(data_kind=DataKind.APP_DEFINED, data={"value": value, "iteration": iteration}).to_shareable()
    return engine_from.send_aux_request([to], "neighbor_value", request, 1, engine_from.new_context())[to]


def test_config_sets_neighbours_and_own_weight():
    network: dict = {}
    executor, _, _ = make_site("site-1", network, ["site-2", "site-3"])
    assert [n.id for n in executor.neighbors] == ["site-2", "site-3"]
    assert executor._weight == pytest.approx(0.5)
    assert executor.client_name == "site-1" and executor.id == 1


def test_early_values_are_kept_and_old_ones_freed():
    network: dict = {}
    a, engine_a, ctx_a = make_site("site-1", network, ["site-2"])
    b, engine_b, _ = make_site("site-2", network, ["site-1"])
    # site-2 is ahead: its values for iterations 0 and 1 arrive before site-1 exchanges anything
    assert push(engine_b, "site-1", 10.0, 0).get_return_code() == ReturnCode.OK
    assert push(engine_b, "site-1", 11.0, 1).get_return_code() == ReturnCode.OK
    assert a._exchange_values(ctx_a, value=1.0, iteration=0) == {"site-2": 10.0}
    assert b.neighbors_values[0] == {"site-1": 1.0}  # site-1's value reached site-2
    assert sorted(a.neighbors_values) == [0, 1]  # iteration 1's value is kept for later
    assert a._exchange_values(ctx_a, value=2.0, iteration=1) == {"site-2": 11.0}
    assert sorted(a.neighbors_values) == [1]  # iteration 0's values are freed
    # a late duplicate for a freed iteration is dropped, not stored
    assert push(engine_b, "site-1", 99.0, 0).get_return_code() == ReturnCode.OK
    assert 0 not in a.neighbors_values


def test_waits_for_a_value_that_arrives_later():
    network: dict = {}
    a, _, ctx_a = make_site("site-1", network, ["site-2"])
    _, engine_b, _ = make_site("site-2", network, ["site-1"])
    timer = threading.Timer(0.2, push, args=(engine_b, "site-1", 5.0, 0))
    timer.start()
    try:
        assert a._exchange_values(ctx_a, value=1.0, iteration=0) == {"site-2": 5.0}
    finally:
        timer.join()


def test_directed_sends_to_out_neighbours_and_waits_for_in_neighbours():
    network: dict = {}
    # directed ring 1 <- 2 <- 3 <- 1: site-1 receives from site-2 and sends to site-3
    a, _, ctx_a = make_site("site-1", network, ["site-2"], out=["site-3"])
    c, _, _ = make_site("site-3", network, ["site-1"], out=["site-2"])
    _, engine_b, _ = make_site("site-2", network, ["site-3"], out=["site-1"])
    push(engine_b, "site-1", 7.0, 0)
    assert a._exchange_values(ctx_a, value=3.0, iteration=0) == {"site-2": 7.0}
    assert c.neighbors_values[0] == {"site-1": 3.0}


def test_a_neighbour_that_never_answers_is_named_after_the_timeout():
    network: dict = {}
    a, engine_a, ctx_a = make_site("site-1", network, ["site-2", "site-3"], timeout=0.3)
    make_site("site-2", network, ["site-1"])
    make_site("site-3", network, ["site-1"])
    start = time.monotonic()
    with pytest.raises(AlgorithmStopped) as info:
        a._exchange_values(ctx_a, value=1.0, iteration=0)
    assert 0.25 < time.monotonic() - start < 3
    assert "no value from neighbour(s) site-2, site-3 for iteration 0 within 0.3s" in info.value.reason
    assert engine_a.aborted and "site-2" in engine_a.aborted[0]  # the run is ended (system_panic)


def test_a_neighbour_without_the_handler_is_named_at_once():
    network: dict = {}
    a, engine_a, ctx_a = make_site("site-1", network, ["site-2"], timeout=5)
    start = time.monotonic()
    with pytest.raises(
        AlgorithmStopped, match=r"could not deliver its value for iteration 0 to site-2 \(TOPIC_UNKNOWN"
    ):
        a._exchange_values(ctx_a, value=1.0, iteration=0)
    assert time.monotonic() - start < 2
    assert engine_a.aborted


def test_abort_ends_the_wait_without_a_panic():
    network: dict = {}
    a, engine_a, ctx_a = make_site("site-1", network, ["site-2"], out=[], timeout=30)
    threading.Timer(0.2, engine_a.abort_signal.trigger, args=("stop",)).start()
    start = time.monotonic()
    with pytest.raises(AlgorithmStopped) as info:
        a._exchange_values(ctx_a, value=1.0, iteration=0)
    assert info.value.return_code == ReturnCode.TASK_ABORTED
    assert time.monotonic() - start < 2
    assert not engine_a.aborted  # an abort is not a new failure


def test_value_from_a_stranger_is_kept_apart_and_explained():
    network: dict = {}
    a, _, ctx_a = make_site("site-1", network, ["site-2"], out=[], timeout=0.3)
    _, engine_c, _ = make_site("site-3", network, [])
    push(engine_c, "site-1", 1.0, 0)
    with pytest.raises(AlgorithmStopped, match="values came instead from \\['site-3'\\].*directed"):
        a._exchange_values(ctx_a, value=1.0, iteration=0)


def test_run_algorithm_answers_task_aborted_and_errors_as_return_codes():
    network: dict = {}
    engine = FakeEngine("site-1", network)
    executor = ConsensusExecutor(initial_value=1.0)
    ctx = engine.new_context()
    executor.handle_event(EventType.START_RUN, ctx)
    run = DXO(data_kind=DataKind.APP_DEFINED, data={"iterations": 3}).to_shareable()
    reply = executor.execute("run_algorithm", run, ctx, Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "before its 'config' task" in reply.get_header(ReservedHeaderKey.ERROR)
    unweighted = LocalConfig(neighbors=[Neighbor("site-2")]).to_dict()
    config = DXO(data_kind=DataKind.APP_DEFINED, data=unweighted).to_shareable()
    assert executor.execute("config", config, ctx, Signal()).get_return_code() == ReturnCode.OK
    reply = executor.execute("run_algorithm", run, ctx, Signal())
    assert "neighbours ['site-2'] have no weight" in reply.get_header(ReservedHeaderKey.ERROR)
    bad = DXO(data_kind=DataKind.APP_DEFINED, data={"neighbors": "x"}).to_shareable()
    assert executor.execute("config", bad, ctx, Signal()).get_return_code() == ReturnCode.BAD_TASK_DATA
    assert executor.execute("train", run, ctx, Signal()).get_return_code() == ReturnCode.TASK_UNKNOWN


def test_consensus_initial_values():
    assert 0 <= ConsensusExecutor().current_value < 1
    assert ConsensusExecutor(initial_value=[1, 2]).current_value.tolist() == [1.0, 2.0]
    assert ConsensusExecutor(initial_value=3).current_value == 3.0
    with pytest.raises(TypeError, match="initial_value"):
        ConsensusExecutor(initial_value="big")
    with pytest.raises(ValueError, match="sync_timeout"):
        ConsensusExecutor(sync_timeout=0)
