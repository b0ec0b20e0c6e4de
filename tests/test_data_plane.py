"""The data plane beside gRPC: a site and its server on one machine exchange frames over a data channel.

Endpoints over real Unix sockets in a temp dir; the channel's protocol is also driven directly over a
socketpair, as a hostile peer would.
"""

from __future__ import annotations

import asyncio
import queue
import resource
import socket
import struct
import threading
import time

import numpy as np
import pytest
from support import wait_for
from wire_fixtures.inbox import Inbox, endpoint_maker

from flarelite.communication.dataplane import DataChannel, dial, handshake
from flarelite.communication.dataplane import channel as channel_module
from flarelite.communication.dataplane.channel import _C, _E, CHUNK, META_INLINE, ChannelUnavailable, _Turns
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


def test_frames_between_sites_go_through_the_relay(net):
    server, _ = net("server")
    one, in1 = net("site-1")
    two, in2 = net("site-2")
    in1.wait_peer("site-2", True)
    one.send("site-2", Frame(kind="aux", meta=b"hi", buffers=[np.arange(1 << 20, dtype=np.uint8)]))
    got = in2.get()
    assert got.sender == "site-1" and got.meta == b"hi" and memoryview(got.buffers[0]).nbytes == 1 << 20
    assert server.data_peers == ["site-1", "site-2"]  # (its bytes took them: tests/test_data_relay.py)


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


