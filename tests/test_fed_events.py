"""Federated events: fire_fed_event, the "fed.event" receiver (identity, duplicates, refusals, floods), job runs."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from event_support import RecordingEngine, Watcher, fixture_module

from flarelite.apis.event_type import EventType
from flarelite.apis.fl_component import FED_EVENT_TOPIC, FLComponent
from flarelite.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext, FLContextManager, peer_context_from_props
from flarelite.apis.shareable import Shareable
from flarelite.job_config import FedJob
from flarelite.runtime.fed_events import FedEventReceiver


@pytest.fixture(scope="module")
def m() -> Iterator[ModuleType]:
    """The fixture components, imported as top-level module ``fed_event_modules`` (as a job's custom code)."""
    yield from fixture_module("fed_event_modules")


# --- the sending side, with a recording engine --------------------------------------------------------------
def test_fire_fed_event_fires_here_then_sends_to_the_server() -> None:
    engine = RecordingEngine("site-1")
    watcher, sender = Watcher(), FLComponent()
    engine.components = {"w": watcher}
    fl_ctx = engine.new_context()
    fl_ctx.set_prop(FLContextKey.EVENT_SCOPE, EventScope.LOCAL, private=True, sticky=False)
    data = Shareable({"n": 1})
    sender.fire_fed_event("fed.x", data, fl_ctx)
    assert watcher.seen == [("fed.x", EventScope.FEDERATION, data)]  # fired here too, as NVFlare does
    assert fl_ctx.get_prop(FLContextKey.EVENT_SCOPE) == EventScope.LOCAL  # put back afterwards
    [(targets, topic, request, timeout)] = engine.sent
    assert (targets, topic, timeout) == ("server", FED_EVENT_TOPIC, 0)  # fire-and-forget, to the server
    assert request is not data and request["n"] == 1
    headers = {k: request.get_header(k) for k in ("_event_type", "_origin", "_direction", "_targets")}
    assert headers == {"_event_type": "fed.x", "_origin": "site-1", "_direction": "out", "_targets": None}
    assert isinstance(request.get_header(FedEventHeader.TIMESTAMP), float)
    first_id = request.get_header(FedEventHeader.EVENT_ID)
    sender.fire_fed_event("fed.x", Shareable(), fl_ctx)
    assert len(first_id) == 32 and engine.sent[1][2].get_header(FedEventHeader.EVENT_ID) != first_id


def test_fire_fed_event_from_the_server_goes_to_every_client_or_the_targets() -> None:
    engine = RecordingEngine("server")
    comp = FLComponent()
    comp.fire_fed_event("fed.y", Shareable(), engine.new_context())
    comp.fire_fed_event("fed.y", Shareable(), engine.new_context(), targets=["site-2"])
    assert [s[0] for s in engine.sent] == [None, ["site-2"]]


def test_fire_fed_event_does_not_send_what_receivers_refuse_or_what_it_received(caplog) -> None:
    engine = RecordingEngine("site-1")
    watcher = Watcher()
    engine.components = {"w": watcher}
    comp = FLComponent()
    with caplog.at_level(logging.ERROR):
        comp.fire_fed_event("not_fed", Shareable(), engine.new_context())
    assert "start with 'fed.'" in caplog.text and "'fed.not_fed'" in caplog.text
    received = Shareable()
    received.set_header(FedEventHeader.DIRECTION, "in")
    comp.fire_fed_event("fed.z", received, engine.new_context())
    assert engine.sent == [] and [s[0] for s in watcher.seen] == ["not_fed", "fed.z"]
    with pytest.raises(TypeError, match="Shareable"):
        comp.fire_fed_event("fed.z", {"n": 1}, engine.new_context())  # type: ignore[arg-type]


# --- the receiving side, with a fake site -------------------------------------------------------------------
class FakeSite:
    """What FedEventReceiver needs of a site; its fire_event can be held to build up a queue."""

    def __init__(self) -> None:
        self.name = "server"
        self.log = logging.getLogger("test.fed_events")
        self.manager = FLContextManager(engine=self, identity_name="server", job_id="job")
        self.handlers: dict = {}
        self.fired: list[tuple[str, str, str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def new_context(self) -> FLContext:
        return self.manager.new_context()

    def register_aux_message_handler(self, topic, func) -> None:
        self.handlers[topic] = func

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        peer = fl_ctx.get_peer_context()
        self.fired.append(
            (
                event_type,
                peer.get_identity_name(),
                fl_ctx.get_prop(FLContextKey.EVENT_SCOPE),
                fl_ctx.get_prop(FLContextKey.EVENT_DATA),
            )
        )


def deliver(receiver: FedEventReceiver, peer: str, event_type: Any, event_id: Any, **payload: Any) -> Shareable:
    """Call the handler as the aux runner does: peer props and peer context say who the transport proved."""
    return deliver_request(receiver, peer, event_type, event_id, Shareable(payload))


def deliver_request(receiver: FedEventReceiver, peer: str, event_type: Any, event_id: Any, request: Shareable):
    request.set_header(FedEventHeader.EVENT_TYPE, event_type)
    if event_id is not None:
        request.set_header(FedEventHeader.EVENT_ID, event_id)
    request.set_header(FedEventHeader.ORIGIN, "someone-else")
    props = {ReservedKey.IDENTITY_NAME: peer, ReservedKey.RUN_NUM: "job"}
    request.set_peer_props(props)
    ctx = FLContext()
    ctx.set_peer_context(peer_context_from_props(props))
    return receiver.receive(FED_EVENT_TOPIC, request, ctx)


def test_receiver_fires_with_the_proved_identity_and_drops_duplicates() -> None:
    site = FakeSite()
    receiver = FedEventReceiver(site)  # type: ignore[arg-type]
    receiver.register()
    assert site.handlers[FED_EVENT_TOPIC] == receiver.receive
    assert deliver(receiver, "site-1", "fed.a", "id-1", n=1).get_return_code() == ReturnCode.OK
    assert deliver(receiver, "site-1", "fed.a", "id-1", n=1).get_return_code() == ReturnCode.OK  # duplicate
    assert deliver(receiver, "site-2", "fed.a", "id-1", n=2).get_return_code() == ReturnCode.OK  # other peer
    receiver.close()
    assert [(t, p, s, d["n"]) for t, p, s, d in site.fired] == [
        ("fed.a", "site-1", EventScope.FEDERATION, 1),
        ("fed.a", "site-2", EventScope.FEDERATION, 2),
    ]
    assert receiver.duplicates == 1
    assert site.fired[0][3].get_header(FedEventHeader.DIRECTION) == "in"
    assert deliver(receiver, "site-1", "fed.a", "id-9").get_return_code() == ReturnCode.SERVICE_UNAVAILABLE  # ended


def test_receiver_refuses_other_event_types_and_events_without_id(caplog) -> None:
    site = FakeSite()
    receiver = FedEventReceiver(site)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        for bad_type in (EventType.END_RUN, "analytix_log_stats", None, 7):
            assert deliver(receiver, "site-1", bad_type, "x").get_return_code() == ReturnCode.BAD_REQUEST_DATA
        assert deliver(receiver, "site-2", "fed.a", None).get_return_code() == ReturnCode.BAD_REQUEST_DATA
        assert deliver(receiver, "site-2", "fed.a", "y" * 500).get_return_code() == ReturnCode.BAD_REQUEST_DATA
    receiver.close()
    assert site.fired == []
    assert "refused a federated event from site-1" in caplog.text and "'_end_run'" in caplog.text
    assert caplog.text.count("from site-1") == 1  # rate-limited: one line per peer


def test_a_flood_is_bounded_per_peer_and_logged_once(caplog) -> None:
    site = FakeSite()
    site.gate.clear()  # the worker takes the first event and holds it: the rest queue up
    receiver = FedEventReceiver(site, max_queued_per_peer=8, max_seen_per_peer=16)  # type: ignore[arg-type]
    assert deliver(receiver, "site-1", "fed.f", "e0").get_return_code() == ReturnCode.OK
    assert site.entered.wait(10)
    with caplog.at_level(logging.WARNING):
        rcs = [deliver(receiver, "site-1", "fed.f", f"e{i}").get_return_code() for i in range(1, 300)]
    assert rcs.count(ReturnCode.OK) == 8 and rcs.count(ReturnCode.SERVICE_UNAVAILABLE) == 291
    assert receiver.dropped == 291
    assert caplog.text.count("dropped") == 1 and "from site-1" in caplog.text  # once per peer per 10 s
    assert deliver(receiver, "site-2", "fed.f", "e0").get_return_code() == ReturnCode.OK  # its own budget
    big = "x" * (1 << 20)
    small = FedEventReceiver(site, max_queued_bytes_per_peer=1 << 19)  # type: ignore[arg-type]
    assert deliver(small, "site-3", "fed.f", "big", blob=big).get_return_code() == ReturnCode.SERVICE_UNAVAILABLE
    small.close()
    site.gate.set()
    receiver.close()
    assert len(site.fired) == 1 + 8 + 1
    assert len(receiver._seen["site-1"]) <= 16  # the LRU of seen ids is bounded


def test_a_peers_events_are_fired_in_the_order_it_fired_them() -> None:
    site = FakeSite()
    receiver = FedEventReceiver(site, reorder_window=0.5)  # type: ignore[arg-type]
    for stamp, n in [(2.0, 2), (1.0, 1), (3.0, 3), (None, 4)]:  # 1 overtook 2 (handled on another aux thread)
        request = Shareable({"n": n})
        if stamp is not None:
            request.set_header(FedEventHeader.TIMESTAMP, stamp)
        deliver_request(receiver, "site-1", "fed.o", f"o{n}", request)
    receiver.close()  # fires what is queued at once, in order
    assert [d["n"] for *_, d in site.fired] == [1, 2, 3, 4]


def test_close_waits_for_the_queue_then_gives_up(caplog) -> None:
    site = FakeSite()
    site.gate.clear()
    receiver = FedEventReceiver(site)  # type: ignore[arg-type]
    for i in range(3):
        deliver(receiver, "site-1", "fed.s", f"s{i}")
    assert site.entered.wait(10)
    with caplog.at_level(logging.WARNING):
        receiver.close(grace=0.2)  # the handler is stuck: two events are left and dropped
    assert "2 federated event(s) were still queued" in caplog.text
    site.gate.set()


# --- job runs -----------------------------------------------------------------------------------------------
def check_run(ws: Path) -> None:
    seen = json.loads((ws / "server" / "fed_events.json").read_text())
    events, results = seen["events"], seen["results"]
    sites = ["site-1", "site-2"]
    assert not [e for e in events if e["marked"]]  # "_end_run" from a client was never fired at the server
    local_hello = [e for e in events if e["type"] == "fed.hello_clients"]
    assert local_hello == [
        {
            "type": "fed.hello_clients",
            "peer": None,
            "scope": "federation",
            "origin_header": "server",
            "n": 0,
            "marked": False,
        }
    ]
    pings = sorted((e["peer"], e["scope"], e["origin_header"], e["n"]) for e in events if e["type"] == "fed.test_ping")
    assert pings == [(s, "federation", s, 1) for s in sites]
    spoofs = sorted((e["peer"], e["origin_header"]) for e in events if e["type"] == "fed.test_spoof")
    assert spoofs == [(s, "site-evil") for s in sites]  # the transport's identity, once each (duplicate dropped)
    assert not [e for e in events if e["type"] == "fed.test_noid"]
    for s in sites:
        r = results[s]
        assert r["got_hello"] and r["hello_peer"] == "server" and r["hello_scope"] == "federation"
        assert r["local_scopes"] == ["federation"]  # fire_fed_event also fires at the sending site
        assert r["spoof_rcs"] == ["OK", "OK"]
        assert r["bad_rc"] == ReturnCode.BAD_REQUEST_DATA and r["no_id_rc"] == ReturnCode.BAD_REQUEST_DATA


def fed_event_job(m: ModuleType) -> FedJob:
    job = FedJob(name="fed_events", min_clients=2)
    job.to_server(m.FedEventController())
    job.to_clients(m.FedEventExecutor())
    return job


def test_fed_events_in_memory(m: ModuleType, tmp_path: Path) -> None:
    assert fed_event_job(m).simulator_run(str(tmp_path), n_clients=2, protocol="memory") == 0
    check_run(tmp_path)


def test_fed_events_as_processes(m: ModuleType, tmp_path: Path) -> None:
    assert fed_event_job(m).simulator_run(str(tmp_path), n_clients=2) == 0
    check_run(tmp_path)


def test_a_flooding_peer_does_not_hold_back_the_others() -> None:
    """Peers take turns: an event from site-2 is fired after at most one more of site-1's queued flood."""
    site = FakeSite()
    site.gate.clear()
    receiver = FedEventReceiver(site, reorder_window=0.0)  # type: ignore[arg-type]
    deliver(receiver, "site-1", "fed.f", "e0")
    assert site.entered.wait(10)  # the worker holds site-1's first event
    for i in range(1, 100):
        assert deliver(receiver, "site-1", "fed.f", f"e{i}").get_return_code() == ReturnCode.OK
    deliver(receiver, "site-2", "fed.f", "honest")
    site.gate.set()
    receiver.close()
    peers = [p for _, p, _, _ in site.fired]
    assert len(peers) == 101 and peers.index("site-2") <= 2, peers[:5]
