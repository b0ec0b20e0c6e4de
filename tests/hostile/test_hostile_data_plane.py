"""Attacks on the data plane: a site (or a process posing as one) that lies about blobs on its data channel, or a
peer that lies with whole frames on a direct connection's channel.

The server is a real GrpcCommunicationProtocol on a Unix socket; the attacker speaks gRPC with Rogue and the
data channel's records with its own socket. Every lie ends with a clear error for that frame (or that
connection), and the server keeps serving everyone else.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

import numpy as np
import pytest
from rogue import Rogue
from support import wait_for
from wire_fixtures.inbox import Inbox

from flarelite.communication.dataplane import DataChannel, dial
from flarelite.communication.dataplane import channel as channel_module
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.protocol import Frame
from flarelite.errors import ConnectError


@pytest.fixture
def server(short_dir):
    inbox = Inbox()
    ep = GrpcCommunicationProtocol("server", listen=f"unix://{short_dir}/s.sock", heartbeat_timeout=2.5)
    ep.start(inbox.on_frame, inbox.on_peer)
    yield ep, inbox
    ep.stop()


def rogue_with_channel(ep, name="site-1"):
    """A Rogue connected as ``name`` that asked for a data channel and opened it; (rogue, its channel)."""
    rogue = Rogue(ep.bound)
    rogue.send(hello=pb.Hello(name=name, version=1, data_plane=True))
    welcome = rogue.first().welcome
    assert welcome.data_address and len(welcome.data_token) == 32
    sock = dial(welcome.data_address, name, welcome.data_token, 2.0)
    channel = DataChannel(sock, local=name, peer="server", admit=lambda *a: "")
    channel.start()
    deadline = time.monotonic() + 5
    while name not in ep.data_peers and time.monotonic() < deadline:
        time.sleep(0.01)
    return rogue, channel, welcome


def still_serving(ep, inbox):
    """A well-behaved site still gets a large frame through, on its own channel."""
    site = GrpcCommunicationProtocol("site-9", server=ep.bound, connect_timeout=10)
    site.start(Inbox().on_frame)
    try:
        site.send("server", Frame(kind="honest", buffers=[np.ones(1 << 20, np.uint8)]))
        while True:
            got = inbox.get(timeout=10)
            if got.kind == "honest":
                assert got.sender == "site-9" and memoryview(got.buffers[0]).nbytes == 1 << 20
                return
    finally:
        site.stop()


def test_a_header_naming_a_blob_without_a_channel_gets_an_error(server):
    ep, inbox = server
    with Rogue(ep.bound) as rogue:
        assert rogue.hello("site-1").WhichOneof("body") == "welcome"
        rogue.frame(target="server", kind="lie", blob=5, buffer_sizes=[1 << 20], meta=b"m" * 10)
        got = inbox.get(timeout=5)
        assert got.kind == "lie" and "never opened" in got.error and got.buffers == []
        still_serving(ep, inbox)


def test_a_header_naming_a_blob_never_sent_gets_an_error_within_the_bound(server):
    ep, inbox = server
    rogue, channel, _ = rogue_with_channel(ep)
    try:
        began = time.monotonic()
        rogue.frame(target="server", kind="lie", blob=99, buffer_sizes=[1 << 20], meta=b"m" * 10)
        got = inbox.get(timeout=10)
        assert got.kind == "lie" and "did not arrive" in got.error
        assert time.monotonic() - began < 5
        rogue.frame(target="server", kind="after", meta=b"ok")  # the same connection goes on
        assert inbox.get(timeout=5).meta == b"ok"
    finally:
        channel.close("test over")
        rogue.close()


def test_a_blob_that_does_not_match_its_header_is_refused_and_the_claim_of_another_sender_is_ignored(server):
    ep, inbox = server
    rogue, channel, _ = rogue_with_channel(ep)
    try:
        blob = channel.send_blob([memoryview(b"x" * 300_000)], None)
        rogue.frame(target="server", kind="lie", blob=blob, buffer_sizes=[600_000], meta=b"m" * 10)
        got = inbox.get(timeout=5)
        assert got.kind == "lie" and "not the sizes" in got.error
        blob = channel.send_blob([memoryview(b"y" * 300_000)], None)
        rogue.frame(target="server", kind="claims", sender="site-2", blob=blob, buffer_sizes=[300_000], meta=b"m")
        got = inbox.get(timeout=5)
        assert got.sender == "site-1" and not got.error and bytes(got.buffers[0][:3]) == b"yyy"
        blob = channel.send_blob([memoryview(b"z" * 300_000)], None)  # the same blob claimed twice: once
        for _ in range(2):
            rogue.frame(target="server", kind="twice", blob=blob, buffer_sizes=[300_000], meta=b"m")
        first, second = inbox.get(timeout=5), inbox.get(timeout=5)
        assert not first.error and "claimed twice" in second.error
    finally:
        channel.close("test over")
        rogue.close()


def test_a_header_for_another_site_naming_a_blob_sent_for_the_server_ends_that_connection_only(server):
    ep, inbox = server
    rogue, channel, _ = rogue_with_channel(ep)
    try:
        blob = channel.send_blob([memoryview(b"x" * 300_000)], None)  # announced for the server itself
        held = ep._conns["site-1"].data_channel
        wait_for(lambda: held.holds_local(blob))
        rogue.frame(target="site-9", kind="lie", blob=blob, buffer_sizes=[300_000], meta=b"m")
        assert rogue.wait_ended(5)
        wait_for(lambda: ep.data_peers == [])  # its channel went with its connection
        still_serving(ep, inbox)
    finally:
        channel.close("test over")
        rogue.close()


def test_a_token_opens_only_its_own_sites_channel(server):
    ep, inbox = server
    with Rogue(ep.bound) as rogue:
        rogue.send(hello=pb.Hello(name="site-1", version=1, data_plane=True))
        welcome = rogue.first().welcome
        with pytest.raises(ConnectError, match="no data channel is offered"):
            dial(welcome.data_address, "site-2", welcome.data_token, 2.0)  # another site's name
        with pytest.raises(ConnectError, match="no data channel is offered"):
            dial(welcome.data_address, "site-1", bytes(32), 2.0)  # its name, a guessed token
        sock = dial(welcome.data_address, "site-1", welcome.data_token, 2.0)  # the real one: once
        sock.close()
        with pytest.raises(ConnectError, match="no data channel is offered"):
            dial(welcome.data_address, "site-1", welcome.data_token, 2.0)


def test_an_offer_expires(server, monkeypatch):
    from flarelite.communication.grpc import data_routes

    monkeypatch.setattr(data_routes, "DATA_WAIT", 0.2)
    ep, _ = server
    with Rogue(ep.bound) as rogue:
        rogue.send(hello=pb.Hello(name="site-1", version=1, data_plane=True))
        welcome = rogue.first().welcome
        time.sleep(0.5)
        with pytest.raises(ConnectError, match="expired"):
            dial(welcome.data_address, "site-1", welcome.data_token, 2.0)


def test_the_data_socket_is_private(server):
    import os
    import stat

    ep, _ = server
    path = ep._data_listener.path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"\xff" * 4096)  # garbage instead of a hello: closed, nothing else happens
    s.settimeout(5)
    try:
        assert s.recv(16) == b""  # closed (or reset: it had unread garbage)
    except ConnectionResetError:
        pass
    s.close()


# whole frames on a direct connection: a rogue that dials a site's p2p listener as a peer -----------------
@pytest.fixture
def p2p_site(short_dir):
    """site-1 (direct_p2p) of a server on a Unix socket, which also has a rogue joined as site-2 (so site-1 takes
    a direct connection from site-2): (site-1's endpoint, its inbox)."""
    server = GrpcCommunicationProtocol("server", listen=f"unix://{short_dir}/p.sock", heartbeat_timeout=2.5)
    server.start(Inbox().on_frame)
    inbox = Inbox()
    site = GrpcCommunicationProtocol("site-1", server=server.bound, direct_p2p=True, heartbeat_timeout=2.5)
    site.start(inbox.on_frame, inbox.on_peer)
    member = Rogue(server.bound)
    assert member.hello("site-2").WhichOneof("body") == "welcome"
    inbox.wait_peer("site-2", True)
    yield site, inbox
    member.close()
    site.stop()
    server.stop()


def rogue_peer(site, name="site-2"):
    """A Rogue that connected to ``site``'s p2p listener as ``name`` and opened the data channel it was offered:
    (rogue, its channel, what the site sends it on the channel)."""
    rogue = Rogue(site.listen)
    rogue.send(hello=pb.Hello(name=name, version=1, data_plane=True))
    welcome = rogue.first().welcome
    assert welcome.data_address, "a direct connection offers a data channel"
    sock = dial(welcome.data_address, name, welcome.data_token, 2.0)
    got: queue.Queue = queue.Queue()
    gate = threading.Event()
    gate.set()
    channel = DataChannel(sock, local=name, peer="site-1", admit=lambda *a: "", deliver=got.put, gate=gate)
    channel.start()
    wait_for(lambda: name in site.data_peers)
    return rogue, channel, got


def kinds_until(inbox, kind, timeout=10):
    """The kinds of the frames delivered up to and including the first of ``kind``."""
    seen: list[str] = []
    while not seen or seen[-1] != kind:
        seen.append(inbox.get(timeout=timeout).kind)
    return seen


def test_frames_on_a_channel_whose_peer_never_switched_wait_and_then_lose_the_channel_only(p2p_site, monkeypatch):
    monkeypatch.setattr(channel_module, "GATE_TIMEOUT", 0.5)
    site, inbox = p2p_site
    rogue, channel, _ = rogue_peer(site)
    try:
        channel.send_frame(Frame(kind="early", meta=b"m"), None)  # no Switch on the stream before it
        wait_for(lambda: "site-2" not in site.data_peers)  # the channel is closed ...
        rogue.frame(target="site-1", kind="by-stream", meta=b"ok")
        assert kinds_until(inbox, "by-stream") == ["by-stream"]  # ... the connection serves on ("early" is lost)
    finally:
        channel.close("test over")
        rogue.close()


def test_a_switch_waits_for_the_frames_the_peer_began_on_the_stream_before_it(p2p_site):
    site, inbox = p2p_site
    rogue, channel, _ = rogue_peer(site)
    try:
        stream = rogue.frame(target="site-1", kind="begun", buffer_sizes=[6], meta=b"m" * 10)
        rogue.chunk(stream=stream, data=b"abc")
        rogue.send(switch=pb.Switch())
        channel.send_frame(Frame(kind="after", meta=b"m"), None)
        with pytest.raises(queue.Empty):
            inbox.get(timeout=0.3)  # neither: the one begun on the stream is unfinished, the other waits for it
        rogue.chunk(stream=stream, data=b"def")  # it ends: then the channel's frame
        assert kinds_until(inbox, "after") == ["begun", "after"]
    finally:
        channel.close("test over")
        rogue.close()


def test_a_frame_on_the_channel_comes_from_the_peer_that_opened_it_whatever_it_claims(p2p_site):
    site, inbox = p2p_site
    rogue, channel, _ = rogue_peer(site)
    try:
        rogue.send(switch=pb.Switch())
        channel.send_frame(Frame(kind="claims", sender="site-7", meta=b"m", buffers=[b"y" * 300_000]), None)
        got = inbox.get(timeout=5)
        assert got.kind == "claims" and got.sender == "site-2" and bytes(got.buffers[0][:3]) == b"yyy"
    finally:
        channel.close("test over")
        rogue.close()


def test_a_frame_for_another_site_on_the_channel_ends_that_channel_only(p2p_site):
    site, inbox = p2p_site
    rogue, channel, _ = rogue_peer(site)
    try:
        rogue.send(switch=pb.Switch())
        channel.peer = "site-9"  # its frames now name site-9 as their target
        channel.send_frame(Frame(kind="lie", meta=b"m", buffers=[b"x" * 3000]), None)
        wait_for(lambda: "site-2" not in site.data_peers)  # closed; nothing was delivered
        rogue.frame(target="site-1", kind="by-stream", meta=b"ok")
        assert kinds_until(inbox, "by-stream") == ["by-stream"]
    finally:
        channel.close("test over")
        rogue.close()


def test_the_site_switches_its_own_frames_to_the_channel_and_a_server_ignores_a_switch(p2p_site, server):
    site, _ = p2p_site
    rogue, channel, got = rogue_peer(site)
    try:
        rogue.receive("switch", timeout=5)  # said on the stream before any frame takes the channel
        site.send("site-2", Frame(kind="aux", meta=b"t", buffers=[np.arange(10, dtype=np.uint8)]))
        frame = got.get(timeout=5)
        assert (frame.kind, frame.sender, bytes(frame.buffers[0])) == ("aux", "site-1", bytes(range(10)))
        assert not [e for e in rogue.drain() if e is not None and e.WhichOneof("body") == "header"]
    finally:
        channel.close("test over")
        rogue.close()
    ep, inbox = server  # a server's connections carry blobs only: a Switch there changes nothing
    with Rogue(ep.bound) as other:
        assert other.hello("site-1").WhichOneof("body") == "welcome"
        other.send(switch=pb.Switch())
        other.frame(target="server", kind="after", meta=b"ok")
        assert inbox.get(timeout=5).kind == "after"