def test_a_frame_of_many_arrays_takes_the_channel_both_ways(net):
    """A model of more than 64 tensors (ResNet-18 has 122): its blob announcement carries no meta by design, and
    was refused by the rule that a frame needs 6 bytes of meta per buffer past 64."""
    server, s_in = net("server")
    site, c_in = net("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    arrays = [np.full(4096, i, np.float32) for i in range(300)]  # 300 x 16 KiB: the channel's
    site.send("server", Frame(kind="result", meta=b"m" * 2000, buffers=arrays))
    server.send("site-1", Frame(kind="task", meta=b"m" * 2000, buffers=arrays))
    for got in (s_in.get(), c_in.get()):
        assert got.error == "" and len(got.buffers) == 300
        assert all(np.array_equal(np.frombuffer(b, np.float32), a) for b, a in zip(got.buffers, arrays))


def test_a_data_socket_that_cannot_be_made_leaves_the_frames_to_grpc(net, short_dir, caplog):
    leftover = f"{short_dir}/server.sock.data"
    with open(leftover, "w") as f:
        f.write("not a socket, and never removed")
    server, s_in = net("server")
    site, c_in = net("site-1")
    assert server._data_listener is None and "frames go by gRPC" in caplog.text
    site.send("server", Frame(kind="by-grpc", buffers=[np.arange(1 << 18, dtype=np.float32)]))
    assert s_in.get().kind == "by-grpc" and site.data_peers == []
    with open(leftover) as f:
        assert f.read().startswith("not a socket")


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


def test_a_site_that_left_is_reported_gone_even_when_grpc_cancels_its_stream_during_the_drain(net):
    # gRPC cancels a stream's handler once the RPC is over: here, while the server still drains the site's data
    # channel (slowed down, as a reader busy with what the peer wrote last would be). The site must still be
    # reported gone, and its connection dropped: a run would otherwise wait for a dead site forever.
    server, s_in = net("server")
    drain = server._drop_data
    draining = threading.Event()

    async def slow_drain(name, conn):
        draining.set()
        await asyncio.sleep(1.0)
        await drain(name, conn)

    server._drop_data = slow_drain
    site, _ = net("site-1")
    wait_for(lambda: server.data_peers == ["site-1"])
    s_in.wait_peer("site-1", True)
    site.stop()
    assert draining.wait(10)
    s_in.wait_peer("site-1", False, timeout=10)
    wait_for(lambda: "site-1" not in server._conns and server.data_peers == [])


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


def test_a_hello_trickled_a_byte_at_a_time_is_cut_at_its_deadline(net, monkeypatch):
    monkeypatch.setattr(handshake, "HELLO_TIMEOUT", 0.6)
    server, _ = net("server")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(data_path(server))
    began = time.monotonic()
    try:
        hello = b"FLDP\x01\x06site-1" + b"\0" * 32
        cut = None
        for byte in hello:  # each byte well within the deadline of one read; all of them far past the hello's
            try:
                s.send(bytes([byte]))
                s.settimeout(0.25)
                if s.recv(1) == b"":
                    cut = time.monotonic() - began
                    break
            except TimeoutError:
                continue
            except OSError:
                cut = time.monotonic() - began
                break
        assert cut is not None and cut < 0.6 + 2.0, f"the listener still read the hello after {cut}s"
    finally:
        s.close()


def test_connections_that_never_say_hello_cannot_keep_a_site_from_its_channel(net, monkeypatch):
    monkeypatch.setattr(handshake, "MAX_HANDSHAKES", 4)
    server, _ = net("server")
    stalled = []
    try:
        for _ in range(3 * handshake.MAX_HANDSHAKES):  # every slot taken, again and again
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(data_path(server))
            stalled.append(s)
        began = time.monotonic()
        site, _ = net("site-1")
        assert site.data_peers == ["server"] and time.monotonic() - began < 3.0
        wait_for(lambda: len(server._data_listener._hellos) <= handshake.MAX_HANDSHAKES)
    finally:
        for s in stalled:
            s.close()


def test_a_full_listener_cuts_the_oldest_hello_of_the_source_holding_the_most():
    listener = handshake.DataListener(socket.socket(socket.AF_UNIX), "x", "server", lambda *a: None)
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        sources = ["10.0.0.1", "10.0.0.9", "10.0.0.9", "10.0.0.9"]
        listener._hellos = {a: source for (a, _), source in zip(pairs, sources)}
        assert listener._make_room() == (pairs[1][0], "10.0.0.9")  # not the older hello of the quiet source
        assert list(listener._hellos.values()) == ["10.0.0.1", "10.0.0.9", "10.0.0.9"]
    finally:
        listener._sock.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_a_listener_trickling_its_answer_costs_the_dialing_site_its_timeout_not_more(short_dir):
    path = f"{short_dir}/slow.sock"
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(1)
    stop = threading.Event()

    def trickle():
        conn, _ = lst.accept()
        with conn:
            for byte in b"\x01\xc8" + b"x" * 200:  # a refusal, 200 bytes of reason, one byte every 0.3 s
                if stop.wait(0.3):
                    return
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        with pytest.raises(ConnectError, match="in time|timed out"):
            dial(path, "site-1", b"\0" * 32, 1.0)
        assert time.monotonic() - began < 2.5
    finally:
        stop.set()
        thread.join(2)
        lst.close()


# the channel's protocol, driven directly ---------------------------------------------------------------
class Pair:
    """A DataChannel reading from ``self.raw`` (the hostile or test peer's end of a socketpair); the whole frames
    it delivers land in ``self.got`` (``whole=False``: a channel of blobs only, as a site's to its server)."""

    def __init__(self, admit=lambda h, size, pending: "", max_held_bytes=1 << 30, gate_open=True, whole=True) -> None:
        a, self.raw = socket.socketpair()
        self.got: queue.Queue = queue.Queue()
        self.gate = threading.Event()
        if gate_open:
            self.gate.set()
        self.channel = DataChannel(
            a,
            local="server",
            peer="site-1",
            admit=admit,
            max_held_bytes=max_held_bytes,
            deliver=self.got.put if whole else None,
            gate=self.gate,
        )
        self.channel.start()

    def envelope(self, env: pb.Envelope) -> None:
        body = env.SerializeToString()
        self.raw.sendall(_E.pack(b"E", len(body)) + body)

    def announce(self, blob: int, sizes=()) -> None:
        self.envelope(pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=list(sizes))))

    def header(self, stream: int, sizes=(), target="server", kind="aux", **fields) -> None:
        """A whole frame's header."""
        header = pb.Header(stream=stream, target=target, kind=kind, buffer_sizes=list(sizes), **fields)
        self.envelope(pb.Envelope(header=header))

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
    [
        "chunk of no blob",
        "unknown record",
        "huge envelope",
        "chunk past its buffer",
        "blob with meta",
        "ids go down",
        "a blob for another site on a channel that relays nothing",
    ],
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
        elif attack == "a blob for another site on a channel that relays nothing":
            pair.envelope(pb.Envelope(header=pb.Header(stream=1, buffer_sizes=[1], target="site-2")))
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
        with pytest.raises(ChannelUnavailable):
            channel.send_frame(Frame(kind="next"), None)  # nothing written: the endpoint sends it by gRPC
    finally:
        channel.close("test over")
        b.close()


