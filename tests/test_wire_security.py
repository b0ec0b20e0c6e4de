"""TLS and mutual TLS through the gRPC transport itself: who may connect, and who the frames say they are from.

Real endpoints (GrpcCommunicationProtocol) on 127.0.0.1 (port 0) or a Unix socket in a short temp folder,
certificates made with ``flarelite.certs`` in temp folders. test_tls.py covers the TLS helper with plain gRPC
calls; this file covers what the transport does with it (hello, refusal, identity stamping, relay).
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest
from wire_fixtures.inbox import Inbox

from flarelite import certs
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.grpc import flarelite_pb2_grpc as pb_grpc
from flarelite.communication.grpc import tls as tls_helper
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.communication.protocol import Frame
from flarelite.errors import ConnectError

CONNECT_TIMEOUT = 2.0  # for the clients that must fail: start() gives up after this
SLACK = 8.0  # start() may take a little longer than connect_timeout (one last attempt, thread start, teardown)


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two projects, each with its own CA: ``main`` (server, site-1, site-2) and ``other`` (server, site-1)."""
    root = tmp_path_factory.mktemp("wire-pki")
    for project in ("main", "other"):
        certs.init_ca(root / project, project)
        certs.issue(root / project, "server", "server")
        certs.issue(root / project, "site-1")
        if project == "main":
            certs.issue(root / project, "site-2")
    return root


@pytest.fixture
def net():
    """Start endpoints: ``net.server(tls, listen)`` then ``net.client(name, tls)``; all stopped at the end."""

    class Net:
        def __init__(self) -> None:
            self.started: list[GrpcCommunicationProtocol] = []
            self.bound: str | None = None

        def server(self, tls: TLSConfig, listen: str = "127.0.0.1:0"):
            inbox = Inbox()
            ep = GrpcCommunicationProtocol("server", listen=listen, tls=tls, heartbeat_interval=0.5)
            ep.start(inbox.on_frame, inbox.on_peer)
            self.started.append(ep)
            self.bound = ep.bound
            return ep, inbox

        def client(self, name: str, tls: TLSConfig, connect_timeout: float = 10.0):
            inbox = Inbox()
            assert self.bound is not None, "start the server first"
            ep = GrpcCommunicationProtocol(name, server=self.bound, tls=tls, connect_timeout=connect_timeout)
            ep.start(inbox.on_frame, inbox.on_peer)  # raises on failure: then there is nothing to stop
            self.started.append(ep)
            return ep, inbox

        def refused_client(self, name: str, tls: TLSConfig) -> tuple[ConnectError, float]:
            """A client whose start() must fail: return the ConnectError and how long start() took."""
            ep = GrpcCommunicationProtocol(name, server=self.bound, tls=tls, connect_timeout=CONNECT_TIMEOUT)
            began = time.monotonic()
            try:
                with pytest.raises(ConnectError) as info:
                    ep.start(lambda frame: None)
            finally:
                ep.stop()  # harmless when start failed; stops it if it wrongly succeeded
            return info.value, time.monotonic() - began

    n = Net()
    yield n
    for ep in reversed(n.started):
        ep.stop()


def mtls(pki, name: str, project: str = "main") -> TLSConfig:
    return TLSConfig.from_dir("mtls", pki / project, name)


def mixed(pki, cert_of: str, project: str = "main", ca_of: str = "main") -> TLSConfig:
    """An mtls config trusting ``ca_of``'s CA and presenting ``cert_of``'s certificate from ``project``."""
    return TLSConfig(
        "mtls",
        ca_cert=pki / ca_of / "ca.crt",
        cert=pki / project / f"{cert_of}.crt",
        key=pki / project / f"{cert_of}.key",
    )


def tls_client(pki, project: str = "main") -> TLSConfig:
    return TLSConfig.from_dir("tls", pki / project, None)


def assert_frames_flow(server, s_in: Inbox, client, c_in: Inbox, name: str) -> None:
    client.send("server", Frame(kind="up", msg_id="1", meta=b"to the server", buffers=[b"\x00\x01"]))
    got = s_in.get()
    assert (got.kind, got.sender, got.meta, bytes(got.buffers[0])) == ("up", name, b"to the server", b"\x00\x01")
    server.send(name, Frame(kind="down", meta=b"to the site"))
    got = c_in.get()
    assert (got.kind, got.sender, got.meta) == ("down", "server", b"to the site")


