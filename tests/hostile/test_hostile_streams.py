"""A malformed stream costs one log line at most, repeated ones are rate-limited, and the server keeps serving.

A Rogue opens 200 bad streams in a row against a real server endpoint (every way a stream can be wrong:
no body, no hello, a chunk of nothing, bytes that are no Envelope, a hello then EOF or garbage); then an honest
site connects and frames flow.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time

import grpc
import pytest
from rogue import Rogue
from wire_fixtures.inbox import Inbox

from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.protocol import Frame

STREAMS = 200


@pytest.fixture
def server():
    folder = tempfile.mkdtemp(prefix="fl")
    ep = GrpcCommunicationProtocol("server", listen=f"unix://{folder}/s.sock")
    inbox = Inbox()
    ep.start(inbox.on_frame, inbox.on_peer)
    yield ep, inbox
    ep.stop()
    shutil.rmtree(folder, ignore_errors=True)


def garbage_stream(target: str, data: bytes) -> None:
    """Bytes that do not parse as an Envelope, on the real method."""
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream("/flarelite.wire.Transport/Connect")(iter([data]), timeout=5)
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass


def bad_stream(target: str, i: int) -> None:
    case = i % 7
    if case == 6:
        garbage_stream(target, b"\xff\xfe not a protobuf \x00" * 3)
        return
    r = Rogue(target, timeout=5)
    try:
        if case == 0:
            r.send_envelope(pb.Envelope())  # no body at all
        elif case == 1:
            r.chunk(stream=7, data=b"x")  # a chunk before any hello
        elif case == 2:
            r.send(welcome=pb.Welcome(name="site-1"))  # the server's own message
        else:
            name = f"site-{i}"
            if r.hello(name).WhichOneof("body") != "welcome":
                return
            if case == 3:
                r.chunk(stream=99, data=b"x")  # a chunk for a stream never announced
            elif case == 4:
                r.send_envelope(pb.Envelope())  # an envelope without a body, after the hello
            # case 5: hello, then the stream just ends
        r.outbox.put(None)  # half-close: the server sees EOF after what was sent
        r.wait_ended(5)
    finally:
        r.close()


def test_two_hundred_malformed_streams_cost_a_bounded_number_of_log_lines(server, caplog):
    ep, s_in = server
    caplog.set_level(logging.DEBUG)
    began = time.monotonic()
    for i in range(STREAMS):
        bad_stream(ep.bound, i)
    took = time.monotonic() - began
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    print(f"{STREAMS} bad streams in {took:.1f}s: {len(records)} log records")
    for r in records:
        print("  ", r.name, r.levelname, r.getMessage()[:200].replace("\n", " | "))
    lines = sum(r.getMessage().count("\n") + 1 + (r.exc_info is not None) * 10 for r in records)
    assert not any(r.exc_info for r in records), [r.getMessage() for r in records if r.exc_info][:3]
    assert not any("Traceback" in r.getMessage() for r in records)
    # the streams took `took` seconds; one line per STREAM_LOG_INTERVAL (10 s) per address, plus a few
    assert lines <= 3 + 2 * int(took / 10 + 1), "\n".join(r.getMessage() for r in records)
    assert len(records) < STREAMS / 10
    # and the server still serves an honest client
    inbox = Inbox()
    honest = GrpcCommunicationProtocol("site-honest", server=ep.bound, connect_timeout=10)
    honest.start(inbox.on_frame)
    try:
        honest.send("server", Frame(kind="up", meta=b"m"))
        got = s_in.get()
        assert (got.kind, got.sender) == ("up", "site-honest")
        ep.send("site-honest", Frame(kind="down"))
        assert inbox.get().kind == "down"
    finally:
        honest.stop()


def test_the_rate_limited_line_counts_what_it_left_out(caplog, monkeypatch):
    from flarelite.communication.grpc import listening

    now = [100.0]
    monkeypatch.setattr(listening.time, "monotonic", lambda: now[0])
    log = listening._StreamLog(interval=10)
    with caplog.at_level(logging.WARNING, logger="flarelite.grpc"):
        for i in range(50):
            log(logging.WARNING, f"ipv4:10.0.0.1:{4000 + i}", "bad stream %d", i)  # one address, many ports
            now[0] += 0.1
        log(logging.WARNING, "ipv4:10.0.0.2:5000", "bad stream from another address")
        now[0] += 10
        log(logging.WARNING, "ipv4:10.0.0.1:6000", "bad stream again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["bad stream 0", "bad stream from another address"]
    assert lines[2].startswith("bad stream again (49 more such streams from 10.0.0.1 in the last 15s")
    assert len(lines) == 3