def test_a_sender_that_lost_its_turn_to_a_writer_with_no_deadline_still_gets_its_timeout():
    """T2 (2 s timeout) wrote its announcement; T1 (no timeout) holds the turn writing 64 MiB to a peer that reads
    nothing yet. T2 fails at its deadline, not when T1 is done; its cancel goes before T1's next record."""
    a, b = socket.socketpair()
    sender = DataChannel(a, local="site-1", peer="server", admit=lambda *x: "")
    hold = object()
    sender._turns.take(hold, None, lambda: False)  # (orders the writers: T2 first, then T1)
    outcome: dict = {}

    def t2():
        began = time.monotonic()
        try:
            two = [memoryview(bytearray(1024)), memoryview(bytearray(1024))]  # T1 writes between the two
            sender.send_blob(two, time.monotonic() + 2.0, "t2")
            outcome["t2"] = "sent"
        except TransportTimeout:
            outcome["t2"] = time.monotonic() - began

    def t1():
        outcome["t1"] = sender.send_blob([memoryview(np.zeros(64 << 20, np.uint8))], None, "t1")

    threads = [threading.Thread(target=t2, daemon=True), threading.Thread(target=t1, daemon=True)]
    receiver = None
    try:
        threads[0].start()
        wait_for(lambda: len(sender._turns._queue) == 2)
        threads[1].start()
        wait_for(lambda: len(sender._turns._queue) == 3)
        sender._turns.leave(hold)
        threads[0].join(5.0)
        assert isinstance(outcome.get("t2"), float) and outcome["t2"] < 3.5, outcome
        assert not sender.closed
        receiver = DataChannel(b, local="server", peer="site-1", admit=lambda *x: "")
        receiver.start()  # reads from the first byte: T2's announcement, its cancel, T1's blob
        threads[1].join(10.0)
        blob = outcome["t1"]
        assert receiver.claim(blob).result(10)[0].nbytes == 64 << 20
        assert not receiver._pending  # T2's blob was cancelled there: nothing of it is held
    finally:
        sender.close("test over")
        if receiver is not None:
            receiver.close("test over")
        b.close()


def test_a_relayed_blobs_cancel_never_waits_for_a_turn_another_writer_holds():
    sender, receiver, _ = channel_pair(admit=lambda *x: "")
    try:
        blob = sender.begin_blob([4096], None)
        hold = object()
        sender._turns.take(hold, None, lambda: False)  # a writer busy with a large record, say
        began = time.monotonic()
        sender.cancel_blob(blob, "the source gave up")
        assert time.monotonic() - began < 0.5
        wait_for(lambda: blob in receiver._pending)
        sender._leave(hold)  # the writer leaves the turn with no one after it: it writes the queued cancel
        wait_for(lambda: blob not in receiver._pending)
    finally:
        sender.close("test over")
        receiver.close("test over")


def channel_pair(**options):
    """Two DataChannels over a socketpair (gates open): (sender, receiver, what the receiver delivers)."""
    a, b = socket.socketpair()
    got: queue.Queue = queue.Queue()
    gate = threading.Event()
    gate.set()
    sender = DataChannel(a, local="site-1", peer="server", admit=lambda *x: "", deliver=got.put, gate=gate)
    receiver = DataChannel(b, local="server", peer="site-1", deliver=got.put, gate=gate, **options)
    sender.start()
    receiver.start()
    return sender, receiver, got