# ----------------------------------------------------------------------------------------------- mutual TLS


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_mtls_site_with_its_own_certificate_connects_and_frames_flow(pki, net, short_dir, where):
    listen = "127.0.0.1:0" if where == "tcp" else f"unix://{short_dir}/s.sock"
    server, s_in = net.server(mtls(pki, "server"), listen)
    c1, in1 = net.client("site-1", mtls(pki, "site-1"))
    c2, in2 = net.client("site-2", mtls(pki, "site-2"))
    s_in.wait_peer("site-1", True)
    s_in.wait_peer("site-2", True)
    in1.wait_peer("site-2", True)
    assert_frames_flow(server, s_in, c1, in1, "site-1")
    assert_frames_flow(server, s_in, c2, in2, "site-2")
    c1.send("site-2", Frame(kind="relayed", meta=b"m", buffers=[bytes(range(256)) * 8000]))  # > one chunk
    got = in2.get()
    assert (got.kind, got.sender, got.meta) == ("relayed", "site-1", b"m")
    assert bytes(got.buffers[0]) == bytes(range(256)) * 8000


def test_mtls_certificate_of_another_site_is_refused(pki, net):
    server, s_in = net.server(mtls(pki, "server"))
    c1, in1 = net.client("site-1", mtls(pki, "site-1"))
    s_in.wait_peer("site-1", True)
    impostor = mixed(pki, cert_of="site-1")  # site-1's (valid) certificate, claiming to be site-2
    exc, took = net.refused_client("site-2", impostor)
    assert "certificate" in str(exc) and "site-1" in str(exc) and "site-2" in str(exc), str(exc)
    assert took < CONNECT_TIMEOUT + SLACK
    # the server never let site-2 in: no peer event anywhere, nothing to send to
    assert ("site-2", True) not in s_in.peer_events()
    assert ("site-2", True) not in in1.peer_events()
    with pytest.raises(ConnectError):
        server.send("site-2", Frame(kind="x"))
    with pytest.raises(ConnectError):
        c1.send("site-2", Frame(kind="x"))
    # and the real site-1 is still connected and served
    assert_frames_flow(server, s_in, c1, in1, "site-1")


@pytest.mark.parametrize(
    "case",
    [
        "client cert from another CA",  # trusts the right CA, but presents a certificate the server cannot verify
        "everything from another CA",  # the client cannot verify the server either
        "no client certificate",  # a tls-mode client presents none
        "clear client",  # no TLS at all
    ],
)
def test_mtls_server_turns_away_clients_it_cannot_verify(pki, net, case):
    server, s_in = net.server(mtls(pki, "server"))
    cfg = {
        "client cert from another CA": mixed(pki, cert_of="site-1", project="other", ca_of="main"),
        "everything from another CA": mtls(pki, "site-1", project="other"),
        "no client certificate": tls_client(pki),
        "clear client": TLSConfig("clear"),
    }[case]
    exc, took = net.refused_client("site-1", cfg)
    assert took < CONNECT_TIMEOUT + SLACK, f"start() took {took:.1f}s with connect_timeout={CONNECT_TIMEOUT}"
    assert "site-1" in str(exc)
    assert s_in.peer_events() == []
    with pytest.raises(ConnectError):
        server.send("site-1", Frame(kind="x"))


def test_mtls_client_refuses_a_server_from_another_ca(pki, net):
    net.server(mixed(pki, cert_of="server", project="other", ca_of="main"))  # trusts our CA, but is not ours
    exc, took = net.refused_client("site-1", mtls(pki, "site-1"))
    assert took < CONNECT_TIMEOUT + SLACK


class RawClient:
    """A hand-driven client speaking the wire protocol with the generated stubs: it can say what it likes."""

    def __init__(self, target: str, cfg: TLSConfig) -> None:
        creds = tls_helper.channel_credentials(cfg)
        self.channel = grpc.secure_channel(target, creds, options=tls_helper.channel_options(cfg))
        self.outbox: queue.Queue = queue.Queue()
        self.inbox: queue.Queue = queue.Queue()
        self.call = pb_grpc.TransportStub(self.channel).Connect(iter(self.outbox.get, None), timeout=30)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for env in self.call:
                self.inbox.put(env)
        except grpc.RpcError:
            pass
        self.inbox.put(None)

    def send(self, **body) -> None:
        self.outbox.put(pb.Envelope(**body))

    def receive(self, body: str, timeout: float = 10) -> pb.Envelope:
        """The next envelope of kind ``body`` (heartbeats and peer events are skipped unless asked for)."""
        deadline = time.monotonic() + timeout
        while True:
            env = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            assert env is not None, f"the stream ended before a {body!r} envelope came"
            if env.WhichOneof("body") == body:
                return env

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()
        self.reader.join(5)


