"""No sender is ever stuck because of a receiver: per-destination flow control through the real gRPC wire.

The server runs in a process of its own where its memory is measured (flow_peer.py), or in this process where
the test looks at what its relay holds. The slow receiver is ``Stalled``: a site that says hello, keeps sending
heartbeats (so it is alive) and never reads its stream, until the test lets it. Honest sites are
GrpcCommunicationProtocol endpoints in this process; a receiver that is killed runs as a process of its own.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
from rogue import Rogue
from wire_fixtures.inbox import Inbox

from flarelite.communication.dataplane import shared_memory as shm
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.grpc import flarelite_pb2_grpc as pb_grpc
from flarelite.communication.grpc.connection import CHUNK_OVERHEAD, Outgoing, header_cost
from flarelite.communication.protocol import Frame
from flarelite.errors import TransportClosed, TransportError, TransportTimeout

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MiB = 1 << 20
BEAT = {"heartbeat_interval": 0.5, "heartbeat_timeout": 3.0}  # a stuck sender would be dropped after 3 s


class Peer:
    """An endpoint in a process of its own (flow_peer.py): its output lines, its memory; it can be killed."""

    def __init__(self, name: str, address: str, options: dict) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "flow_peer.py"), name, address, json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.next("ready", timeout=60)
        self.bound = ready.split(" ", 1)[1] if " " in ready else address

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next(self, prefix: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, "the peer process ended"
            if line.startswith(prefix):
                return line

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
        self.proc.wait(5)


class Stalled:
    """A site that says hello, sends heartbeats and does not read its stream until ``start_reading``."""

    def __init__(self, target: str, name: str) -> None:
        limit = 16 << 20
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        )
        self.outbox: queue.Queue = queue.Queue()
        self.call = pb_grpc.TransportStub(self.channel).Connect(iter(self.outbox.get, None))
        self.outbox.put(pb.Envelope(hello=pb.Hello(name=name, version=1)))
        first = next(self.call)
        assert first.WhichOneof("body") == "welcome", first
        self.inbox: queue.Queue = queue.Queue()
        self.stopped = threading.Event()
        threading.Thread(target=self._beat, daemon=True).start()

    def _beat(self) -> None:
        while not self.stopped.wait(0.5):
            self.outbox.put(pb.Envelope(heartbeat=pb.Heartbeat(time=time.time())))

    def start_reading(self) -> None:
        def read() -> None:
            try:
                for env in self.call:
                    self.inbox.put(env)
            except grpc.RpcError:
                pass
            self.inbox.put(None)

        threading.Thread(target=read, daemon=True).start()

    def until(self, match, timeout: float = 20) -> list[pb.Envelope]:
        """The envelopes read until one that ``match``es (included); AssertionError if none does in time."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            env = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            assert env is not None, "the stalled site's stream ended"
            seen.append(env)
            if match(env):
                return seen

    def close(self) -> None:
        self.stopped.set()
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()