def test_whole_frames_arrive_in_order_from_the_authenticated_peer():
    sender, receiver, got = channel_pair(admit=lambda *x: "")
    try:
        big = np.arange(CHUNK + 11, dtype=np.uint8)
        frames = [
            Frame(kind="aux", msg_id="1", topic="t", rc="OK", job_id="j", meta=b"m", buffers=[np.ones(3)]),
            Frame(kind="bare", ref_id="r"),  # no body at all
            Frame(kind="big", meta=b"M" * (META_INLINE + 1), buffers=[big, b"", b"xy"]),  # meta as its last buffer
        ]
        for frame in frames:
            sender.send_frame(frame, None)
        first, second, third = (got.get(timeout=5) for _ in range(3))
        assert (first.kind, first.msg_id, first.topic, first.rc, first.job_id, first.meta) == (
            "aux",
            "1",
            "t",
            "OK",
            "j",
            b"m",
        )
        assert np.array_equal(np.frombuffer(first.buffers[0]), np.ones(3))
        assert (second.kind, second.ref_id, second.buffers, second.meta) == ("bare", "r", [], b"")
        assert third.meta == b"M" * (META_INLINE + 1) and [bytes(b) for b in third.buffers[1:]] == [b"", b"xy"]
        assert np.array_equal(np.frombuffer(third.buffers[0], np.uint8), big)
        assert {f.sender for f in (first, second, third)} == {"site-1"} and first.target == "server"
    finally:
        sender.close("test over")
        receiver.close("test over")


def test_the_sender_is_the_channels_peer_whatever_the_header_claims():
    pair = Pair()
    try:
        pair.header(1, [2], kind="aux", sender="site-7")
        pair.chunk(1, 0, b"ab")
        frame = pair.got.get(timeout=5)
        assert frame.sender == "site-1" and bytes(frame.buffers[0]) == b"ab"
    finally:
        pair.close()


def test_frames_wait_for_the_gate_and_a_channel_whose_peer_never_switches_closes(monkeypatch):
    monkeypatch.setattr(channel_module, "GATE_TIMEOUT", 0.5)
    pair = Pair(gate_open=False)
    try:
        pair.header(1, kind="early")
        with pytest.raises(queue.Empty):
            pair.got.get(timeout=0.2)  # held: the peer's frames on the stream come first
        pair.gate.set()
        assert pair.got.get(timeout=5).kind == "early"
    finally:
        pair.close()
    shut = Pair(gate_open=False)
    try:
        shut.header(1, kind="early")
        assert shut.channel.reader_done.wait(5) and shut.channel.closed and "no Switch" in shut.channel.close_reason
        assert shut.got.empty()
    finally:
        shut.close()


@pytest.mark.parametrize(
    "attack",
    [
        "chunk of no frame",
        "unknown record",
        "huge envelope",
        "chunk past its buffer",
        "inline meta and a meta size",
        "ids go down",
        "a frame for another site",
        "a header envelope of the stream's kinds",
        "a whole frame on a channel of blobs",
    ],
)
def test_a_peer_that_breaks_the_whole_frame_protocol_loses_its_channel_and_nothing_else(attack):
    pair = Pair(whole=attack != "a whole frame on a channel of blobs")
    try:
        if attack == "chunk of no frame":
            pair.chunk(7, 0, b"x")
        elif attack == "unknown record":
            pair.raw.sendall(b"Z" * 64)
        elif attack == "huge envelope":
            pair.raw.sendall(_E.pack(b"E", 1 << 31))
        elif attack == "chunk past its buffer":
            pair.header(1, [2])
            pair.chunk(1, 0, b"abc")
        elif attack == "inline meta and a meta size":
            pair.header(1, [1], meta=b"m", meta_size=5)
        elif attack == "ids go down":
            pair.header(2, [1])
            pair.chunk(2, 0, b"x")
            pair.header(1, [1])
        elif attack == "a frame for another site":
            pair.header(1, target="site-2", kind="aux")
        elif attack == "a whole frame on a channel of blobs":
            pair.header(1, kind="aux")
        else:
            pair.envelope(pb.Envelope(hello=pb.Hello(name="site-1")))
        assert pair.channel.reader_done.wait(5) and pair.channel.closed
        if attack == "ids go down":
            assert pair.got.get(timeout=1).buffers == [bytearray(b"x")]  # the frame before the lie arrived
        assert pair.got.empty()
    finally:
        pair.close()


