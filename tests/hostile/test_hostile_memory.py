"""Memory follows bytes actually received: attacks on a receiver's memory through the real gRPC wire.

The victim (memory_victim.py) is a server endpoint plus a site (site-1) in a process of their own, so that its
resident memory (VmRSS in /proc/<pid>/status) is what an attack costs. The attacker is a Rogue that says hello
as site-2 and sends headers and chunks of its own making. Each test checks the victim's memory and that it keeps
serving honest frames afterwards.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import pytest
from rogue import Rogue

from flarelite import certs
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.grpc.connection import CHUNK_OVERHEAD
from flarelite.communication.grpc.tls import TLSConfig

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GiB, MiB = 1 << 30, 1 << 20
META = b"m" * 64  # enough meta for a few buffer references


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """One project: server, site-1 (the victims) and site-2 (the attacker's certificate under mTLS)."""
    root = tmp_path_factory.mktemp("memory-pki")
    certs.init_ca(root, "hostile")
    certs.issue(root, "server", "server")
    certs.issue(root, "site-1")
    certs.issue(root, "site-2")
    return root


class Victim:
    """The victim process: its frames (as JSON records), its memory, its log."""

    def __init__(self, mode: str, pki_dir: str, options: dict) -> None:
        self.dir = tempfile.mkdtemp(prefix="fl")
        self.mode, self.pki = mode, pki_dir
        self.log_path = os.path.join(self.dir, "victim.log")
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "memory_victim.py"), self.dir, mode, pki_dir, json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.records: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.next(lambda r: "ready" in r, timeout=60)
        self.address = ready["ready"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.records.put(json.loads(line))
        self.records.put(None)

    def next(self, match, timeout: float = 30) -> dict:
        """The next record that ``match``es (earlier ones are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.records.get(timeout=max(0.01, deadline - time.monotonic()))
            assert record is not None, f"the victim ended; its log:\n{self.log()[-3000:]}"
            if match(record):
                return record

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def rogue(self, name: str = "site-2") -> Rogue:
        tls = TLSConfig("clear") if self.mode == "clear" else TLSConfig.from_dir("mtls", self.pki, name)
        rogue = Rogue(self.address, tls)
        assert rogue.hello(name).WhichOneof("body") == "welcome"
        return rogue

    def probe(self, rogue: Rogue, target: str, tag: str, payload: bytes = b"honest") -> dict:
        """An honest frame (header, then its one buffer as one chunk) from ``rogue``; its record at ``target``."""
        stream = rogue.frame(target=target, kind="probe", msg_id=tag, meta=META, buffer_sizes=[len(payload)])
        rogue.chunk(stream=stream, data=payload)
        record = self.next(lambda r: r.get("kind") == "probe" and r["msg_id"] == tag)
        assert (record["at"], record["error"], record["sizes"]) == (target, "", [len(payload)]), record
        assert record["crc"] == zlib.crc32(payload)
        return record

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(15)
        except Exception:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def victim(pki):
    started: list[Victim] = []

    def start(mode: str = "clear", **options) -> Victim:
        v = Victim(mode, str(pki), options)
        started.append(v)
        return v

    yield start
    for v in started:
        v.close()


def settle(v: Victim, rogue: Rogue, tag: str) -> int:
    """The victim's RSS once it has handled everything the rogue sent before (a probe to each site came back)."""
    v.probe(rogue, "server", f"{tag}-s")
    v.probe(rogue, "site-1", f"{tag}-1")
    return v.rss()


def send_chunks(rogue: Rogue, stream: int, count: int, window: int) -> None:
    """``count`` 1 MiB chunks on ``stream``, keeping to the relay's window (waiting for Credit as an honest site
    does: the relay closes a connection that ignores it)."""
    outstanding = 0
    for _ in range(count):
        cost = MiB + CHUNK_OVERHEAD
        while outstanding + cost > window - (64 << 10):  # room for the header's own cost
            outstanding -= rogue.receive("credit").credit.bytes
        rogue.chunk(stream=stream, data=bytes(MiB))
        outstanding += cost


def wait_rss_below(v: Victim, limit: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rss = v.rss()
        if rss < limit or time.monotonic() > deadline:
            return rss
        time.sleep(0.05)


def report(what: str, grown: int) -> None:
    print(f"\n[memory] {what}: RSS grew by {grown / MiB:.1f} MiB")


# ----------------------------------------------------------------------------------------------- the attacks


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["clear", "mtls"])
def test_headers_announcing_gibibytes_cost_the_server_and_a_relayed_site_nothing(victim, mode):
    v = victim(mode)
    with v.rogue() as rogue:
        before = settle(v, rogue, "warm")
        # one 1 GiB header to the server and one relayed to site-1, each with a first 4 KiB chunk
        for target in ("server", "site-1"):
            stream = rogue.frame(target=target, meta=META, buffer_sizes=[GiB])
            rogue.chunk(stream=stream, data=b"x" * 4096)
        one = settle(v, rogue, "one") - before
        report(f"{mode}: a 1 GiB header to the server and one relayed to site-1", one)
        for _ in range(3):
            rogue.frame(target="server", meta=META, buffer_sizes=[GiB])
        three = settle(v, rogue, "three") - before
        report(f"{mode}: three more 1 GiB headers to the server", three)
    assert one < 64 * MiB and three < 64 * MiB, (one, three)


@pytest.mark.timeout(60)
def test_over_cap_headers_get_a_clear_error_and_the_connection_keeps_serving(victim):
    v = victim(max_message_size=64 * MiB, max_open_frames=2, max_pending_bytes=100 * MiB)
    with v.rogue() as rogue:
        open_streams = [rogue.frame(target="server", meta=META, buffer_sizes=[MiB]) for _ in range(2)]
        cases = {
            "too-many": dict(buffer_sizes=[MiB]),  # a third open frame
            "too-big": dict(buffer_sizes=[65 * MiB]),  # over max_message_size
            "meta-too-big": dict(meta_size=65 * MiB, buffer_sizes=[1]),
        }
        refused: dict[str, int] = {}
        for tag, fields in cases.items():
            fields.setdefault("meta", META if "meta_size" not in fields else b"")
            refused[tag] = rogue.frame(target="server", msg_id=tag, **fields)
            record = v.next(lambda r, tag=tag: r.get("msg_id") == tag)
            assert record["error"] and record["sizes"] == [], record
            answer = rogue.receive("header")
            assert (answer.header.kind, answer.header.ref_id) == ("refused", tag)
            assert answer.header.meta.decode() == record["error"]
            if tag != "too-many":
                rogue.send(cancel=pb.Cancel(stream=refused[tag], reason="it was refused"))
        # the refused frames' chunks are dropped, the open ones are cancelled: then honest frames pass
        rogue.chunk(stream=refused["too-many"], data=bytes(MiB))
        for stream in open_streams:
            rogue.send(cancel=pb.Cancel(stream=stream, reason="giving up"))
        v.probe(rogue, "server", "after", payload=bytes(range(256)) * 100)
        # announced bytes: 60 + 60 MiB open is over 100 MiB
        first = rogue.frame(target="server", meta=META, buffer_sizes=[60 * MiB])
        rogue.frame(target="server", msg_id="over-bytes", meta=META, buffer_sizes=[60 * MiB])
        assert "announced" in v.next(lambda r: r.get("msg_id") == "over-bytes")["error"]
        rogue.send(cancel=pb.Cancel(stream=first))
        v.probe(rogue, "server", "after-bytes")
        # many refusals cost one log line (rate-limited), not one each
        for i in range(50):
            rogue.frame(target="server", msg_id=f"many-{i}", meta=META, buffer_sizes=[65 * MiB])
            rogue.send(cancel=pb.Cancel(stream=rogue._streams))
        v.next(lambda r: r.get("msg_id") == "many-49")
        v.probe(rogue, "server", "after-many")
    lines = [line for line in v.log().splitlines() if "refused the body" in line]
    assert 1 <= len(lines) <= 3, lines
    with v.rogue() as hoarder:  # refused frames neither finished nor cancelled: its connection is closed
        for _ in range(2 + 3):
            hoarder.frame(target="server", meta=META, buffer_sizes=[MiB])
        assert hoarder.wait_ended(10), "a sender that hoards refused frames kept its connection"
    assert "keeps 2 refused frames unfinished" in v.log()


@pytest.mark.timeout(60)
def test_a_header_listing_millions_of_buffers_is_refused_cheaply(victim):
    v = victim()
    with v.rogue() as rogue:
        before = settle(v, rogue, "warm")
        # more buffers than its meta could reference: refused with an error, the connection goes on
        rogue.frame(target="server", msg_id="few-meta", meta=b"m" * 60, buffer_sizes=[0] * 1000)
        record = v.next(lambda r: r.get("msg_id") == "few-meta")
        assert "buffers" in record["error"] and record["sizes"] == [], record
        v.probe(rogue, "server", "after-few-meta")
    for _ in range(2):  # nothing of it stays behind (no reference cycle keeps the parsed header)
        with v.rogue() as rogue:
            rogue.frame(target="server", msg_id="huge", meta_size=18_000_000, buffer_sizes=[0] * 2_900_000)
            assert rogue.wait_ended(20), "the victim kept a stream that listed 2.9M buffers"
    with v.rogue() as rogue:
        grown = settle(v, rogue, "after") - before
    report("a header listing 2.9M empty buffers", grown)
    assert grown < 32 * MiB, grown  # before: 300 MiB held while the stream lasted
    assert not any(r and r.get("msg_id") == "huge" for r in list(v.records.queue))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["server", "site-1"])