@pytest.fixture
def raw_site_1(pki, net):
    """site-1 (its own certificate), connected by hand once the server is up; closed at the end."""
    clients = []

    def connect() -> RawClient:
        client = RawClient(net.bound, mtls(pki, "site-1"))
        clients.append(client)
        client.send(hello=pb.Hello(name="site-1", version=1))
        welcome = client.receive("welcome")
        assert welcome.welcome.name == "site-1"
        return client

    yield connect
    for client in clients:
        client.close()


def test_sender_is_the_certificate_identity_not_the_claim(pki, net, raw_site_1):
    """A connected site that writes another name into its frames is still known by its certificate's name."""
    server, s_in = net.server(mtls(pki, "server"))
    c2, in2 = net.client("site-2", mtls(pki, "site-2"))
    raw = raw_site_1()
    s_in.wait_peer("site-1", True)
    forged = dict(sender="site-2", job_id="j", rc="OK")
    raw.send(header=pb.Header(stream=1, kind="to-server", target="server", msg_id="a", meta=b"m", **forged))
    raw.send(header=pb.Header(stream=2, kind="to-site-2", target="site-2", msg_id="b", meta=b"m", **forged))
    raw.send(header=pb.Header(stream=3, kind="chunked", target="site-2", msg_id="c", buffer_sizes=[5], **forged))
    raw.send(chunk=pb.Chunk(stream=3, buffer=0, data=b"12345"))
    got = s_in.get()
    assert (got.kind, got.sender, got.meta) == ("to-server", "site-1", b"m")
    got = sorted([in2.get(), in2.get()], key=lambda f: f.msg_id)
    assert [(f.kind, f.sender) for f in got] == [("to-site-2", "site-1"), ("chunked", "site-1")]
    assert bytes(got[1].buffers[0]) == b"12345"


def test_a_site_cannot_tell_the_server_that_another_site_left(pki, net, raw_site_1):
    server, s_in = net.server(mtls(pki, "server"))
    c2, in2 = net.client("site-2", mtls(pki, "site-2"))
    s_in.wait_peer("site-2", True)
    raw = raw_site_1()
    s_in.wait_peer("site-1", True)
    raw.send(peer=pb.PeerEvent(name="site-2", connected=False))
    raw.send(peer=pb.PeerEvent(name="site-9", connected=True))
    raw.send(header=pb.Header(stream=1, kind="marker", target="server"))  # after the forged events, in order
    assert s_in.get().kind == "marker"
    assert s_in.peer_events() == []
    server.send("site-2", Frame(kind="still here"))
    assert in2.get().kind == "still here"


# ----------------------------------------------------------------------------------------------- server-only TLS


def test_tls_client_connects_to_a_tls_server(pki, net):
    server, s_in = net.server(TLSConfig.from_dir("tls", pki / "main", "server"))
    c1, in1 = net.client("site-1", tls_client(pki))
    c2, in2 = net.client("site-2", tls_client(pki))
    in1.wait_peer("site-2", True)
    assert_frames_flow(server, s_in, c1, in1, "site-1")
    c2.send("site-1", Frame(kind="relayed", meta=b"over tls"))
    got = in1.get()
    assert (got.kind, got.sender, got.meta) == ("relayed", "site-2", b"over tls")


@pytest.mark.parametrize("case", ["server from another CA", "clear client"])
def test_tls_client_cannot_connect(pki, net, case):
    project = "other" if case == "server from another CA" else "main"
    server, s_in = net.server(TLSConfig.from_dir("tls", pki / project, "server"))
    cfg = tls_client(pki) if case == "server from another CA" else TLSConfig("clear")
    exc, took = net.refused_client("site-1", cfg)
    assert took < CONNECT_TIMEOUT + SLACK
    assert s_in.peer_events() == []