def test_a_frame_over_the_receivers_limit_comes_as_its_header_with_the_reason():
    pair = Pair(admit=lambda h, size, pending: "over the limit" if size > 1000 else "")
    try:
        pair.header(1, [3000], kind="aux", msg_id="a", meta=b"m")
        pair.chunk(1, 0, b"x" * 3000)  # skipped
        pair.header(2, [3], kind="aux", msg_id="b")
        pair.chunk(2, 0, b"abc")
        refused, fine = pair.got.get(timeout=5), pair.got.get(timeout=5)
        assert (refused.msg_id, refused.error, refused.meta, refused.buffers) == ("a", "over the limit", b"", [])
        assert (fine.msg_id, fine.error, bytes(fine.buffers[0])) == ("b", "", b"abc") and not pair.channel.closed
    finally:
        pair.close()


def test_refused_frames_left_unfinished_are_capped(monkeypatch):
    monkeypatch.setattr(channel_module, "MAX_REFUSED", 3)
    pair = Pair(admit=lambda h, size, pending: "over the limit")
    try:
        try:
            for stream in range(1, 6):
                pair.header(stream, [4000])  # refused, and their chunks never come
        except (BrokenPipeError, ConnectionResetError):
            pass  # the channel closed under the flood: what this test wants
        assert pair.channel.reader_done.wait(5) and pair.channel.closed
        assert pair.got.qsize() == 3  # each refused one was answered before the flood closed it
    finally:
        pair.close()


def test_a_cancel_frees_what_arrived_of_a_frame():
    pair = Pair()
    try:
        pair.header(1, [10])
        pair.chunk(1, 0, b"12345")
        pair.envelope(pb.Envelope(cancel=pb.Cancel(stream=1, reason="gave up")))
        pair.header(2, kind="after")
        assert pair.got.get(timeout=5).kind == "after"
        assert not pair.channel._pending and pair.channel._pending.nbytes == 0 and not pair.channel.closed
    finally:
        pair.close()


def test_a_frame_with_no_time_left_goes_if_the_socket_takes_it_now_and_else_fails_with_nothing_written():
    sender, receiver, got = channel_pair(admit=lambda *x: "")
    try:  # timeout=0 ("now, if there is room", as aux sends to several targets): it went, the channel lives on
        for i in range(20):
            sender.send_frame(Frame(kind="now", msg_id=str(i), meta=b"m"), time.monotonic() - 1)
        assert [got.get(timeout=5).msg_id for _ in range(20)] == [str(i) for i in range(20)]
        assert not sender.closed and not receiver.closed
    finally:
        sender.close("test over")
        receiver.close("test over")
    a, b = socket.socketpair()  # b never reads: fill the socket, then no room
    channel = DataChannel(a, local="site-1", peer="server", admit=lambda *x: "", deliver=print, gate=threading.Event())
    try:
        with pytest.raises(BlockingIOError):
            while True:
                a.send(b"x" * 65536, socket.MSG_DONTWAIT)
        began = time.monotonic()
        with pytest.raises(TransportTimeout, match="had no room now"):
            channel.send_frame(Frame(kind="late", meta=b"m"), time.monotonic() - 1)
        assert time.monotonic() - began < 1.0 and not channel.closed  # nothing written: the channel stays usable
    finally:
        channel.close("test over")
        b.close()


def test_ending_the_writes_lets_the_peer_read_everything_first():
    sender, receiver, got = channel_pair(admit=lambda *x: "")
    try:
        for i in range(20):
            sender.send_frame(Frame(kind="k", msg_id=str(i), buffers=[np.full(50_000, i, np.uint8)]), None)
        sender.end_writes()
        with pytest.raises(ChannelUnavailable):
            sender.send_frame(Frame(kind="late"), None)
        assert receiver.reader_done.wait(5)  # it read to the end
        assert [got.get(timeout=1).msg_id for _ in range(20)] == [str(i) for i in range(20)]
    finally:
        sender.close("test over")
        receiver.close("test over")


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


