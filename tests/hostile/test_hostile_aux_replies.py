"""Forged aux replies: a reply is accepted only from the site the request went to, matched on (peer, request id),
and request ids cannot be guessed.

The victim (site-1) and the honest peer (site-2) are real client runtimes on real gRPC endpoints under mutual
TLS; the insider is site-3, a Rogue with its own valid certificate, speaking the wire by hand. Before the fix
request ids were a counter from 1 and any site could answer any request: site-3's forged replies came back
keyed as site-2.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading

import pytest
from rogue import Rogue
from support import wait_for
from wire_fixtures.inbox import Inbox

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.shareable import Shareable
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.runtime.aux import new_message_id
from flarelite.runtime.client import ClientRuntime
from flarelite.runtime.frames import Kind, make_frame

SITES = ["server", "site-1", "site-2", "site-3"]
_RUNTIMES: list = []  # the runtimes the world fixture started (the flood test reaches site-2 through it)


@pytest.fixture
def world(pki):
    """A server endpoint, site-1 and site-2 runtimes (site-2 answers 'echo' once released), a rogue site-3."""
    folder = tempfile.mkdtemp(prefix="fl")
    started: list = []
    release = threading.Event()

    def echo(topic, request, fl_ctx):
        release.wait(20)
        return DXO(data_kind=DataKind.APP_DEFINED, data={"from": "site-2"}).to_shareable()

    def runtime(name: str) -> ClientRuntime:
        protocol = GrpcCommunicationProtocol(
            name, server=server.bound, tls=TLSConfig.from_dir("mtls", pki, name), connect_timeout=20
        )
        rt = ClientRuntime(
            name=name, job_id="j", protocol=protocol, run_dir=folder, workspace_root=folder, app_config={}
        )
        rt.open()
        _RUNTIMES.append(rt)
        started.append(rt.protocol)
        rt.sites = list(SITES)
        return rt

    server = GrpcCommunicationProtocol(
        "server", listen=f"unix://{folder}/s.sock", tls=TLSConfig.from_dir("mtls", pki, "server")
    )
    inbox = Inbox()
    server.start(inbox.on_frame, inbox.on_peer)
    started.append(server)
    site1, site2 = runtime("site-1"), runtime("site-2")
    site2.register_aux_message_handler("echo", echo)
    site2.aux.set_ready()
    rogue = Rogue(server.bound, TLSConfig.from_dir("mtls", pki, "site-3"))
    assert rogue.hello("site-3").WhichOneof("body") == "welcome"
    for name in ("site-1", "site-2", "site-3"):
        inbox.wait_peer(name, True)
    for rt in (site1, site2):  # the sites have heard of their peers too (else a send to site-3 fails at once)
        wait_for(lambda rt=rt: set(SITES[1:]) - {rt.name} <= rt.protocol._peers, 20)
    yield site1, rogue, release
    release.set()
    rogue.close()
    for ep in reversed(started):
        ep.stop()
    _RUNTIMES.clear()
    shutil.rmtree(folder, ignore_errors=True)


def forged_reply(ref_id: str, claim: str) -> dict:
    reply = DXO(data_kind=DataKind.APP_DEFINED, data={"from": "forged"}).to_shareable()
    reply.set_return_code(ReturnCode.OK)
    reply.set_peer_props({ReservedKey.IDENTITY_NAME: claim, ReservedKey.RUN_NUM: "j"})
    frame = make_frame(Kind.AUX_REPLY, reply)
    assert not frame.buffers
    return dict(kind=Kind.AUX_REPLY, ref_id=ref_id, topic="echo", job_id="j", meta=frame.meta, sender=claim)


def test_an_insider_cannot_answer_a_request_sent_to_another_site(world):
    site1, rogue, release = world
    out: dict = {}

    def ask() -> None:
        request = DXO(data_kind=DataKind.APP_DEFINED, data={"q": 1}).to_shareable()
        out.update(site1.send_aux_request(["site-2", "site-3"], "echo", request, 15, site1.new_context()))

    asker = threading.Thread(target=ask)
    asker.start()
    mine = rogue.receive("header", timeout=30).header  # site-1's request to site-3, as the relay delivered it
    assert mine.kind == Kind.AUX_REQUEST and mine.sender == "site-1"
    # the ids of the requests are random, so nothing about site-2's can be inferred from site-3's own
    assert re.fullmatch(r"[0-9a-f]{32}", mine.msg_id)
    guesses = [str(i) for i in range(1, 65)] + [mine.msg_id]  # the old counter ids, and the one it knows
    for ref_id in guesses:
        rogue.frame(target="site-1", **forged_reply(ref_id, claim="site-2"))
    rogue.heartbeat()
    release.set()  # now site-2 answers for real
    asker.join(20)
    assert not asker.is_alive()
    assert from_shareable(out["site-2"]).data == {"from": "site-2"}, "a forged reply was taken as site-2's"
    assert out["site-2"].get_peer_prop(ReservedKey.IDENTITY_NAME, None) == "site-2"
    # site-3's own (forged-looking) answer to its own request counts as site-3's, whatever it claims
    assert out["site-3"].get_return_code() == ReturnCode.OK
    assert out["site-3"].get_peer_prop(ReservedKey.IDENTITY_NAME, None) == "site-3"


def test_a_reply_from_the_wrong_site_does_not_settle_a_pending_request(world):
    """Even with the right id (leaked somehow), a reply counts only when it comes from the request's target."""
    site1, rogue, release = world
    aux = site1.aux
    captured: list = []
    original = site1.send_frame

    def spy(target, frame, timeout=None):
        captured.append((target, frame.msg_id))
        original(target, frame, timeout=timeout)

    site1.send_frame = spy  # type: ignore[method-assign]
    out: dict = {}
    asker = threading.Thread(
        target=lambda: out.update(site1.send_aux_request("site-2", "echo", Shareable(), 10, site1.new_context()))
    )
    asker.start()
    assert _wait(lambda: captured)
    target, msg_id = captured[0]
    assert target == "site-2"
    rogue.frame(target="site-1", **forged_reply(msg_id, claim="site-2"))
    rogue.heartbeat()
    assert _wait(lambda: aux._stray >= 1), "the forged reply never reached site-1"
    assert ("site-2", msg_id) in aux._pending, "a reply from site-3 settled site-2's request"
    release.set()
    asker.join(15)
    assert from_shareable(out["site-2"]).data == {"from": "site-2"}


