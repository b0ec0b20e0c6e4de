"""Attacks on the data plane: a site (or a process posing as one) that lies about blobs on its data channel.

The server is a real GrpcCommunicationProtocol on a Unix socket; the attacker speaks gRPC with Rogue and the
data channel's records with its own socket. Every lie ends with a clear error for that frame (or that
connection), and the server keeps serving everyone else.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from rogue import Rogue
from wire_fixtures.inbox import Inbox

from flarelite.communication.dataplane import DataChannel, dial
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


def test_a_blob_for_another_site_ends_that_connection_only(server):
    ep, inbox = server
    rogue, channel, _ = rogue_with_channel(ep)
    try:
        blob = channel.send_blob([memoryview(b"x" * 300_000)], None)
        rogue.frame(target="site-9", kind="lie", blob=blob, buffer_sizes=[300_000], meta=b"m")
        assert rogue.wait_ended(5)
        deadline = time.monotonic() + 5
        while "site-1" in ep.data_peers and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ep.data_peers == []  # its channel went with its connection
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