def test_cancel_frees_the_partial_frame_at_once(victim, target):
    """Where the frame was being assembled: at the server, or at the site the server relays it to."""
    v = victim()
    with Rogue(v.address) as rogue:
        window = rogue.hello("site-2").welcome.relay_window
        before = settle(v, rogue, "warm")
        stream = rogue.frame(target=target, meta=META, buffer_sizes=[GiB])
        send_chunks(rogue, stream, 192, window if target != "server" else 1 << 40)
        held = settle(v, rogue, "held") - before
        assert held > 150 * MiB, f"192 MiB received but RSS grew by {held / MiB:.0f} MiB only"
        rogue.send(cancel=pb.Cancel(stream=stream, reason="changed my mind"))
        settle(v, rogue, "cancelled")
        grown = wait_rss_below(v, before + 64 * MiB) - before
    report(f"after the Cancel of a frame to {target} holding {held / MiB:.0f} MiB", grown)
    assert grown < 64 * MiB, grown


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["server", "site-1"])
def test_a_sender_that_dies_mid_transfer_leaves_nothing_behind(victim, target):
    """The partial frame is freed where it was being assembled: at the server, or at the site it was relayed to."""
    v = victim()
    with v.rogue("site-3") as honest:
        before = settle(v, honest, "warm")
        rogue = Rogue(v.address)
        window = rogue.hello("site-2").welcome.relay_window
        stream = rogue.frame(target=target, meta=META, buffer_sizes=[GiB])
        send_chunks(rogue, stream, 192, window if target != "server" else 1 << 40)
        v.probe(rogue, target, "rogue-held")
        held = v.rss() - before
        assert held > 150 * MiB, f"192 MiB received but RSS grew by {held / MiB:.0f} MiB only"
        rogue.close()  # the stream breaks mid-transfer, as when its process is killed
        grown = wait_rss_below(v, before + 64 * MiB) - before
        settle(v, honest, "after")
    report(f"after the death of a sender {held / MiB:.0f} MiB into a frame to {target}", grown)
    assert grown < 64 * MiB, grown