@pytest.mark.parametrize("plane", ["tcp", "grpc"])
def test_a_data_plane_choice_in_memory_is_a_clear_error(tmp_path, plane):
    from support import comp, run_job

    with pytest.raises(ConfigError, match=f"data_plane='{plane}' needs a gRPC protocol"):
        run_job(tmp_path, [comp("sim_components.ThreadsController")], [], n_clients=1, data_plane=plane)


def test_a_bad_data_plane_option_is_a_clear_error(tmp_path):
    from flarelite.simulator.runner import run_simulation

    with pytest.raises(ConfigError, match="data_plane must be one of auto, tcp, grpc"):
        run_simulation(str(tmp_path), str(tmp_path / "ws"), n_clients=1, data_plane="fast")


def test_a_whole_frame_whose_direct_channel_breaks_under_it_goes_by_grpc(net, monkeypatch):
    monkeypatch.setenv("FLARELITE_SHARED_MEMORY", "0")  # its bytes through the socket: the sender is held mid-frame
    net("server")
    one, in1 = net("site-1", direct_p2p=True)
    two, in2 = net("site-2", direct_p2p=True)
    wait_for(lambda: "site-1" in two.data_peers and "site-2" in one.data_peers)
    wait_for(lambda: two._conns["site-1"].frames_out is not None)
    receiving = one._data["site-2"]
    stalled, release, original = threading.Event(), threading.Event(), receiving._on_chunk

    def stall(*args):  # the reader stops at the frame's first chunk, so the sender is mid-frame
        stalled.set()
        release.wait(30)
        return original(*args)

    receiving._on_chunk = stall
    payload = np.arange(64 << 20, dtype=np.uint8)  # far more than the sockets hold
    outcome: dict = {}

    def send():
        try:
            two.send("site-1", Frame(kind="aux", msg_id="big", meta=b"m", buffers=[payload]), timeout=30)
            outcome["sent"] = True
        except Exception as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert stalled.wait(10)
        receiving.close("broken by the test")  # under the frame: the sender's write fails mid-frame
        sender.join(30)
    finally:
        release.set()
    assert outcome == {"sent": True}, outcome
    got = in1.get()  # once, whole, by gRPC on the direct connection
    assert got.msg_id == "big" and np.array_equal(np.frombuffer(got.buffers[0], np.uint8), payload)


def test_direct_peer_connections_get_a_data_channel_too(net):
    net("server")
    one, in1 = net("site-1", direct_p2p=True)
    two, in2 = net("site-2", direct_p2p=True)
    wait_for(lambda: "site-1" in two.data_peers and "site-2" in one.data_peers)
    wait_for(lambda: "site-2" in one._conns and "site-1" in two._conns)  # the dialer registers it last
    assert "site-2" in one._conns and "site-1" in two._conns
    big = np.arange(5 * CHUNK + 3, dtype=np.uint8)
    for sender, target, inbox in ((two, "site-1", in1), (one, "site-2", in2)):
        sender.send(target, Frame(kind="aux", msg_id="1", meta=b"m", buffers=[big, np.ones(3)]))
        got = inbox.get()
        assert got.sender == sender.address and np.array_equal(np.frombuffer(got.buffers[0], np.uint8), big)
    threads = []
    delivered = one._on_frame

    def on_frame(frame):
        threads.append(threading.current_thread().name)
        delivered(frame)

    one._on_frame = on_frame
    wait_for(lambda: two._conns["site-1"].frames_out is not None and one._conns["site-2"].frames_out is not None)
    for i in range(50):  # small frames: whole on the channel, each written by its caller, read by the channel's reader
        two.send("site-1", Frame(kind="aux", msg_id=f"s{i}", meta=b"x" * i))
    assert [in1.get().msg_id for _ in range(50)] == [f"s{i}" for i in range(50)]
    assert set(threads) == {"site-1-data-site-2"}
    two._data["site-1"].close("broken by the test")  # the frames go by gRPC again, and still arrive
    wait_for(lambda: "site-2" not in one.data_peers)
    two.send("site-1", Frame(kind="aux", msg_id="2", buffers=[big]))
    assert in1.get().msg_id == "2"
