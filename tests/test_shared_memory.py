"""Large buffers handed over in sealed shared memory on a Unix data channel (M records with a memfd).

Channels over a socketpair, one end driven as a hostile peer would; and two endpoints on a real Unix socket.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import queue
import socket
import threading
import time

import numpy as np
import pytest
from support import wait_for
from wire_fixtures.inbox import endpoint_maker

from flarelite.communication.dataplane import DataChannel
from flarelite.communication.dataplane import shared_memory as shm
from flarelite.communication.dataplane.channel import _C, _E, _M
from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.protocol import Frame
from flarelite.errors import ProtocolError, TransportTimeout

pytestmark = pytest.mark.skipif(not shm.AVAILABLE, reason="no sealed memfds on this platform")
MiB = 1 << 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def shares(monkeypatch):
    """How many buffers went into shared memory (every call of shm.share)."""
    made = []
    real = shm.share

    def counting(view):
        made.append(view.nbytes)
        return real(view)

    monkeypatch.setattr(shm, "share", counting)
    return made


def pair(shared=True, whole=True, admit=lambda h, size, pending: ""):
    """(sender, receiver, delivered): two channels over a socketpair, gates open."""
    a, b = socket.socketpair()
    got: queue.Queue = queue.Queue()
    gate = threading.Event()
    gate.set()
    deliver = got.put if whole else None
    sender = DataChannel(
        a, local="site-1", peer="server", admit=admit, deliver=deliver, gate=gate, shared_memory=shared
    )
    receiver = DataChannel(
        b, local="server", peer="site-1", admit=admit, deliver=deliver, gate=gate, shared_memory=shared
    )
    sender.start()
    receiver.start()
    return sender, receiver, got


def sealed(data: bytes, seals=None) -> int:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals is None:
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def send_fds(sock, record: bytes, fds: list[int]) -> None:
    sock.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])


def test_a_large_blob_goes_in_shared_memory_and_arrives_mapped_private_and_writable(shares):
    sender, receiver, _ = pair(whole=False)
    try:
        big = np.arange(3 * MiB // 8, dtype=np.int64)
        small = b"tail"
        blob = sender.send_blob([memoryview(big).cast("B"), memoryview(small)], None)
        buffers = receiver.claim(blob).result(5)
        assert shares == [3 * MiB]  # only the large buffer: the small one went as a C record
        assert isinstance(buffers[0], mmap.mmap) and bytes(buffers[1]) == small
        got = np.frombuffer(buffers[0], np.int64)
        assert np.array_equal(got, big)
        got[0] = -1  # private: the receiver's writes are its own (copy on write), the sealed file is unchanged
        assert got[0] == -1 and big[0] == 0
    finally:
        sender.close("test over")
        receiver.close("test over")


def test_whole_frames_take_shared_memory_too_and_small_ones_do_not(shares):
    sender, receiver, got = pair()
    try:
        sender.send_frame(Frame(kind="small", target="server", buffers=[np.ones(1000, np.uint8)]), None)
        sender.send_frame(Frame(kind="large", target="server", buffers=[np.full(2 * MiB, 7, np.uint8)]), None)
        first, second = got.get(timeout=5), got.get(timeout=5)
        assert (first.kind, second.kind) == ("small", "large")
        assert shares == [2 * MiB]
        assert isinstance(second.buffers[0], mmap.mmap)
        assert np.all(np.frombuffer(second.buffers[0], np.uint8) == 7) and second.sender == "site-1"
    finally:
        sender.close("test over")
        receiver.close("test over")


def test_the_sender_keeps_no_descriptor_and_the_receiver_none_but_its_mapping():
    sender, receiver, _ = pair(whole=False)
    try:
        blob = sender.send_blob([memoryview(bytes(2 * MiB))], None)
        receiver.claim(blob).result(5)
        before = open_fds()
        for _ in range(20):
            blob = sender.send_blob([memoryview(bytes(2 * MiB))], None)
            receiver.claim(blob).result(5)
        assert open_fds() <= before  # 20 memfds went across, none is left open on either side
    finally:
        sender.close("test over")
        receiver.close("test over")


def test_over_tcp_or_without_the_option_buffers_go_through_the_socket(shares):
    sender, receiver, _ = pair(shared=False, whole=False)
    try:
        blob = sender.send_blob([memoryview(bytes(3 * MiB))], None)
        assert bytes(receiver.claim(blob).result(5)[0]) == bytes(3 * MiB)
        assert shares == [] and not sender.shared
    finally:
        sender.close("test over")
        receiver.close("test over")
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    channel = DataChannel(a, local="x", peer="y", admit=lambda *x: "", shared_memory=True)
    assert not channel.shared  # a TCP socket cannot carry descriptors
    a.close()
    b.close()


def test_the_environment_switch_makes_one_side_send_through_the_socket_and_still_take_shared_buffers(
    monkeypatch, shares
):
    monkeypatch.setenv(shm.ENV, "0")
    a, b = socket.socketpair()
    quiet = DataChannel(a, local="site-1", peer="server", admit=lambda *x: "", shared_memory=True)
    monkeypatch.delenv(shm.ENV)
    loud = DataChannel(b, local="server", peer="site-1", admit=lambda *x: "", shared_memory=True)
    quiet.start()
    loud.start()
    try:
        blob = quiet.send_blob([memoryview(bytes(2 * MiB))], None)
        assert not isinstance(loud.claim(blob).result(5)[0], mmap.mmap) and shares == []  # through the socket
        blob = loud.send_blob([memoryview(bytes(2 * MiB))], None)
        assert isinstance(quiet.claim(blob).result(5)[0], mmap.mmap) and shares == [2 * MiB]  # taken shared
    finally:
        quiet.close("test over")
        loud.close("test over")


def test_without_shared_memory_left_the_buffers_go_through_the_socket(monkeypatch, caplog):
    def no_memory(view):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(shm, "share", no_memory)
    caplog.set_level("INFO", logger="flarelite.dataplane")
    sender, receiver, _ = pair(whole=False)
    try:
        blob = sender.send_blob([memoryview(b"x" * (2 * MiB))], None)
        assert bytes(receiver.claim(blob).result(5)[0]) == b"x" * (2 * MiB)
        assert "go through the socket while there is no shared memory" in caplog.text
    finally:
        sender.close("test over")
        receiver.close("test over")


def test_a_deadline_that_passes_while_copying_cancels_the_send_and_the_channel_serves_on(monkeypatch):
    real = shm.share

    def slow(view):
        time.sleep(0.3)
        return real(view)

    monkeypatch.setattr(shm, "share", slow)
    sender, receiver, _ = pair(whole=False)
    try:
        before = open_fds()
        with pytest.raises(TransportTimeout, match="copying it into shared memory"):
            sender.send_blob([memoryview(bytes(2 * MiB))], time.monotonic() + 0.1)
        assert open_fds() == before and not sender.closed  # its memfd closed; the channel serves on
        blob = sender.send_blob([memoryview(b"ok")], None)
        assert bytes(receiver.claim(blob).result(5)[0]) == b"ok"
    finally:
        sender.close("test over")
        receiver.close("test over")


def test_a_peer_that_reads_nothing_holds_at_most_a_window_of_shared_memory(shares):
    """Each M record's memfd holds this machine's memory until the peer reads the record: the sender copies the
    next buffer only while less than SHARED_WINDOW bytes wait unread, and gives up at its deadline."""
    a, b = socket.socketpair()  # b: a peer that never reads
    gate = threading.Event()
    gate.set()
    sender = DataChannel(a, local="site-1", peer="server", admit=lambda h, size, p: "", gate=gate, shared_memory=True)
    sender.start()
    try:
        pieces = [memoryview(bytes(8 * MiB)) for _ in range(20)]
        start = time.monotonic()
        with pytest.raises(TransportTimeout, match="has not read the 64 MiB of shared buffers sent before it"):
            sender.send_blob(pieces, time.monotonic() + 0.5)
        assert 0.5 <= time.monotonic() - start < 3
        assert len(shares) == shm.SHARED_WINDOW // (8 * MiB)  # the window, not the 160 MiB of the blob
        assert not sender.closed
        one = [memoryview(bytes(100 * MiB))]  # one buffer larger than the window waits for the window to empty
        with pytest.raises(TransportTimeout):
            sender.send_blob(one, time.monotonic() + 0.2)
        assert len(shares) == 8

        reader = DataChannel(b, local="server", peer="site-1", admit=lambda h, size, p: "", shared_memory=True)
        reader.start()  # reads what waited (and drops the cancelled blobs); then the large buffer goes
        try:
            blob = sender.send_blob(one, time.monotonic() + 10)
            assert len(reader.claim(blob).result(10)[0]) == 100 * MiB
            assert len(shares) == 9
        finally:
            reader.close("test over")
    finally:
        sender.close("test over")
        b.close()


# a hostile sender ----------------------------------------------------------------------------------------
def announce(raw, blob, sizes):
    body = pb.Envelope(header=pb.Header(stream=blob, buffer_sizes=list(sizes))).SerializeToString()
    raw.sendall(_E.pack(b"E", len(body)) + body)


ATTACKS = {
    "a record without its descriptor": "without its file descriptor",
    "a pipe instead of a memfd": "not a sealed memfd",
    "an ordinary file": "not a sealed memfd",
    "a memfd not sealed against writes": "not sealed against writes",
    "a sealed memfd of another size": "announced as",
    "descriptors without records": "ahead of the records",
    "five descriptors in one message": "more than 4 file descriptors",
    "a shared buffer after some chunks of it": "whole buffer",
    "a shared buffer of no blob": "unknown blob",
    "an empty shared buffer": "empty shared buffer",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_sender_that_breaks_the_shared_memory_rules_loses_its_channel_and_leaks_nothing(attack, tmp_path):
    a, raw = socket.socketpair()
    receiver = DataChannel(a, local="server", peer="site-1", admit=lambda *x: "", shared_memory=True)
    receiver.start()
    mine: list[int] = []  # the descriptors this test opened (closed at the end, whatever happens)
    before = open_fds()
    try:
        waiting = receiver.claim(1)
        announce(raw, 1, [4096])
        record = _M.pack(b"M", 1, 0, 4096)
        if attack == "a record without its descriptor":
            raw.sendall(record)
        elif attack == "a pipe instead of a memfd":
            r, w = os.pipe()
            mine += (r, w)
            send_fds(raw, record, [r])
        elif attack == "an ordinary file":
            path = tmp_path / "f"
            path.write_bytes(bytes(4096))
            fd = os.open(path, os.O_RDONLY)
            mine.append(fd)
            send_fds(raw, record, [fd])
        elif attack == "a memfd not sealed against writes":
            fd = sealed(bytes(4096), seals=fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            mine.append(fd)
            send_fds(raw, record, [fd])  # the sender could change the bytes after the receiver looked
        elif attack == "a sealed memfd of another size":
            fd = sealed(bytes(100))
            mine.append(fd)
            send_fds(raw, record, [fd])
        elif attack == "descriptors without records":
            for _ in range(shm.MAX_QUEUED + 1):
                fd = sealed(b"x")
                mine.append(fd)
                send_fds(raw, b"C", [fd])  # the start of a record that never uses them
        elif attack == "five descriptors in one message":
            fds = [sealed(b"x") for _ in range(5)]
            mine += fds
            send_fds(raw, record, fds)
        elif attack == "a shared buffer after some chunks of it":
            raw.sendall(_C.pack(b"C", 1, 0, 10) + bytes(10))
            fd = sealed(bytes(4096))
            mine.append(fd)
            send_fds(raw, record, [fd])
        elif attack == "a shared buffer of no blob":
            fd = sealed(bytes(4096))
            mine.append(fd)
            send_fds(raw, _M.pack(b"M", 9, 0, 4096), [fd])
        else:
            fd = sealed(b"")
            mine.append(fd)
            announce(raw, 2, [0, 4])
            send_fds(raw, _M.pack(b"M", 2, 0, 0), [fd])
        assert receiver.reader_done.wait(5) and receiver.closed
        assert ATTACKS[attack] in receiver.close_reason
        with pytest.raises(Exception, match="closed before blob 1"):
            waiting.result(5)  # the header waiting for it gets an error at once
    finally:
        receiver.close("test over")
        raw.close()
        for fd in mine:
            os.close(fd)
    assert open_fds() <= before  # every descriptor that came was closed by the receiver


def test_a_channel_without_shared_memory_takes_no_shared_buffer():
    a, raw = socket.socketpair()
    receiver = DataChannel(a, local="server", peer="site-1", admit=lambda *x: "", shared_memory=False)
    receiver.start()
    fd = sealed(bytes(4096))
    try:
        announce(raw, 1, [4096])
        send_fds(raw, _M.pack(b"M", 1, 0, 4096), [fd])  # the kernel drops the descriptor it did not ask for
        assert receiver.reader_done.wait(5)
        assert "unknown kind b'M'" in receiver.close_reason
    finally:
        receiver.close("test over")
        raw.close()
        os.close(fd)


def test_a_refused_blob_in_shared_memory_is_dropped_without_mapping_it():
    sender, receiver, _ = pair(whole=False, admit=lambda h, size, pending: "over the limit" if size > MiB else "")
    try:
        blob = sender.send_blob([memoryview(bytes(2 * MiB))], None)
        with pytest.raises(ProtocolError, match="over the limit"):
            receiver.claim(blob).result(5)
        blob = sender.send_blob([memoryview(b"next")], None)
        assert bytes(receiver.claim(blob).result(5)[0]) == b"next"  # the channel serves on
    finally:
        sender.close("test over")
        receiver.close("test over")


def test_open_shared_wants_a_sealed_memfd_of_the_size():
    fd = sealed(b"abc")
    try:
        mapping = shm.open_shared(fd, 3)
        assert bytes(mapping) == b"abc"
        with pytest.raises(ProtocolError, match="announced as"):
            shm.open_shared(fd, 4)
        with pytest.raises(PermissionError):
            os.write(fd, b"z")  # sealed: nobody, the sender included, changes it any more
    finally:
        os.close(fd)


# two endpoints on a real Unix socket -------------------------------------------------------------------
def test_large_frames_between_a_site_and_its_server_go_in_shared_memory_both_ways(short_dir, shares):
    make = endpoint_maker(f"unix://{short_dir}/server.sock")
    try:
        server, to_server = make("server")
        site, to_site = make("site-1")
        wait_for(lambda: server.data_peers == ["site-1"] and site.data_peers == ["server"])
        model = np.random.default_rng(0).random(1 << 19)  # 4 MiB
        site.send("server", Frame(kind="up", buffers=[model]))
        server.send("site-1", Frame(kind="down", buffers=[model * 2]))
        up, down = to_server.get(timeout=10), to_site.get(timeout=10)
        assert np.array_equal(np.frombuffer(up.buffers[0]), model)
        assert np.array_equal(np.frombuffer(down.buffers[0]), model * 2)
        assert shares == [4 * MiB, 4 * MiB]
    finally:
        make.stop_all()
