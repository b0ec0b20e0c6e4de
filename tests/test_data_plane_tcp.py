"""The data plane across machines: a TCP channel beside gRPC, TLS with the project's certificates.

On by default under mtls (the listener's certificate checked by the site, the site's certificate naming the site
in its hello, and the token from its authenticated gRPC connection); asked for with ``data_plane="tcp"`` in tls
mode (TLS, the server checked) and clear mode (plain TCP, as gRPC is there). Endpoints on 127.0.0.1; attackers
dial the data port with the wrong certificate, another CA's, none, a stolen token, or garbage.
"""

from __future__ import annotations

import socket
import ssl
import time

import numpy as np
import pytest
from support import wait_for
from wire_fixtures.inbox import Inbox

from flarelite.communication.dataplane import dial, tls_stream
from flarelite.communication.dataplane.channel import CHUNK
from flarelite.communication.dataplane.handshake import TCP_PREFIX
from flarelite.communication.dataplane.tls_stream import TLSStream, client_context
from flarelite.communication.grpc import GrpcCommunicationProtocol, data_routes
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.communication.protocol import Frame
from flarelite.errors import ConnectError, TransportTimeout

pytestmark = pytest.mark.timeout(120)


class Net:
    """A server on 127.0.0.1 and sites dialing it, in one TLS mode; stopped at the end."""

    def __init__(self, pki, mode: str) -> None:
        self.pki, self.mode = pki, mode
        self.endpoints: list[GrpcCommunicationProtocol] = []

    def cfg(self, name: str, project: str = "main") -> TLSConfig:
        return TLSConfig("clear") if self.mode == "clear" else TLSConfig.from_dir(self.mode, self.pki / project, name)

    def server(self, **options) -> tuple[GrpcCommunicationProtocol, Inbox]:
        return self._start(GrpcCommunicationProtocol("server", listen="127.0.0.1:0", tls=self.cfg("server"), **options))

    def site(self, name: str, **options) -> tuple[GrpcCommunicationProtocol, Inbox]:
        server = self.endpoints[0].bound
        ep = GrpcCommunicationProtocol(name, server=server, tls=self.cfg(name), connect_timeout=10, **options)
        return self._start(ep)

    def _start(self, ep: GrpcCommunicationProtocol) -> tuple[GrpcCommunicationProtocol, Inbox]:
        inbox = Inbox()
        ep.start(inbox.on_frame, inbox.on_peer)
        self.endpoints.append(ep)
        return ep, inbox

    def stop(self) -> None:
        for ep in reversed(self.endpoints):
            ep.stop()


@pytest.fixture
def nets(pki):
    made: list[Net] = []

    def make(mode: str) -> Net:
        made.append(Net(pki, mode))
        return made[-1]

    yield make
    for net in made:
        net.stop()


def exchange(site, s_in, server, c_in) -> None:
    """Large and small frames both ways, in order, intact."""
    big = np.arange(3 * CHUNK + 17, dtype=np.uint8)
    for i in range(12):
        buffers = [big, np.ones(5)] if i % 4 == 1 else [np.full(3, i, np.int32)]
        site.send("server", Frame(kind="k", msg_id=str(i), meta=b"m" * (i + 1), buffers=buffers))
    for i in range(12):
        got = s_in.get()
        assert (got.msg_id, got.sender, got.meta) == (str(i), "site-1", b"m" * (i + 1))
        if i % 4 == 1:
            assert np.array_equal(np.frombuffer(got.buffers[0], np.uint8), big)
    server.send("site-1", Frame(kind="task", meta=b"x" * (CHUNK + 5), buffers=[big]))
    got = c_in.get()
    assert got.meta == b"x" * (CHUNK + 5) and np.array_equal(np.frombuffer(got.buffers[0], np.uint8), big)