def test_message_ids_are_unique_and_random():
    ids = {new_message_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in list(ids)[:100])


def _wait(cond, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_the_server_handlers_only_hear_sites_of_the_run(tmp_path):
    """A connection that is not a site of the run (e.g. one left out when the run started) gets UNAUTHENTICATED."""
    from flarelite.communication.memory import InMemoryCommunicationProtocol, InMemoryHub
    from flarelite.runtime.server import ServerRuntime

    heard: list = []
    server = ServerRuntime(
        job_id="j",
        protocol=InMemoryCommunicationProtocol("server", hub=InMemoryHub()),
        run_dir=str(tmp_path),
        workspace_root=str(tmp_path),
        app_config={},
        clients=["site-1"],
    )
    server.register_aux_message_handler("t", lambda topic, request, fl_ctx: heard.append(topic) or Shareable())
    body = Shareable()
    body.set_peer_props({ReservedKey.IDENTITY_NAME: "site-9", ReservedKey.RUN_NUM: "j"})
    request = make_frame(Kind.AUX_REQUEST, body, topic="t", job_id="j", msg_id=new_message_id())
    stranger = request.addressed("site-9", "server")
    reply = server.aux._process(stranger)
    assert reply.get_return_code() == ReturnCode.UNAUTHENTICATED
    assert "'site-9' is not a site of this run" in reply.get_header("__error__", "")
    assert heard == []
    member = server.aux._process(request.addressed("site-1", "server"))
    assert member.get_return_code() == ReturnCode.OK and heard == ["t"]


def test_a_flood_of_requests_is_bounded_per_peer_and_the_others_are_still_served(world, caplog):
    """site-3 floods site-2, whose handlers are busy: what waits there from site-3 stays at MAX_WAITING_PER_PEER,
    the rest is dropped (one log line), and site-1's request is still answered once a handler is free."""
    import logging

    from flarelite.runtime import aux as aux_module

    site1, rogue, release = world
    site2 = next(rt for rt in _RUNTIMES if rt.name == "site-2")
    body = Shareable()
    body.set_peer_props({ReservedKey.IDENTITY_NAME: "site-3", ReservedKey.RUN_NUM: "j"})
    meta = make_frame(Kind.AUX_REQUEST, body).meta
    caplog.set_level(logging.WARNING)
    flood = aux_module.MAX_WAITING_PER_PEER + 2000
    for i in range(flood):
        rogue.frame(target="site-2", kind=Kind.AUX_POST, msg_id=f"f{i}", topic="echo", job_id="j", meta=meta)
    rogue.heartbeat()
    assert _wait(lambda: "dropped" in caplog.text and "from site-3" in caplog.text, timeout=30), caplog.text[-2000:]
    waiting = site2.aux._waiting.get("site-3", [0, 0])
    assert waiting[0] <= aux_module.MAX_WAITING_PER_PEER
    out: dict = {}
    asker = threading.Thread(
        target=lambda: out.update(site1.send_aux_request("site-2", "echo", Shareable(), 30, site1.new_context()))
    )
    asker.start()
    assert _wait(lambda: "site-1" in site2.aux._waiting)  # queued behind the flood, not dropped
    release.set()
    asker.join(40)
    assert from_shareable(out["site-2"]).data == {"from": "site-2"}
    assert caplog.text.count("aux request(s) from site-3") <= 3  # one line per peer every 10 s, not one per drop


def test_one_request_larger_than_the_waiting_budget_is_still_handled(world, monkeypatch):
    """The byte budget bounds what piles up from a peer; a single large request (bounded by max_message_size)
    is work, not a flood: it used to be dropped silently, and its sender waited out its timeout."""
    import numpy as np

    from flarelite.runtime import aux as aux_module

    monkeypatch.setattr(aux_module, "MAX_WAITING_BYTES_PER_PEER", 1 << 20)
    site1, _, release = world
    release.set()
    request = DXO(data_kind=DataKind.WEIGHTS, data={"w": np.ones(3 << 18, np.float32)}).to_shareable()  # 3 MiB
    replies = site1.send_aux_request("site-2", "echo", request, 20, site1.new_context())
    assert from_shareable(replies["site-2"]).data == {"from": "site-2"}
