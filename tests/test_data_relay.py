"""Large frames between two sites pass through the server's data channels (grpc/data_relay.py): cut through, a
relay window per (source, target), a slow or broken target costing only its own frames, a hostile source losing
only its channel.

Endpoints over real Unix sockets in a temp dir; the hostile source writes raw records on its own channel and raw
headers on its own stream.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from support import wait_for
from wire_fixtures.inbox import endpoint_maker

from flarelite.communication.dataplane.channel import _C, _E, CHUNK
from flarelite.communication.grpc import data_relay
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.grpc.connection import Outgoing
from flarelite.communication.grpc.core import EndpointCore
from flarelite.communication.protocol import Frame
from flarelite.errors import TransportTimeout

WINDOW = 1 << 20  # the server's relay window in these tests (its chunk size too)


@pytest.fixture
def net(short_dir):
    make = endpoint_maker(f"unix://{short_dir}/server.sock")
    yield make
    make.stop_all()


@pytest.fixture
def forwarded(monkeypatch):
    """The frames the relay passed on over a target's channel: [(source, target, nbytes)]."""
    seen: list = []
    original = data_relay.BlobRelay.forwarded

    def spy(self, p):
        seen.append((p.source.name, p.target, sum(p.sizes)))
        return original(self, p)

    monkeypatch.setattr(data_relay.BlobRelay, "forwarded", spy)
    return seen


@pytest.fixture
def held(monkeypatch):
    """The most bytes the relay held for each (source, target) at once."""
    most: dict = {}
    original = EndpointCore._relay_admit

    def spy(self, source, target, cost):
        original(self, source, target, cost)
        key = (source.name, target)
        most[key] = max(most.get(key, 0), source.relay_held.get(target, 0))

    monkeypatch.setattr(EndpointCore, "_relay_admit", spy)
    return most


def three(net, **site2):
    server, _ = net("server", relay_window=WINDOW, chunk_size=WINDOW)
    one, in1 = net("site-1")
    two, in2 = net("site-2", **site2)
    three_, in3 = net("site-3")
    for name in ("site-2", "site-3"):
        in1.wait_peer(name, True)
    wait_for(lambda: len(server.data_peers) == (3 if site2.get("data_plane") != "grpc" else 2))
    return server, (one, in1), (two, in2), (three_, in3)


def _idle(server) -> bool:
    relay = server._blob_relay
    return (
        relay is not None
        and not relay._passing
        and all(not conn.relay_held.get(t) for conn in server._conns.values() for t in list(conn.relay_held))
    )


def big(n: int, seed: int) -> np.ndarray:
    return (np.arange(n, dtype=np.uint32) * 2654435761 + seed).astype(np.uint32)


def test_large_frames_between_sites_pass_through_the_servers_channels_in_order(net, forwarded, held):
    server, (one, in1), (two, in2), _ = three(net)
    meta = b"m" * (WINDOW + 3)  # meta larger than a chunk travels as the blob's last buffer
    frames = [
        Frame(kind="aux", msg_id="0", meta=b"a", buffers=[big(3 << 20, 0)]),  # 12 MiB: 12 windows
        Frame(kind="aux", msg_id="1", meta=meta, buffers=[big(1 << 16, 1), np.empty(0, np.int8), big(5, 2)]),
        Frame(kind="aux", msg_id="2", meta=b"c", buffers=[big((CHUNK >> 2) + 7, 3)]),
    ]
    for frame in frames:
        one.send("site-2", frame)
    two.send("site-1", frames[0])
    for frame in frames:
        got = in2.get()
        assert (got.sender, got.target, got.msg_id, got.meta, got.error) == (
            "site-1",
            "site-2",
            frame.msg_id,
            frame.meta,
            "",
        )
        assert [bytes(b) for b in got.buffers] == [memoryview(b).tobytes() for b in frame.buffers]
    back = in1.get()
    assert back.sender == "site-2" and bytes(back.buffers[0]) == frames[0].buffers[0].tobytes()
    assert [f[:2] for f in forwarded] == [("site-1", "site-2")] * 3 + [("site-2", "site-1")]
    # cut through: the relay never held more than a window of a source's bytes for a target
    assert held and max(held.values()) <= WINDOW
    wait_for(lambda: _idle(server))  # everything credited back, nothing left in the relay


def test_a_target_without_a_channel_gets_the_frame_on_its_stream(net, forwarded, held):
    server, (one, _), (two, in2), _ = three(net, data_plane="grpc")
    assert "site-2" not in server.data_peers and "site-1" in server.data_peers
    frame = Frame(kind="aux", meta=b"hi", buffers=[big(2 << 20, 5), big(3, 6)])
    one.send("site-2", frame)
    got = in2.get()
    assert got.sender == "site-1" and got.error == ""
    assert [bytes(b) for b in got.buffers] == [b.tobytes() for b in frame.buffers]
    assert forwarded == [] and max(held.values()) <= WINDOW
    wait_for(lambda: _idle(server))


