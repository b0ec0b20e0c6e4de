"""The data plane beside gRPC: a site and its server on one machine exchange frames over a data channel.

Endpoints over real Unix sockets in a temp dir; the channel's protocol is also driven directly over a
socketpair, as a hostile peer would.
"""

from __future__ import annotations

import resource
import socket
import struct
import threading
import time

import numpy as np
import pytest
from support import wait_for
from wire_fixtures.inbox import Inbox, endpoint_maker

from flarelite.communication.dataplane import DataChannel, dial
from flarelite.communication.dataplane.channel import _C, _E, CHUNK, _Turns
from flarelite.communication.grpc import GrpcCommunicationProtocol, data_routes
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.protocol import Frame
from flarelite.errors import ConfigError, ConnectError, ProtocolError, TransportClosed, TransportTimeout


@pytest.fixture
def net(short_dir):
    """make(name, **options) starts the server (first) or a site on a Unix socket; all stopped at the end."""
    make = endpoint_maker(f"unix://{short_dir}/server.sock")
    yield make
    make.stop_all()


def test_frames_between_a_site_and_its_server_take_the_channel_both_ways_in_order(net):
    server, s_in = net("server")
    site, c_in = net("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    assert site.data_peers == ["server"]  # open before start() returned: nothing went by gRPC first
    big = np.arange(3 * CHUNK + 17, dtype=np.uint8)
    arrays = [big, np.ones(5, np.float64), np.empty(0, np.int8)]
    for i in range(60):  # small and large interleaved, sent one after another: they arrive in order
        buffers = arrays if i % 10 == 3 else [np.full(3, i, np.int32)]
        site.send("server", Frame(kind="k", msg_id=str(i), meta=b"m" * (i + 1), buffers=buffers))
    for i in range(60):
        got = s_in.get()
        assert (got.msg_id, got.sender, got.target, got.meta) == (str(i), "site-1", "server", b"m" * (i + 1))
        if i % 10 == 3:
            assert [memoryview(b).nbytes for b in got.buffers] == [big.nbytes, 40, 0]
            assert np.array_equal(np.frombuffer(got.buffers[0], np.uint8), big)
    server.send("site-1", Frame(kind="task", meta=b"x" * (CHUNK + 5), buffers=[big]))  # meta larger than a chunk
    got = c_in.get()
    assert got.sender == "server" and got.meta == b"x" * (CHUNK + 5) and bytes(got.buffers[0]) == big.tobytes()


def test_frames_between_sites_keep_the_relay(net):
    server, _ = net("server")
    one, in1 = net("site-1")
    two, in2 = net("site-2")
    in1.wait_peer("site-2", True)
    one.send("site-2", Frame(kind="aux", meta=b"hi", buffers=[np.arange(1 << 20, dtype=np.uint8)]))
    got = in2.get()
    assert got.sender == "site-1" and got.meta == b"hi" and memoryview(got.buffers[0]).nbytes == 1 << 20
    assert server.data_peers == ["site-1", "site-2"]


def test_the_grpc_option_turns_it_off_on_either_side(net):
    server, s_in = net("server")
    site, _ = net("site-1", data_plane="grpc")
    site.send("server", Frame(kind="k", meta=b"m"))
    assert s_in.get().sender == "site-1"
    assert site.data_peers == [] and server.data_peers == []


def test_no_data_plane_over_clear_tcp_by_default_and_a_clear_error_for_a_bad_option():
    server = GrpcCommunicationProtocol("server", listen="127.0.0.1:0")
    inbox = Inbox()
    server.start(inbox.on_frame)
    try:
        site = GrpcCommunicationProtocol("site-1", server=server.bound, connect_timeout=10)
        site.start(Inbox().on_frame)
        site.send("server", Frame(kind="k"))
        assert inbox.get().sender == "site-1"
        assert site.data_peers == [] and server.data_peers == []
        site.stop()
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="data_plane must be one of auto, tcp, grpc"):
        GrpcCommunicationProtocol("server", listen="127.0.0.1:0", data_plane="shm")


