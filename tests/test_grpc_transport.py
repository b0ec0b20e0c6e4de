"""The gRPC transport on its own: real sockets on 127.0.0.1 and Unix sockets in a temp dir."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from support import wait_for
from wire_fixtures.inbox import Inbox

from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.protocol import Frame
from flarelite.errors import ConnectError, ProtocolError


@pytest.fixture(params=["tcp", "unix"])
def listen(request, tmp_path):
    return "127.0.0.1:0" if request.param == "tcp" else f"unix://{tmp_path}/server.sock"


@pytest.fixture(params=["relayed", "direct"])
def mode(request):
    return request.param


@pytest.fixture
def net(listen, mode):
    """A server and clients (relayed through the server, or direct_p2p), connected; stopped at the end."""
    make = _network(listen, mode)
    yield make
    make.stop_all()


def _network(listen, mode):
    endpoints = []

    def make(name, **kwargs):
        inbox = Inbox()
        if name == "server":
            ep = GrpcCommunicationProtocol("server", listen=listen, heartbeat_interval=0.5, **kwargs)
        else:
            ep = GrpcCommunicationProtocol(
                name, server=endpoints[0][0].bound, connect_timeout=10, direct_p2p=mode == "direct", **kwargs
            )
        ep.start(inbox.on_frame, inbox.on_peer)
        endpoints.append((ep, inbox))
        return ep, inbox

    def stop_all():
        for ep, _ in reversed(endpoints):
            ep.stop()
        endpoints.clear()

    make.stop_all = stop_all
    return make


def wait_peer(inbox: Inbox, name: str, connected: bool, timeout: float = 10) -> None:
    inbox.wait_peer(name, connected, timeout)


def test_small_frames_both_ways_and_relayed(net):
    server, s_in = net("server")
    c1, in1 = net("site-1")
    c2, in2 = net("site-2")
    wait_peer(in1, "site-2", True)
    c1.send("server", Frame(kind="hello", topic="t", meta=b"abc", msg_id="1"))
    got = s_in.get()
    assert (got.kind, got.sender, got.topic, got.meta, got.msg_id) == ("hello", "site-1", "t", b"abc", "1")
    server.send("site-2", Frame(kind="x", meta=b"from server"))
    assert in2.get().meta == b"from server"
    c1.send("site-2", Frame(kind="aux_req", meta=b"m", buffers=[b"12345"]))
    got = in2.get()
    assert got.sender == "site-1" and got.meta == b"m" and bytes(got.buffers[0]) == b"12345"
    c2.send("site-1", Frame(kind="aux_reply", meta=b"r"))
    assert in1.get().sender == "site-2"


@pytest.mark.parametrize("mode", ["direct"])  # overrides the fixture's modes
def test_direct_mode_connects_peers_directly(net):
    net("server")
    c1, in1 = net("site-1")
    c2, in2 = net("site-2")
    wait_peer(in1, "site-2", True)
    deadline = time.monotonic() + 10
    # site-2 dials (the later name), site-1 listens; the dialer registers its connection last, once the Welcome
    # came and its data channel is open: wait for both sides
    while not ("site-2" in c1._conns and "site-1" in c2._conns) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "site-2" in c1._conns and "site-1" in c2._conns
    c2.send("site-1", Frame(kind="direct", meta=b"d"))
    got = in1.get()
    assert (got.kind, got.sender) == ("direct", "site-2")


def test_large_numpy_payload_relayed_bit_exact(net):
    net("server")
    c1, in1 = net("site-1", chunk_size=1 << 20)
    c2, in2 = net("site-2")
    wait_peer(in1, "site-2", True)
    arr = np.random.default_rng(0).standard_normal(5_000_000).astype(np.float32)  # 20 MB
    c1.send("site-2", Frame(kind="big", meta=b"x" * (3 << 20), buffers=[memoryview(arr), b"tail"]))
    got = in2.get(timeout=30)
    assert got.meta == b"x" * (3 << 20)
    assert np.array_equal(np.frombuffer(got.buffers[0], dtype=np.float32), arr)
    assert bytes(got.buffers[1]) == b"tail"


def test_small_frame_is_not_stuck_behind_a_large_one(net):
    net("server")
    c1, in1 = net("site-1")
    c2, in2 = net("site-2")
    wait_peer(in1, "site-2", True)
    big = np.zeros(200 << 20, dtype=np.uint8)  # 200 MiB
    sender = threading.Thread(target=c1.send, args=("site-2", Frame(kind="big", buffers=[big])))
    sender.start()

    # once the big one is flowing (part of it received: on the stream, or on a direct peer's data channel, which
    # moves it so fast that a fixed sleep could see all of it arrive first), the small one goes
    def receiving():
        streams = any(conn.pending for conn in list(c2._conns.values()))
        return streams or any(channel._pending for channel in list(c2._data.values()))

    wait_for(receiving, 30)
    c1.send("site-2", Frame(kind="small", meta=b"s"))
    first = in2.get(timeout=30)
    sender.join(60)
    assert first.kind == "small"
    assert in2.get(timeout=30).kind == "big"


def test_oversized_frame_is_refused_with_a_clear_error(net):
    net("server", max_message_size=1 << 20)
    c1, in1 = net("site-1")
    c2, in2 = net("site-2")
    wait_peer(in1, "site-2", True)
    with pytest.raises(ProtocolError, match="over the limit"):
        c1.send("site-2", Frame(kind="big", buffers=[bytes(2 << 20)]))


def test_receiver_limit_delivers_header_with_error(net):
    net("server")
    c1, in1 = net("site-1")
    c2, in2 = net("site-2", max_message_size=1 << 20)
    wait_peer(in1, "site-2", True)
    c1.send("site-2", Frame(kind="aux_req", msg_id="9", buffers=[bytes(2 << 20)]))
    got = in2.get(timeout=30)
    assert got.msg_id == "9" and "exceeds the limit" in got.error and not got.buffers
    c1.send("site-2", Frame(kind="after", meta=b"ok"))
    assert in2.get().kind == "after"  # the connection keeps serving


def test_unknown_target_fails_fast_and_disconnect_is_seen(net):
    net("server")
    c1, in1 = net("site-1")
    c2, _ = net("site-2")
    wait_peer(in1, "site-2", True)
    with pytest.raises(ConnectError):
        c1.send("site-9", Frame(kind="x"))
    c2.stop()
    wait_peer(in1, "site-2", False)
    with pytest.raises(ConnectError):
        c1.send("site-2", Frame(kind="x"))


def test_client_reconnects_after_server_restart(tmp_path):
    listen = f"unix://{tmp_path}/server.sock"  # a fixed address, so the new server is where the old one was
    s_in, c_in = Inbox(), Inbox()
    server = GrpcCommunicationProtocol("server", listen=listen)
    server.start(s_in.on_frame, s_in.on_peer)
    client = GrpcCommunicationProtocol("site-1", server=listen, connect_timeout=10)
    client.start(c_in.on_frame, c_in.on_peer)
    try:
        server.stop()
        wait_peer(c_in, "server", False)
        server = GrpcCommunicationProtocol("server", listen=listen)
        server.start(s_in.on_frame, s_in.on_peer)
        wait_peer(c_in, "server", True)
        client.send("server", Frame(kind="back"))
        assert s_in.get().kind == "back"
    finally:
        client.stop()
        server.stop()


def test_connect_to_nothing_fails_within_the_timeout(tmp_path):
    client = GrpcCommunicationProtocol("site-1", server=f"unix://{tmp_path}/none.sock", connect_timeout=1)
    start = time.monotonic()
    with pytest.raises(ConnectError, match="could not reach the server"):
        client.start(lambda f: None)
    assert time.monotonic() - start < 10
