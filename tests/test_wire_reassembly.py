"""Property tests of the gRPC wire's frame reassembly (wire.py): any frame cut into chunks and interleaved with
other frames' chunks comes back bit for bit; any other chunk sequence raises ValueError (or, for a header no
sender makes, ProtocolError), never anything else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flarelite.communication.grpc import flarelite_pb2 as pb
from flarelite.communication.grpc.wire import (
    MAPPED_MIN,
    MAX_BUFFERS,
    Assembly,
    Inbound,
    Skip,
    check_header,
    envelopes_of,
    header_problem,
)
from flarelite.communication.protocol import Frame
from flarelite.errors import ProtocolError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frames(large: bool) -> st.SearchStrategy[Frame]:
    """Frames with small buffers, and with ``large`` some over MAPPED_MIN (filled in place in a mapping)."""
    big = st.binary(min_size=MAPPED_MIN, max_size=MAPPED_MIN + 10) if large else st.nothing()
    return st.builds(
        Frame,
        kind=st.sampled_from(["aux_req", "task", "k"]),
        msg_id=st.text(max_size=8),
        topic=st.text(max_size=8),
        meta=st.binary(max_size=200),
        buffers=st.lists(st.one_of(st.binary(max_size=300), big), max_size=5),
    )


@st.composite
def frames_and_chunk_size(draw: st.DrawFn) -> tuple[list[Frame], int]:
    chunk_size = draw(st.integers(1, 97) | st.integers(4096, MAPPED_MIN + 20))
    return draw(st.lists(frames(chunk_size >= 4096), min_size=1, max_size=4)), chunk_size


def as_tuple(frame: Frame) -> tuple:
    return (frame.kind, frame.msg_id, frame.topic, bytes(frame.meta), [bytes(b) for b in frame.buffers])


@SETTINGS
@given(frames_and_chunk_size(), st.randoms(use_true_random=False))
def test_interleaved_chunked_frames_reassemble_bit_exact(case, rnd):
    sent, chunk_size = case
    streams = {i + 1: list(envelopes_of(f, i + 1, chunk_size)) for i, f in enumerate(sent)}
    pending, done = Inbound(), {}
    while streams:  # pick a frame at random, send its next envelope: every interleaving keeps each frame's order
        sid = rnd.choice(sorted(streams))
        env = streams[sid].pop(0)
        if not streams[sid]:
            del streams[sid]
        if env.WhichOneof("body") == "header":
            check_header(env.header)
            assert header_problem(env.header, 1 << 30) == "" or len(env.header.buffer_sizes) > 64
            assembly = Assembly(env.header)
            if assembly.complete:
                done[sid] = assembly.finish()
            else:
                pending[sid] = assembly
        else:
            assembly = pending[env.chunk.stream]
            assembly.add(env.chunk)
            if assembly.complete:
                done[sid] = assembly.finish()
                del pending[sid]
    assert not pending and (pending.frames, pending.nbytes, pending.nbuffers) == (0, 0, 0)
    assert [as_tuple(done[i + 1]) for i in range(len(sent))] == [as_tuple(f) for f in sent]
    for frame in done.values():
        for buf in frame.buffers:  # what numpy and torch decode view: contiguous and writable
            view = memoryview(buf)
            assert view.contiguous and not view.readonly


chunks = st.builds(pb.Chunk, stream=st.just(1), buffer=st.integers(0, 6), data=st.binary(max_size=40))


@SETTINGS
@given(
    st.lists(st.integers(0, 60), max_size=5),
    st.integers(0, 60),
    st.lists(chunks, max_size=30),
)
def test_any_chunk_sequence_completes_or_raises_value_error(sizes, meta_size, sequence):
    assembly = Assembly(pb.Header(stream=1, kind="k", buffer_sizes=sizes, meta_size=meta_size))
    for chunk in sequence:
        try:
            assembly.add(chunk)
        except ValueError:
            return  # the connection is closed with a ProtocolError here
    if assembly.complete:
        frame = assembly.finish()
        assert [len(b) for b in frame.buffers] == sizes and len(frame.meta) == meta_size
    else:
        with pytest.raises(ValueError):  # a frame cannot take more than it announced
            for _ in range(200):
                assembly.add(pb.Chunk(stream=1, buffer=assembly.index, data=b"x" * 61))


@SETTINGS
@given(
    st.lists(st.integers(0, 1 << 62), max_size=80),
    st.integers(0, 1 << 40),
    st.binary(max_size=100),
    st.integers(1, 1 << 33),
)
def test_header_checks_refuse_or_raise_protocol_error_only(sizes, meta_size, meta, limit):
    header = pb.Header(stream=1, kind="k", buffer_sizes=sizes, meta_size=meta_size, meta=meta)
    try:
        check_header(header)
    except ProtocolError:
        assert meta and meta_size
        return
    problem = header_problem(header, limit)
    if not problem:
        assert len(meta) + meta_size + sum(sizes) <= limit
        assembly = Assembly(header)  # costs what the sizes list takes, whatever they announce
        assert assembly.parts == []


def test_limits_on_what_a_header_may_list():
    with pytest.raises(ProtocolError, match="buffers, over the limit"):
        check_header(pb.Header(kind="k", buffer_sizes=[0] * (MAX_BUFFERS + 1)))
    too_many = pb.Header(kind="k", meta=b"m" * 60, buffer_sizes=[0] * 75)  # 64 free, then one per 6 bytes of meta
    assert "too little to use them" in header_problem(too_many, 1 << 30)
    assert header_problem(pb.Header(kind="k", meta=b"m" * 60, buffer_sizes=[0] * 74), 1 << 30) == ""
    assert "exceeds the limit of 10 bytes" in header_problem(pb.Header(kind="k", meta_size=11), 10)


def test_inbound_counts_and_frees_what_it_holds():
    pending = Inbound()
    a = Assembly(pb.Header(kind="k", buffer_sizes=[100_000, 5]))
    a.add(pb.Chunk(buffer=0, data=b"x" * 10))
    pending[1], pending[2] = a, Skip(7)
    assert (pending.frames, pending.nbytes, pending.nbuffers, pending.skipped) == (1, 100_005, 2, 1)
    assert pending.pop(1) is a and a.parts == []  # freed even though the test still holds the Assembly
    pending[3] = Assembly(pb.Header(kind="k", buffer_sizes=[3]))
    pending.clear()
    assert (pending.frames, pending.nbytes, pending.nbuffers, pending.skipped, len(pending)) == (0, 0, 0, 0, 0)