def _stall_reader(endpoint):
    """Hold ``endpoint``'s channel reader at the next chunk it reads until the returned event is set."""
    channel = endpoint._data["server"]
    release = threading.Event()
    original = channel._on_chunk

    def slow(*args):
        release.wait(30)
        return original(*args)

    channel._on_chunk = slow
    return channel, release


def test_a_slow_target_slows_only_the_frames_that_go_to_it(net):
    server, (one, _), (two, in2), (_, in3) = three(net)
    _, release = _stall_reader(two)
    payload = big(8 << 20, 7)  # 32 MiB: far more than the window and the sockets' buffers
    sender = threading.Thread(target=one.send, args=("site-2", Frame(kind="aux", buffers=[payload])))
    sender.start()
    try:
        time.sleep(0.5)  # site-1's frame for site-2 is stuck behind site-2's reader (and its window)
        assert sender.is_alive()
        started = time.monotonic()
        one.send("site-3", Frame(kind="aux", msg_id="other", buffers=[big(4 << 20, 8)]), timeout=10)
        got = in3.get()
        assert got.msg_id == "other" and got.error == "" and time.monotonic() - started < 10
    finally:
        release.set()
    sender.join(30)
    assert not sender.is_alive() and bytes(in2.get().buffers[0]) == payload.tobytes()
    wait_for(lambda: _idle(server))


def test_a_sender_that_gives_up_cancels_the_frame_at_its_target(net):
    server, (one, _), (two, in2), _ = three(net)
    channel, release = _stall_reader(two)
    with pytest.raises(TransportTimeout, match="not sent within its timeout"):
        one.send("site-2", Frame(kind="aux", msg_id="late", buffers=[big(8 << 20, 9)]), timeout=1.0)
    release.set()
    one.send("site-2", Frame(kind="aux", msg_id="next", buffers=[big(1 << 20, 10)]), timeout=10)
    got = in2.get()
    assert got.msg_id == "next" and got.error == ""  # the one given up never arrives, not even as an error
    wait_for(lambda: _idle(server) and not channel._done and not channel._pending)


def test_a_target_whose_channel_breaks_mid_frame_hears_why_and_the_sender_goes_on(net):
    server, (one, _), (two, in2), _ = three(net)
    channel, release = _stall_reader(two)
    sender = threading.Thread(
        target=one.send, args=("site-2", Frame(kind="aux", msg_id="cut", buffers=[big(8 << 20, 11)]))
    )
    sender.start()
    time.sleep(0.5)
    channel.close("test: the channel breaks")
    release.set()
    sender.join(30)
    got = in2.get()
    assert got.msg_id == "cut" and "lost on the relay's data channel" in got.error and not got.buffers
    payload = big(2 << 20, 12)  # site-2 has no channel now: its frames come on its stream
    one.send("site-2", Frame(kind="aux", msg_id="after", buffers=[payload]), timeout=10)
    got = in2.get()
    assert got.msg_id == "after" and bytes(got.buffers[0]) == payload.tobytes()
    wait_for(lambda: _idle(server))


# a hostile source ------------------------------------------------------------------------------------
def _announce(channel, blob: int, sizes, target: str) -> None:
    body = pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=list(sizes), target=target)).SerializeToString()
    channel.sock.sendall(_E.pack(b"E", len(body)) + body)


def _raw_header(endpoint, blob: int, sizes, target: str, msg_id: str) -> None:
    """Queue a header naming relayed blob ``blob`` on ``endpoint``'s stream to the server."""
    conn = endpoint._conns["server"]
    env = pb.Envelope(
        header=pb.Header(
            stream=10**6 + blob,
            kind="aux",
            target=target,
            msg_id=msg_id,
            meta=b"x" * 16,
            buffer_sizes=list(sizes),
            blob=blob,
        )
    )
    endpoint._loop.call_soon_threadsafe(conn.enqueue, Outgoing.of([(env, 0)], target=target))


def test_a_source_that_sends_past_its_window_loses_its_channel_and_nothing_else(net):
    server, (one, _), (two, in2), (three_, _) = three(net)
    server._relay().wait = 0.5  # for the header that never comes (0.8 of heartbeat_timeout)
    channel = one._data["server"]
    _announce(channel, 10**6, [16 << 20], "site-2")
    try:
        for _ in range(4):  # 16 MiB for site-2 without waiting for credit: four windows at once
            channel.sock.sendall(_C.pack(b"C", 10**6, 0, CHUNK) + bytes(CHUNK))
    except OSError:
        pass  # closed under the flood: what the test wants
    wait_for(lambda: "site-1" not in server.data_peers)
    payload = big(2 << 20, 13)  # the server keeps relaying for the others, and site-1 keeps its stream
    three_.send("site-2", Frame(kind="aux", msg_id="third", buffers=[payload]), timeout=10)
    one.send("site-2", Frame(kind="aux", msg_id="first", buffers=[big(3, 14)]), timeout=10)
    got = {f.msg_id: f for f in (in2.get(), in2.get())}
    assert bytes(got["third"].buffers[0]) == payload.tobytes() and got["first"].error == ""
    wait_for(lambda: not server._blob_relay._passing)