class Net:
    """A server (in a process of its own, or here) and the sites of one test; everything stopped at the end."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fl")
        self.address = f"unix://{self.dir}/server.sock"
        self.cleanup: list = []
        self.server_endpoint: GrpcCommunicationProtocol | None = None

    def server_process(self, **options) -> Peer:
        peer = Peer("server", self.address, {**BEAT, **options})
        self.cleanup.append(peer.close)
        return peer

    def server_here(self, **options) -> GrpcCommunicationProtocol:
        ep = GrpcCommunicationProtocol("server", listen=self.address, **{**BEAT, **options})
        ep.start(lambda frame: None)
        self.cleanup.append(ep.stop)
        self.server_endpoint = ep
        return ep

    def site(self, name: str, **options) -> tuple[GrpcCommunicationProtocol, Inbox]:
        inbox = Inbox()
        ep = GrpcCommunicationProtocol(name, server=self.address, connect_timeout=20, **{**BEAT, **options})
        ep.start(inbox.on_frame, inbox.on_peer)
        self.cleanup.append(ep.stop)
        return ep, inbox

    def site_process(self, name: str, **options) -> Peer:
        peer = Peer(name, self.address, {**BEAT, "connect_timeout": 20, **options})
        self.cleanup.append(peer.close)
        return peer

    def stalled(self, name: str = "site-2") -> Stalled:
        s = Stalled(self.address, name)
        self.cleanup.append(s.close)
        return s

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def net():
    n = Net()
    yield n
    n.close()


def poll(condition, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.02)


def knows(ep: GrpcCommunicationProtocol, *names: str) -> bool:
    return all(n in ep._peers for n in names)


def report(what: str, value) -> None:
    print(f"[flow] {what}: {value}")


def big(nbytes: int) -> Frame:
    return Frame(kind="aux_req", msg_id="big", meta=b"m" * 16, buffers=[np.zeros(nbytes, dtype=np.uint8)])


def in_flight(ep: GrpcCommunicationProtocol, target: str) -> bool:
    """Whether part of a frame to ``target`` has been written by ``ep`` (on any of its connections)."""
    for conn in list(ep._conns.values()):
        items = list(conn._active) + [conn._current] + [o for q in conn._parked.values() for o in q]
        if any(isinstance(o, Outgoing) and o.target == target and o.started for o in items):
            return True
    return False


@pytest.mark.timeout(60)
def test_a_stalled_destination_slows_only_what_goes_to_it(net):
    server = net.server_process()
    s1, in1 = net.site("site-1")
    s3, in3 = net.site("site-3")
    net.stalled("site-2")
    poll(lambda: knows(s1, "site-2", "site-3"), what="peers")
    rss0 = server.rss()
    outcome: dict = {}

    def stream() -> None:
        began = time.monotonic()
        try:
            s1.send("site-2", big(64 * MiB), timeout=6)
            outcome["error"] = None
        except TransportError as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - began

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    latencies, peak, i = [], rss0, 0
    until = time.monotonic() + 5  # past the 3 s after which a sender whose heartbeats are stuck is dropped
    while time.monotonic() < until:
        i += 1
        began = time.monotonic()
        s1.send("site-3", Frame(kind="ping", msg_id=str(i), meta=b"small"))
        got = in3.get(timeout=10)
        latencies.append(time.monotonic() - began)
        assert got.msg_id == str(i)
        peak = max(peak, server.rss())
        time.sleep(0.1)  # pacing, not synchronisation
    sender.join(15)
    events = in1.peer_events()
    median = sorted(latencies)[len(latencies) // 2]
    report("third-site small frame latency max/median (ms)", (max(latencies) * 1e3, median * 1e3))
    report("server RSS growth (MiB)", (peak - rss0) / MiB)
    report("64 MiB send to the stalled site", outcome)
    assert ("server", False) not in events, f"the sender was dropped: {events}"
    assert max(latencies) < 2.0, latencies  # before: the frame never arrived (the sender was dropped)
    assert isinstance(outcome.get("error"), TransportTimeout), outcome
    assert peak - rss0 < 64 * MiB


@pytest.mark.timeout(60)
def test_inline_frames_to_a_stalled_destination_are_bounded(net):
    server = net.server_process()
    s1, in1 = net.site("site-1")
    s3, in3 = net.site("site-3")
    net.stalled("site-2")
    poll(lambda: knows(s1, "site-2", "site-3"), what="peers")
    rss0 = server.rss()
    meta = b"i" * MiB  # one envelope each (inline meta)
    sent, blocked, peak = 0, None, rss0
    began = time.monotonic()
    for i in range(1200):
        try:
            s1.send("site-2", Frame(kind="aux_req", msg_id=str(i), meta=meta), timeout=1.0)
        except TransportTimeout as exc:
            blocked = exc
            break
        sent += 1
        if i % 8 == 0:
            peak = max(peak, server.rss())
    waited = time.monotonic() - began
    for _ in range(10):
        peak = max(peak, server.rss())
        time.sleep(0.05)
    s1.send("site-3", Frame(kind="ping", meta=b"still here"))
    assert in3.get(timeout=5).meta == b"still here"
    report("inline 1 MiB frames sent before the sender blocked", sent)
    report("server RSS growth (MiB)", (peak - rss0) / MiB)
    assert isinstance(blocked, TransportTimeout), f"all {sent} frames were taken without backpressure"
    assert sent <= 32 and waited < 10, (sent, waited)
    assert peak - rss0 < 64 * MiB


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["relayed", "direct", "direct data channel", "direct shared memory"])
def test_a_receiver_killed_mid_transfer_fails_the_send_at_once(net, mode, monkeypatch):
    """A stopped receiver stalls the transfer (gRPC bulk, or data channel chunks); in shared memory the first
    large frame goes whole (one record) and the next waits for the window; killing the receiver fails the waiting
    send at once, never with a timeout it did not have."""
    if mode == "direct shared memory" and not shm.AVAILABLE:
        pytest.skip("no sealed memfds on this platform")
    net.server_process()
    direct = mode != "relayed"
    plane = "grpc" if mode in ("relayed", "direct") else "auto"  # "direct": the gRPC stream's own bulk
    if mode == "direct data channel":  # its chunks through the socket (this process sends no shared memory)
        monkeypatch.setenv(shm.ENV, "0")
    receiver = net.site_process("site-2", direct_p2p=direct, data_plane=plane)
    s1, in1 = net.site("site-1", direct_p2p=direct, data_plane=plane)
    poll(lambda: knows(s1, "site-2"), what="site-2")
    if direct:
        poll(lambda: "site-2" in s1._conns, what="a direct connection")
    if plane == "auto":
        poll(lambda: "site-2" in s1.data_peers, what="a data channel")
    os.kill(receiver.proc.pid, signal.SIGSTOP)  # it stops reading: the transfer stalls half-way
    if mode == "direct shared memory":
        assert s1._data["site-2"].shared, "no shared memory on this Unix channel"
        s1.send("site-2", big(96 * MiB))  # one M record: out at once, unread
    outcome: dict = {}

    def stream() -> None:
        try:
            s1.send("site-2", big(256 * MiB))
            outcome["error"] = None
        except TransportError as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    if plane == "auto":  # a writer holds the channel's turn: its blob is being written (or waits for the window)
        poll(lambda: bool(s1._data["site-2"]._turns._queue), what="transfer under way")
    else:
        poll(lambda: in_flight(s1, "site-2"), what="transfer under way")
    time.sleep(0.3)  # let it fill what the stopped receiver's socket takes
    assert "at" not in outcome, "the frame went out whole to a stopped receiver"
    killed = time.monotonic()
    receiver.proc.kill()
    sender.join(20)
    report(f"{mode}: send after the receiver was killed", outcome)
    assert not sender.is_alive(), "send is still blocked 20 s after the receiver was killed"
    assert isinstance(outcome["error"], (TransportClosed, TransportError)), outcome
    assert not isinstance(outcome["error"], TransportTimeout), outcome  # the send had no timeout: it is closed
    assert outcome["at"] - killed < 5


@pytest.mark.timeout(60)
def test_send_timeout_on_a_stalled_relayed_destination_cancels_the_partial_frame(net):
    server = net.server_here()
    s1, _ = net.site("site-1")
    stalled = net.stalled("site-2")
    poll(lambda: knows(s1, "site-2"), what="site-2")
    began = time.monotonic()
    with pytest.raises(TransportTimeout, match="site-2"):
        s1.send("site-2", big(32 * MiB), timeout=1.5)
    took = time.monotonic() - began
    report("send(timeout=1.5) raised after (s)", took)
    assert 1.5 <= took < 3.5  # it waits out its timeout, and not much longer
    source = server._conns["site-1"]
    poll(lambda: not source.pending, what="the relay's partial frame freed")
    stalled.start_reading()
    seen = stalled.until(lambda e: e.WhichOneof("body") == "cancel")
    header = next(e.header for e in seen if e.WhichOneof("body") == "header")
    assert seen[-1].cancel.stream == header.stream
    poll(lambda: not source.relay_held and not s1._conns["server"]._outstanding, what="the window given back")
    s1.send("site-2", Frame(kind="ping", msg_id="after", meta=b"p"))
    assert stalled.until(lambda e: e.WhichOneof("body") == "header")[-1].header.msg_id == "after"


@pytest.mark.timeout(60)
def test_send_timeout_on_a_stalled_direct_peer_cancels_the_partial_frame(net):
    # the gRPC stream's own cancel (with a data channel, the bulk would go around the stalled loop: the data
    # channel's timeout is tested in test_data_plane.py)
    net.server_here()
    s1, _ = net.site("site-1", direct_p2p=True, data_plane="grpc")
    s2, in2 = net.site("site-2", direct_p2p=True, data_plane="grpc")
    poll(lambda: "site-2" in s1._conns and "site-1" in s2._conns, what="a direct connection")
    assert s2._loop is not None
    s2._loop.call_soon_threadsafe(time.sleep, 2.0)  # site-2 stops reading for 2 s
    began = time.monotonic()
    with pytest.raises(TransportTimeout, match="site-2"):
        s1.send("site-2", big(64 * MiB), timeout=1.0)
    assert time.monotonic() - began < 3.0
    s1.send("site-2", Frame(kind="ping", msg_id="after", meta=b"p"))  # goes after the Cancel
    assert in2.get(timeout=10).msg_id == "after"  # the cancelled frame was never delivered
    assert not s2._conns["site-1"].pending  # and what had arrived of it is freed


@pytest.mark.timeout(60)
def test_a_client_that_ignores_its_relay_window_is_disconnected(net, caplog):
    server = net.server_here(relay_window=2 * MiB)
    s1, _ = net.site("site-1")
    s3, in3 = net.site("site-3")
    stalled = net.stalled("site-2")
    poll(lambda: knows(s1, "site-2", "site-3"), what="peers")
    with Rogue(net.address) as rogue:
        welcome = rogue.hello("site-6")
        assert welcome.welcome.relay_window == 2 * MiB
        stream = rogue.frame(target="site-2", meta=b"m", buffer_sizes=[16 * MiB])
        for _ in range(16):
            rogue.chunk(stream=stream, data=bytes(MiB))
        assert rogue.wait_ended(10), "the server kept a client that ignores its relay window"
    poll(lambda: "site-6" not in server._conns, what="site-6 dropped")
    lines = [r for r in caplog.records if "relay window" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    s1.send("site-3", Frame(kind="ping", meta=b"honest"))
    assert in3.get(timeout=5).meta == b"honest"
    # the rogue's partial frame is cancelled at its destination, and the relay holds nothing of it any more
    stalled.start_reading()
    seen = stalled.until(lambda e: e.WhichOneof("body") == "cancel")
    header = next(e.header for e in seen if e.WhichOneof("body") == "header")
    assert header.sender == "site-6" and seen[-1].cancel.stream == header.stream


def test_window_costs_of_a_large_frame_are_what_the_relay_counts(tmp_path):
    from flarelite.communication.grpc.endpoint import _costed

    frame = Frame(kind="k", sender="a", target="b", meta=b"x" * 3000, buffers=[bytes(2500), b"", bytes(1000)])
    pairs = list(_costed(frame, 7, 1024))
    assert pairs[0][1] == header_cost(pairs[0][0])
    assert [c for _, c in pairs[1:]] == [len(e.chunk.data) + CHUNK_OVERHEAD for e, _ in pairs[1:]]
    assert len(pairs) == 1 + 3 + 1 + 3  # 2500 -> 3 chunks, 1000 -> 1, meta 3000 -> 3