def test_a_broken_channel_falls_back_to_grpc(net):
    server, s_in = net("server")
    site, c_in = net("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    server._data["site-1"].close("broken by the test")
    wait_for(lambda: site.data_peers == [])
    site.send("server", Frame(kind="after", meta=b"1"))
    server.send("site-1", Frame(kind="after", meta=b"2"))
    assert s_in.get().meta == b"1" and c_in.get().meta == b"2"


def test_a_sites_last_frames_arrive_before_the_news_that_it_left(net):
    server, _ = net("server")
    events = []
    lock = threading.Lock()

    def on_frame(frame):
        with lock:
            events.append(("frame", frame.msg_id))

    def on_peer(name, connected):
        with lock:
            events.append(("peer", name, connected))

    server._on_frame, server._on_peer = on_frame, on_peer
    site, _ = net("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    for i in range(20):
        site.send("server", Frame(kind="k", msg_id=str(i), buffers=[np.zeros(1 << 18, np.uint8)]))
    site.stop()
    wait_for(lambda: ("peer", "site-1", False) in events)
    frames = [e[1] for e in events if e[0] == "frame"]
    assert frames == [str(i) for i in range(20)]
    assert events.index(("peer", "site-1", False)) > max(i for i, e in enumerate(events) if e[0] == "frame")


# who may open a channel ------------------------------------------------------------------------------
def data_path(server) -> str:
    return server._data_listener.path


def test_a_wrong_token_is_refused_and_the_server_keeps_serving(net):
    server, s_in = net("server")
    site, _ = net("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    with pytest.raises(ConnectError, match="refused the data channel: no data channel is offered"):
        dial(data_path(server), "site-1", b"\0" * 32, 2.0)
    with pytest.raises(ConnectError, match="refused"):
        dial(data_path(server), "site-9", b"\0" * 32, 2.0)
    site.send("server", Frame(kind="still", meta=b"ok"))
    assert s_in.get().meta == b"ok" and server.data_peers == ["site-1"]


def test_a_token_opens_one_channel_once(net, monkeypatch):
    monkeypatch.setattr(data_routes.secrets, "token_bytes", lambda n: b"k" * n)
    server, _ = net("server")
    net("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    with pytest.raises(ConnectError, match="no data channel is offered"):
        dial(data_path(server), "site-1", b"k" * 32, 2.0)  # the insider's replay of the site's own token
    assert server.data_peers == ["site-1"]


def test_stalled_and_garbage_connections_delay_no_site(net):
    server, _ = net("server")
    path = data_path(server)
    stalled = []
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        stalled.append(s)
    junk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    junk.connect(path)
    junk.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
    try:
        began = time.monotonic()
        site, _ = net("site-1")
        assert site.data_peers == ["server"]
        assert time.monotonic() - began < 2.0
    finally:
        for s in [*stalled, junk]:
            s.close()


# the channel's protocol, driven directly ---------------------------------------------------------------
class Pair:
    """A DataChannel reading from ``self.raw`` (the hostile or test peer's end of a socketpair)."""

    def __init__(self, admit=lambda h, size, pending: "", max_held_bytes=1 << 30) -> None:
        a, self.raw = socket.socketpair()
        self.channel = DataChannel(a, local="server", peer="site-1", admit=admit, max_held_bytes=max_held_bytes)
        self.channel.start()

    def envelope(self, env: pb.Envelope) -> None:
        body = env.SerializeToString()
        self.raw.sendall(_E.pack(b"E", len(body)) + body)

    def announce(self, blob: int, sizes=()) -> None:
        self.envelope(pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=list(sizes))))

    def chunk(self, blob: int, buffer: int, data: bytes) -> None:
        self.raw.sendall(_C.pack(b"C", blob, buffer, len(data)) + data)

    def close(self) -> None:
        self.channel.close("test over")
        self.raw.close()


def test_a_channel_closed_between_two_records_ends_its_reader_quietly():
    a, b = socket.socketpair()
    channel = DataChannel(a, local="server", peer="site-1", admit=lambda h, size, pending: "")
    future = channel.claim(7)
    channel.closed = True  # as close() leaves it when the reader is between two records
    channel._read_loop()  # returns (it raised UnboundLocalError on its reader thread once)
    assert channel.reader_done.is_set()
    with pytest.raises(TransportClosed):
        future.result(timeout=1)
    a.close()
    b.close()


def test_a_blob_is_claimed_once_whether_it_came_before_or_after_its_claim():
    pair = Pair()
    try:
        pair.announce(1, [3, 0, 2])
        pair.chunk(1, 0, b"abc")
        pair.chunk(1, 2, b"de")
        assert [bytes(b) for b in pair.channel.claim(1).result(5)] == [b"abc", b"", b"de"]
        later = pair.channel.claim(2)
        pair.announce(2, [1])
        pair.chunk(2, 0, b"z")
        assert bytes(later.result(5)[0]) == b"z"
        with pytest.raises(ProtocolError, match="claimed twice"):
            pair.channel.claim(1).result(5)  # taken already: never twice, and said at once
        pair.close()
        assert pair.channel.reader_done.wait(5)
        with pytest.raises(TransportClosed, match="closed before blob 3"):
            pair.channel.claim(3).result(5)  # never sent, the channel is gone: said at once
    finally:
        pair.close()


@pytest.mark.parametrize(
    "attack",
    ["chunk of no blob", "unknown record", "huge envelope", "chunk past its buffer", "blob with meta", "ids go down"],
)
def test_a_peer_that_breaks_the_protocol_loses_its_channel_and_nothing_else(attack):
    pair = Pair(admit=lambda h, size, pending: "over the limit" if size > 1000 else "")
    try:
        waiting = pair.channel.claim(1)
        if attack == "chunk of no blob":
            pair.chunk(7, 0, b"x")
        elif attack == "unknown record":
            pair.raw.sendall(b"Z" * 64)
        elif attack == "huge envelope":
            pair.raw.sendall(_E.pack(b"E", 1 << 31))
        elif attack == "chunk past its buffer":
            pair.announce(1, [2])
            pair.chunk(1, 0, b"abc")
        elif attack == "blob with meta":
            pair.envelope(pb.Envelope(header=pb.Header(stream=1, meta=b"m", buffer_sizes=[1])))
        else:
            pair.announce(2, [1])
            pair.chunk(2, 0, b"x")
            pair.announce(1, [1])
        assert pair.channel.reader_done.wait(5) and pair.channel.closed
        with pytest.raises(Exception, match="closed before blob 1"):
            waiting.result(5)  # the header waiting for it gets an error at once
    finally:
        pair.close()


def test_blobs_no_header_claims_are_capped():
    pair = Pair(max_held_bytes=10_000)
    try:
        try:
            for blob in range(1, 5):
                pair.announce(blob, [4000])
                pair.chunk(blob, 0, b"x" * 4000)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the channel closed under the flood: what this test wants
        assert pair.channel.reader_done.wait(5) and pair.channel.closed
    finally:
        pair.close()


def test_a_refused_header_frees_its_blob_and_a_cancel_fails_its_claim():
    pair = Pair()
    try:
        pair.channel.drop(1)
        pair.announce(1, [3])
        pair.chunk(1, 0, b"abc")
        claim = pair.channel.claim(2)
        pair.announce(2, [10])
        pair.chunk(2, 0, b"12345")
        pair.envelope(pb.Envelope(cancel=pb.Cancel(stream=2, reason="gave up")))
        with pytest.raises(Exception, match="gave up"):
            claim.result(5)
        assert pair.channel._held == 0 and not pair.channel._done and not pair.channel.closed
    finally:
        pair.close()


def test_memory_follows_the_bytes_received_not_the_bytes_announced():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pair = Pair(admit=lambda h, size, pending: "")
    try:
        pair.announce(1, [1 << 30])  # announces 1 GiB, sends 1 MiB of it, and leaves
        pair.chunk(1, 0, b"x" * (1 << 20))
        time.sleep(0.2)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 64
    finally:
        pair.close()
    assert pair.channel.reader_done.wait(5)


def test_a_peer_that_stops_reading_costs_a_sender_its_timeout_not_more():
    a, b = socket.socketpair()
    channel = DataChannel(a, local="site-1", peer="server", admit=lambda *x: "")
    try:
        began = time.monotonic()
        with pytest.raises(TransportTimeout, match="not sent within its timeout"):
            channel.send_blob([memoryview(np.zeros(64 << 20, np.uint8))], time.monotonic() + 0.5)
        assert time.monotonic() - began < 3.0
        assert channel.closed  # cut mid-record: the receiver frees what it held when it sees the end
    finally:
        channel.close("test over")
        b.close()


def test_writers_take_turns_first_come_first_served():
    turns = _Turns()
    order = []
    big, small = object(), object()
    never = lambda: False  # noqa: E731
    assert turns.take(big, None, never)

    def small_writer():
        turns.take(small, None, never)
        order.append("small")
        turns.leave(small)

    waiter = threading.Thread(target=small_writer)
    waiter.start()
    wait_for(lambda: len(turns._queue) == 2)
    assert turns.rotate(big, None, never)  # big goes to the back: small writes, leaves, big goes on
    order.append("big")
    waiter.join(5)
    turns.leave(big)
    assert order == ["small", "big"]
    late = object()
    assert turns.take(object(), None, never)  # alone: at once
    assert not turns.take(late, time.monotonic() + 0.05, never)  # behind a holder past its deadline: False
    assert late not in turns._queue


def test_record_layout_is_what_the_docstring_says():
    assert _E.size == 5 and _C.size == 17
    assert struct.unpack("<cQII", _C.pack(b"C", 5, 2, 9)) == (b"C", 5, 2, 9)


def test_a_blob_over_the_receivers_limit_is_skipped_and_its_header_says_why():
    pair = Pair(admit=lambda h, size, pending: "over the limit" if size > 1000 else "")
    try:
        pair.announce(1, [3000])
        pair.chunk(1, 0, b"x" * 3000)
        pair.announce(2, [3])
        pair.chunk(2, 0, b"abc")
        with pytest.raises(ProtocolError, match="over the limit"):
            pair.channel.claim(1).result(5)
        assert bytes(pair.channel.claim(2).result(5)[0]) == b"abc" and not pair.channel.closed
        claim = pair.channel.claim(3)  # claimed before it is refused: told as soon as it is
        pair.announce(3, [2000])
        with pytest.raises(ProtocolError, match="over the limit"):
            claim.result(5)
    finally:
        pair.close()


# a job, as processes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data_plane", "transport"),
    [("auto", {}), ("grpc", {}), ("auto", {"protocol": "grpc", "tls": "mtls"}), ("tcp", {"protocol": "grpc"})],
)
def test_a_fedavg_job_in_site_processes_gets_the_same_model_either_way(tmp_path, data_plane, transport):
    import os
    import sys

    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fedjob_fixtures")
    sys.path.insert(0, fixtures)
    try:
        from model_saver import SavingPersistor

        from flarelite.app_common.workflows.fedavg import FedAvg
        from flarelite.job_config.api import FedJob
        from flarelite.job_config.script_runner import FrameworkType, ScriptRunner

        job = FedJob(name="dp_fedavg", min_clients=2)
        job.to_server(FedAvg(num_clients=2, num_rounds=2, persistor_id="persistor"))
        job.to_server(SavingPersistor(), id="persistor")
        client = os.path.join(os.path.dirname(os.path.abspath(__file__)), "client_api_fixtures", "np_client.py")
        job.to_clients(ScriptRunner(client, framework=FrameworkType.NUMPY))
        ws = tmp_path / "ws"
        assert job.simulator_run(str(ws), n_clients=2, data_plane=data_plane, **transport) == 0
    finally:
        sys.path.remove(fixtures)
    final = np.load(ws / "server" / "final.npz")
    assert np.array_equal(final["x"], np.arange(300_000, dtype=np.float32) + 2)  # +1 per round at every site
    server_log = (ws / "server" / "log.txt").read_text()
    opened = [s for s in ("site-1", "site-2") if f"data channel to {s} open" in server_log]
    assert opened == (["site-1", "site-2"] if data_plane != "grpc" else [])  # Unix; TCP under mtls; TCP asked for


def test_a_bad_data_plane_option_is_a_clear_error(tmp_path):
    from flarelite.simulator.runner import run_simulation

    with pytest.raises(ConfigError, match="data_plane must be one of auto, tcp, grpc"):
        run_simulation(str(tmp_path), str(tmp_path / "ws"), n_clients=1, data_plane="fast")


def test_direct_peer_connections_get_a_data_channel_too(net):
    net("server")
    one, in1 = net("site-1", direct_p2p=True)
    two, in2 = net("site-2", direct_p2p=True)
    wait_for(lambda: "site-1" in two.data_peers and "site-2" in one.data_peers)
    wait_for(lambda: "site-2" in one._conns and "site-1" in two._conns)  # the dialer registers it last
    assert "site-2" in one._conns and "site-1" in two._conns  # a direct connection carries the headers
    big = np.arange(5 * CHUNK + 3, dtype=np.uint8)
    for sender, target, inbox in ((two, "site-1", in1), (one, "site-2", in2)):
        sender.send(target, Frame(kind="aux", msg_id="1", meta=b"m", buffers=[big, np.ones(3)]))
        got = inbox.get()
        assert got.sender == sender.address and np.array_equal(np.frombuffer(got.buffers[0], np.uint8), big)
    two._data["site-1"].close("broken by the test")  # the bulk goes by gRPC again, and still arrives
    wait_for(lambda: "site-2" not in one.data_peers)
    two.send("site-1", Frame(kind="aux", msg_id="2", buffers=[big]))
    assert in1.get().msg_id == "2"