def test_an_announcement_and_a_header_that_disagree_reach_the_target_as_the_reason(net):
    server, (one, _), (two, in2), _ = three(net)
    channel = one._data["server"]
    _announce(channel, 10**6, [1000], "site-2")
    channel.sock.sendall(_C.pack(b"C", 10**6, 0, 1000) + bytes(1000))
    _raw_header(one, 10**6, [2000], "site-2", "sizes")
    got = in2.get()
    assert got.msg_id == "sizes" and "not the sizes its header announced" in got.error and not got.buffers
    _announce(channel, 10**6 + 1, [10], "site-3")
    channel.sock.sendall(_C.pack(b"C", 10**6 + 1, 0, 10) + bytes(10))
    _raw_header(one, 10**6 + 1, [10], "site-2", "target")
    got = in2.get()
    assert got.msg_id == "target" and "announced for 'site-3'" in got.error
    wait_for(lambda: not server._blob_relay._passing)
    assert "site-1" in server.data_peers  # a disagreement costs the frame, not the channel


def test_a_header_whose_buffers_never_come_reaches_the_target_as_the_reason(net, short_dir):
    server, (one, _), (two, in2), _ = three(net)
    server._relay().wait = 0.5  # (0.8 of heartbeat_timeout)
    _raw_header(one, 10**6, [10], "site-2", "nothing")
    got = in2.get()
    assert got.msg_id == "nothing" and "did not come within" in got.error
    wait_for(lambda: not server._blob_relay._passing)


def test_a_header_that_comes_after_its_buffers_were_given_up_reaches_the_target_as_the_reason(net):
    server, (one, _), (two, in2), _ = three(net)
    server._relay().wait = 0.3
    channel = one._data["server"]
    _announce(channel, 10**6, [1000, 1000], "site-2")  # half of it: its buffers wait for the header
    channel.sock.sendall(_C.pack(b"C", 10**6, 0, 1000) + bytes(1000))
    wait_for(lambda: any(p.failed for p in server._blob_relay._passing.values()))  # the wait ran out
    _raw_header(one, 10**6, [1000, 1000], "site-2", "late")
    got = in2.get()  # not lost in silence: the target answers its sender with the reason
    assert got.msg_id == "late" and "did not come within" in got.error and not got.buffers
    channel.sock.sendall(_C.pack(b"C", 10**6, 1, 1000) + bytes(1000))
    wait_for(lambda: not server._blob_relay._passing)


def test_buffers_cancelled_after_their_wait_ran_out_leave_nothing_behind(net):
    server, (one, _), (two, in2), _ = three(net)
    server._relay().wait = 0.2
    server.max_open_frames = 3  # what one connection may have open: leftovers would soon refuse every frame
    channel = one._data["server"]
    for blob in range(10**6, 10**6 + 2 * server.max_open_frames):
        _announce(channel, blob, [1000, 1000], "site-2")
        time.sleep(0.35)  # its header never comes: the wait runs out
        body = pb.Envelope(cancel=pb.Cancel(stream=blob, reason="gave up")).SerializeToString()
        channel.sock.sendall(_E.pack(b"E", len(body)) + body)  # then its sender gives up on it
        wait_for(lambda: not server._blob_relay._passing)
    assert "site-1" in server.data_peers and not server._blob_relay._open
    channel._ids = itertools.count(2 * 10**6)  # (its own blob ids go on past the raw ones)
    one.send("site-2", Frame(kind="aux", msg_id="after", buffers=[big(1 << 20, 3)]), timeout=10)
    got = in2.get()
    assert got.msg_id == "after" and got.error == ""


def test_a_frame_of_many_arrays_passes_through_the_relay(net, forwarded):
    server, (one, _), (two, in2), _ = three(net)
    arrays = [big(4096, i) for i in range(300)]  # more than 64 buffers, each smaller than a chunk
    one.send("site-2", Frame(kind="aux", msg_id="many", meta=b"m" * 2000, buffers=arrays), timeout=10)
    got = in2.get()
    assert got.msg_id == "many" and got.error == "" and len(got.buffers) == 300
    assert all(bytes(b) == a.tobytes() for b, a in zip(got.buffers, arrays))
    assert forwarded == [("site-1", "site-2", 300 * 4096 * 4)]  # on the channels, not the stream
