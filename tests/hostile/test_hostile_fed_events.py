"""Federated events from an insider, over the wire: a site fires only ``fed.`` events a peer sends, under the
identity the peer's certificate proved; duplicates, floods, oversized events and events after the end of the run
cost the victim nothing but a bounded queue, and the honest peers' events still come through.

The victim (site-1) and the honest peer (site-2) are real client runtimes under mutual TLS; the insider is
site-3, a Rogue with its own valid certificate that writes the ``fed.event`` aux frames by hand.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from typing import Any

import pytest
from rogue import Rogue
from wire_fixtures.inbox import Inbox

from flarelite.apis.fl_component import FED_EVENT_TOPIC, FLComponent
from flarelite.apis.fl_constant import FedEventHeader, FLContextKey, ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.communication.protocol import Frame
from flarelite.runtime import fed_events
from flarelite.runtime.client import ClientRuntime
from flarelite.runtime.frames import Kind, frame_shareable, make_frame

SITES = ["server", "site-1", "site-2", "site-3"]


class Recorder(FLComponent):
    """Records the events fired at the victim with a peer context: (type, peer, _origin header, data["n"]).
    Holds the event worker on its first event from site-3 while ``gate`` is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any, Any, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.holding = threading.Event()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        peer = fl_ctx.get_peer_context()
        if peer is None:
            return
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        origin = data.get_header(FedEventHeader.ORIGIN) if isinstance(data, Shareable) else None
        n = data.get("n") if isinstance(data, Shareable) else None
        self.seen.append((event_type, peer.get_identity_name(), origin, n))
        if peer.get_identity_name() == "site-3" and not self.gate.is_set():
            self.holding.set()
            assert self.gate.wait(20)


@pytest.fixture
def world(pki):
    """A relaying server endpoint, site-1 (the victim, with a Recorder) and site-2 runtimes, a rogue site-3."""
    folder = tempfile.mkdtemp(prefix="fl")
    started: list = []
    server = GrpcCommunicationProtocol(
        "server", listen=f"unix://{folder}/s.sock", tls=TLSConfig.from_dir("mtls", pki, "server")
    )
    inbox = Inbox()
    server.start(inbox.on_frame, inbox.on_peer)
    started.append(server)
    runtimes = {}
    for name in ("site-1", "site-2"):
        protocol = GrpcCommunicationProtocol(
            name, server=server.bound, tls=TLSConfig.from_dir("mtls", pki, name), connect_timeout=20
        )
        rt = ClientRuntime(
            name=name, job_id="j", protocol=protocol, run_dir=folder, workspace_root=folder, app_config={}
        )
        rt.open()
        started.append(rt.protocol)
        rt.sites = list(SITES)
        rt.aux.set_ready()
        runtimes[name] = rt
    recorder = Recorder()
    runtimes["site-1"].components["recorder"] = recorder
    rogue = Rogue(server.bound, TLSConfig.from_dir("mtls", pki, "site-3"))
    assert rogue.hello("site-3").WhichOneof("body") == "welcome"
    for name in ("site-1", "site-2", "site-3"):
        inbox.wait_peer(name, True)
    yield runtimes["site-1"], runtimes["site-2"], rogue, recorder
    recorder.gate.set()
    rogue.close()
    for ep in reversed(started):
        ep.stop()
    shutil.rmtree(folder, ignore_errors=True)


def send_event(
    rogue: Rogue, event_type: str, event_id: str, n: int = 0, claim: str = "site-2", kind: str = Kind.AUX_POST, **data
) -> None:
    """What a hostile site-3 writes: a fed.event aux frame to site-1 that claims to come from ``claim``."""
    body = Shareable({"n": n, **data})
    body.set_header(FedEventHeader.EVENT_TYPE, event_type)
    body.set_header(FedEventHeader.EVENT_ID, event_id)
    body.set_header(FedEventHeader.ORIGIN, claim)
    body.set_header(FedEventHeader.TIMESTAMP, time.time())
    body.set_peer_props({ReservedKey.IDENTITY_NAME: claim, ReservedKey.RUN_NUM: "j"})
    meta = make_frame(kind, body).meta
    rogue.frame(target="site-1", kind=kind, msg_id=event_id, topic=FED_EVENT_TOPIC, job_id="j", meta=meta, sender=claim)