@pytest.mark.parametrize(
    ("mode", "data_plane", "channel"),
    [("mtls", "auto", "tls"), ("mtls", "tcp", "tls"), ("tls", "tcp", "tls"), ("clear", "tcp", "plain"),
     ("tls", "auto", None), ("clear", "auto", None), ("mtls", "grpc", None)],
)  # fmt: skip
def test_which_modes_open_a_tcp_channel_and_frames_take_it(nets, mode, data_plane, channel):
    net = nets(mode)
    server, s_in = net.server(data_plane=data_plane)
    site, c_in = net.site("site-1", data_plane=data_plane)
    if channel is None:
        assert server._data_listener is None
        exchange(site, s_in, server, c_in)
        assert site.data_peers == [] and server.data_peers == []
        return
    assert server._data_listener.offer.startswith(TCP_PREFIX)
    wait_for(lambda: server.data_peers == ["site-1"])
    assert site.data_peers == ["server"]  # open before start() returned
    link = site._data["server"].sock
    assert isinstance(link, TLSStream) == (channel == "tls")
    if channel == "tls":
        assert server._data["site-1"].sock.peer_common_name() == ("site-1" if mode == "mtls" else None)
    exchange(site, s_in, server, c_in)


def test_a_broken_tcp_channel_falls_back_to_grpc(nets):
    net = nets("mtls")
    server, s_in = net.server()
    site, c_in = net.site("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    server._data["site-1"].close("broken by the test")
    wait_for(lambda: site.data_peers == [])
    big = np.arange(2 * CHUNK, dtype=np.uint8)
    site.send("server", Frame(kind="after", meta=b"1", buffers=[big]))
    server.send("site-1", Frame(kind="after", meta=b"2", buffers=[big]))
    assert s_in.get().meta == b"1" and c_in.get().meta == b"2"


def _port(server) -> int:
    return int(server._data_listener.offer[len(TCP_PREFIX) :])


def test_under_mtls_a_channel_needs_the_sites_own_certificate_and_its_token(nets, pki, monkeypatch):
    monkeypatch.setattr(data_routes.secrets, "token_bytes", lambda n: b"k" * n)  # the attacker knows the token
    net = nets("mtls")
    server, s_in = net.server()
    port = f"{TCP_PREFIX}{_port(server)}"
    as_site2 = client_context(TLSConfig.from_dir("mtls", pki / "main", "site-2"))
    with pytest.raises(ConnectError, match="its certificate is 'site-2''s, not 'site-1''s"):
        dial(port, "site-1", b"k" * 32, 2.0, host="127.0.0.1", context=as_site2, server_hostname="server")
    site, _ = net.site("site-1")  # the offer made for site-1 is still good: it was never used
    wait_for(lambda: server.data_peers == ["site-1"])
    as_site1 = client_context(TLSConfig.from_dir("mtls", pki / "main", "site-1"))
    with pytest.raises(ConnectError, match="no data channel is offered"):  # a token opens one channel, once
        dial(port, "site-1", b"k" * 32, 2.0, host="127.0.0.1", context=as_site1, server_hostname="server")
    other_ca = client_context(TLSConfig.from_dir("mtls", pki / "other", "site-1"))
    with pytest.raises(ConnectError, match="no data channel to"):  # another project's CA: no TLS at all
        dial(port, "site-1", b"k" * 32, 2.0, host="127.0.0.1", context=other_ca, server_hostname="server")
    no_cert = client_context(TLSConfig.from_dir("tls", pki / "main", "site-1"))  # presents no certificate
    with pytest.raises(ConnectError, match="no data channel to"):
        dial(port, "site-1", b"k" * 32, 2.0, host="127.0.0.1", context=no_cert, server_hostname="server")
    with pytest.raises(ConnectError):  # and no TLS at all
        dial(port, "site-1", b"k" * 32, 2.0, host="127.0.0.1")
    site.send("server", Frame(kind="still", meta=b"ok", buffers=[np.zeros(2 * CHUNK, np.uint8)]))
    assert s_in.get().meta == b"ok" and server.data_peers == ["site-1"]


def test_a_site_checks_the_listeners_certificate(nets, pki):
    net = nets("mtls")
    server, _ = net.server()
    ctx = client_context(TLSConfig.from_dir("mtls", pki / "main", "site-1"))
    port = f"{TCP_PREFIX}{_port(server)}"
    with pytest.raises(ConnectError, match="no data channel to"):  # the server's certificate names no 'site-2'
        dial(port, "site-1", b"\0" * 32, 2.0, host="127.0.0.1", context=ctx, server_hostname="site-2")
    rogue = socket.create_server(("127.0.0.1", 0))  # a listener with another project's certificate
    rogue_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    rogue_ctx.load_cert_chain(pki / "other" / "server.crt", pki / "other" / "server.key")
    try:
        with pytest.raises(ConnectError, match="no data channel to"):
            dial(f"{TCP_PREFIX}{rogue.getsockname()[1]}", "site-1", b"\0" * 32, 1.0, host="127.0.0.1",
                 context=ctx, server_hostname="server")  # fmt: skip
    finally:
        rogue.close()


def test_stalled_and_garbage_tcp_connections_delay_no_site(nets):
    net = nets("mtls")
    server, _ = net.server()
    stalled = [socket.create_connection(("127.0.0.1", _port(server))) for _ in range(3)]
    junk = socket.create_connection(("127.0.0.1", _port(server)))
    junk.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
    try:
        began = time.monotonic()
        site, _ = net.site("site-1")
        assert site.data_peers == ["server"]
        assert time.monotonic() - began < 3.0
    finally:
        for s in [*stalled, junk]:
            s.close()


def test_bad_offers_are_clear_errors():
    with pytest.raises(ConnectError, match="names no port"):
        dial(f"{TCP_PREFIX}x", "site-1", b"\0" * 32, 1.0, host="127.0.0.1")
    with pytest.raises(ConnectError, match="names no port"):
        dial(f"{TCP_PREFIX}70000", "site-1", b"\0" * 32, 1.0, host="127.0.0.1")
    with pytest.raises(ConnectError, match="names no port"):
        dial(f"{TCP_PREFIX}8000", "site-1", b"\0" * 32, 1.0, host="")


def test_direct_peer_connections_over_tcp_get_a_tls_channel_too(nets):
    net = nets("mtls")
    net.server()
    one, in1 = net.site("site-1", direct_p2p=True)
    two, in2 = net.site("site-2", direct_p2p=True)
    wait_for(lambda: "site-1" in two.data_peers and "site-2" in one.data_peers)
    assert two._data["site-1"].sock.peer_common_name() == "site-1"  # each side saw the other's certificate
    assert one._data["site-2"].sock.peer_common_name() == "site-2"
    big = np.arange(3 * CHUNK + 3, dtype=np.uint8)
    for sender, target, inbox in ((two, "site-1", in1), (one, "site-2", in2)):
        sender.send(target, Frame(kind="aux", msg_id="1", meta=b"m", buffers=[big]))
        got = inbox.get()
        assert got.sender == sender.address and np.array_equal(np.frombuffer(got.buffers[0], np.uint8), big)


def test_a_flood_of_bad_connections_to_the_data_port_writes_one_line_per_kind(nets, caplog):
    net = nets("mtls")
    server, s_in = net.server()
    caplog.set_level("INFO", logger="flarelite.dataplane")
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", _port(server))) as junk:
            junk.sendall(b"\x16\x03\x01 not a TLS hello at all" * 4)
    wait_for(lambda: any("refused a data-plane connection" in r.getMessage() for r in caplog.records))
    time.sleep(0.5)
    refused = [r for r in caplog.records if "refused a data-plane connection" in r.getMessage()]
    assert len(refused) == 1 and "no TLS" in refused[0].getMessage()
    site, _ = net.site("site-1")  # and the listener still opens channels
    wait_for(lambda: server.data_peers == ["site-1"])


def test_over_tls_a_frame_with_no_time_left_goes_if_the_socket_takes_it_now(nets, monkeypatch):
    net = nets("mtls")
    net.server()
    one, _ = net.site("site-1", direct_p2p=True)
    two, in2 = net.site("site-2", direct_p2p=True)
    wait_for(lambda: "site-2" in one.data_peers)
    for i in range(20):  # timeout=0 (an aux request to several targets): on an idle channel it goes at once
        one.send("site-2", Frame(kind="now", msg_id=str(i), meta=b"m"), timeout=0)
    assert [in2.get().msg_id for _ in range(20)] == [str(i) for i in range(20)]
    channel = one._data["site-2"]
    monkeypatch.setattr(tls_stream, "_room_for", lambda sock, nbytes: False)  # as a peer that stopped reading
    with pytest.raises(TransportTimeout, match="had no room now"):
        channel.send_frame(Frame(kind="late", target="site-2", meta=b"m"), time.monotonic() - 1)
    monkeypatch.undo()
    assert not channel.closed  # nothing was written: the TLS stream is intact
    one.send("site-2", Frame(kind="after", meta=b"m"), timeout=0)
    assert in2.get().kind == "after" and one._data["site-2"] is channel