def ask(rogue: Rogue, event_type: str, event_id: str, **data: Any) -> str:
    """Send the event as a request that wants a reply; return the reply's return code."""
    send_event(rogue, event_type, event_id, kind=Kind.AUX_REQUEST, **data)
    while True:
        header = rogue.receive("header", timeout=15).header
        if header.kind == Kind.AUX_REPLY and header.ref_id == event_id:
            return frame_shareable(Frame(kind=header.kind, meta=header.meta)).get_return_code()


def wait_for(cond, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def honest_event(site2: ClientRuntime, n: int) -> None:
    FLComponent().fire_fed_event("fed.honest", Shareable({"n": n}), site2.new_context(), targets=["site-1"])


def test_an_insider_fires_only_fed_events_under_its_own_name_once(world) -> None:
    site1, site2, rogue, recorder = world
    for event_type in ("_end_run", "_abort_task", "analytix_log_stats", "fed." + "x" * 300):
        assert ask(rogue, event_type, f"bad-{event_type[:10]}") == ReturnCode.BAD_REQUEST_DATA
    assert ask(rogue, "fed.spoof", "dup", n=1) == ReturnCode.OK
    assert ask(rogue, "fed.spoof", "dup", n=2) == ReturnCode.OK  # the same id again: taken, dropped
    honest_event(site2, 7)
    assert wait_for(lambda: len(recorder.seen) >= 2)
    assert site1.fed_events.duplicates == 1
    assert sorted(recorder.seen) == [("fed.honest", "site-2", "site-2", 7), ("fed.spoof", "site-3", "site-2", 1)]


def test_a_flood_is_bounded_and_the_honest_events_still_come_first(world, monkeypatch) -> None:
    site1, site2, rogue, recorder = world
    receiver = site1.fed_events
    monkeypatch.setattr(receiver, "reorder_window", 0.0)  # turns, not the 50 ms wait for overtaken events
    recorder.gate.clear()  # the victim's worker is held on site-3's first event: the rest of the flood queues
    send_event(rogue, "fed.flood", "f0")
    assert recorder.holding.wait(15)
    flood = fed_events.MAX_QUEUED_PER_PEER + 500
    for i in range(1, flood):
        send_event(rogue, "fed.flood", f"f{i}", n=i)
    expected = flood - 1 - fed_events.MAX_QUEUED_PER_PEER  # f0 is being fired; the queue holds the most it may
    assert wait_for(lambda: receiver.dropped == expected), receiver.dropped
    assert len(receiver._heaps.get("site-3", [])) <= fed_events.MAX_QUEUED_PER_PEER
    honest_event(site2, 1)
    assert wait_for(lambda: "site-2" in receiver._heaps)  # queued behind the flood, not dropped
    recorder.gate.set()
    assert wait_for(lambda: ("fed.honest", "site-2", "site-2", 1) in recorder.seen)
    order = [peer for _, peer, _, _ in recorder.seen]
    assert order.index("site-2") <= 2, order[:5]  # peers take turns: one flood event went before it, at most


def test_oversized_events_and_events_after_the_end_of_the_run_are_not_fired(world, monkeypatch) -> None:
    site1, site2, rogue, recorder = world
    monkeypatch.setattr(site1.fed_events, "max_queued_bytes_per_peer", 1 << 20)
    assert ask(rogue, "fed.big", "big", blob="x" * (2 << 20)) == ReturnCode.SERVICE_UNAVAILABLE
    assert ask(rogue, "fed.small", "small", n=3) == ReturnCode.OK
    assert wait_for(lambda: ("fed.small", "site-3", "site-2", 3) in recorder.seen)
    assert site1.fed_events.dropped == 1 and not [s for s in recorder.seen if s[0] == "fed.big"]
    site1.fed_events.close(grace=1.0)  # END_RUN at the victim
    before = list(recorder.seen)
    assert ask(rogue, "fed.late", "late") == ReturnCode.SERVICE_UNAVAILABLE
    late = Shareable()
    for key, value in ((FedEventHeader.EVENT_TYPE, "fed.late"), (FedEventHeader.EVENT_ID, "honest-late")):
        late.set_header(key, value)
    replies = site2.send_aux_request(["site-1"], FED_EVENT_TOPIC, late, 10, site2.new_context())
    assert replies["site-1"].get_return_code() == ReturnCode.SERVICE_UNAVAILABLE
    assert recorder.seen == before
