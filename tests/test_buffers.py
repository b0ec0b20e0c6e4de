"""The receive-buffer pool (flarelite/buffers.py): a large buffer is reused for the next one of its size only when
no object can see its memory any more (numpy views, memoryview slices, tensors, decoded frames), the idle ones
are bounded in bytes and in time, and frames received into reused buffers never change one another."""

from __future__ import annotations

import gc
import mmap
import time

import numpy as np
import pytest

from flarelite.buffers import POOL, POOL_MIN, BufferPool, lazy_buffer
from flarelite.communication.grpc.wire import Assembly, envelopes_of
from flarelite.communication.protocol import Frame

SIZE = POOL_MIN + 4096


def address(buf) -> int:
    return np.frombuffer(buf, np.uint8).ctypes.data


def test_a_released_buffer_is_reused_for_the_same_size_only():
    pool = BufferPool(max_idle_bytes=8 * SIZE, idle_seconds=60)
    first = pool.take(SIZE)
    where = address(first)
    first[:] = 7
    del first
    gc.collect()
    other = pool.take(SIZE + 1)  # another size: a new mapping
    assert address(other) != where and pool.reused == 0
    again = pool.take(SIZE)
    assert address(again) == where and pool.reused == 1
    assert again.flags.writeable and again.nbytes == SIZE
    assert pool.idle_bytes == 0


@pytest.mark.parametrize(
    "keep",
    [
        lambda owner: owner[100:].view(np.float32),  # a numpy view
        lambda owner: memoryview(owner)[5:],  # a slice of a memoryview (its own managed buffer)
        lambda owner: np.frombuffer(memoryview(owner)[8:], dtype="<f8"),  # what the codec decodes
        lambda owner: memoryview(owner).cast("B")[1:2],
    ],
    ids=["numpy-view", "memoryview-slice", "decoded-array", "cast-slice"],
)
def test_a_buffer_is_not_reused_while_anything_views_it(keep):
    pool = BufferPool(max_idle_bytes=8 * SIZE, idle_seconds=60)
    owner = pool.take(SIZE)
    where = address(owner)
    view = keep(owner)
    del owner
    gc.collect()
    second = pool.take(SIZE)
    assert address(second) != where and pool.reused == 0
    del view, second
    gc.collect()
    pool.take(SIZE)
    assert pool.reused == 1  # both are back: one of them is handed out again


def test_a_tensor_made_from_a_buffer_keeps_it():
    torch = pytest.importorskip("torch")
    pool = BufferPool(max_idle_bytes=8 * SIZE, idle_seconds=60)
    owner = pool.take(SIZE)
    where = address(owner)
    tensor = torch.frombuffer(memoryview(owner)[: SIZE // 4 * 4], dtype=torch.float32)
    from_numpy = torch.from_numpy(owner[:64])
    del owner
    gc.collect()
    assert address(pool.take(SIZE)) != where
    del tensor
    gc.collect()
    assert address(pool.take(SIZE)) != where  # from_numpy still holds it
    del from_numpy
    gc.collect()
    assert address(pool.take(SIZE)) == where


def test_idle_buffers_are_capped_in_bytes_and_unmapped_after_idle_seconds():
    pool = BufferPool(max_idle_bytes=SIZE, idle_seconds=0.2)
    taken = [pool.take(SIZE) for _ in range(3)]
    del taken
    gc.collect()
    assert pool.idle_bytes == SIZE  # one kept, two unmapped
    deadline = time.monotonic() + 10
    while pool.idle_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.idle_bytes == 0  # the trimmer unmapped it without another take
    deadline = time.monotonic() + 10
    while pool._trimmer is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool._trimmer is None  # and stopped: nothing out, nothing idle


def test_the_byte_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLARELITE_BUFFER_POOL_BYTES", "12345")
    assert BufferPool().max_idle_bytes == 12345
    monkeypatch.setenv("FLARELITE_BUFFER_POOL_BYTES", "lots")
    with pytest.raises(ValueError, match="FLARELITE_BUFFER_POOL_BYTES='lots'"):
        BufferPool()


def test_lazy_buffer_uses_the_pool_from_pool_min():
    assert isinstance(lazy_buffer(100, 1 << 20), bytearray)
    assert isinstance(lazy_buffer(POOL_MIN - 1, 1 << 20), mmap.mmap)  # mapped, not pooled
    before = POOL.made + POOL.reused
    buf = lazy_buffer(POOL_MIN, 1 << 20)
    assert isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.nbytes == POOL_MIN
    assert POOL.made + POOL.reused == before + 1


def test_frames_received_into_reused_buffers_keep_their_own_bytes():
    """Frame after frame of one size (a model every round): what was kept of an earlier one never changes."""
    kept = []
    for i in range(4):
        sent = Frame(kind="task", msg_id=str(i), topic="t", meta=b"m", buffers=[bytes([i]) * SIZE])
        envelopes = list(envelopes_of(sent, 1, 1 << 20))
        assembly = Assembly(envelopes[0].header)
        for env in envelopes[1:]:
            assembly.add(env.chunk)
        frame = assembly.finish()
        if i % 2 == 0:
            kept.append((i, np.frombuffer(frame.buffers[0], np.uint8)))  # a decoded view is kept
        del frame, assembly
        gc.collect()
    for i, view in kept:
        assert view.min() == i and view.max() == i


def test_a_forgotten_buffer_is_unmapped_not_kept():
    """A frame dropped before it was complete (a peer's Cancel, a broken stream): its memory is freed at once."""
    pool = BufferPool(max_idle_bytes=8 * SIZE, idle_seconds=60)
    owner = pool.take(SIZE)
    owner[:4096] = 1
    pool.forget(owner)
    pool.forget(np.zeros(4))  # not one of the pool's: ignored
    del owner
    gc.collect()
    assert pool.idle_bytes == 0 and pool._out == 0 and pool._finalizers == {}


def test_an_assembly_discarded_midway_does_not_pool_its_buffer():
    sent = Frame(kind="task", msg_id="1", topic="t", meta=b"m", buffers=[bytes(SIZE)])
    envelopes = list(envelopes_of(sent, 1, 1 << 20))
    assembly = Assembly(envelopes[0].header)
    assembly.add(envelopes[1].chunk)
    before = POOL.idle_bytes
    assembly.discard()
    gc.collect()
    assert POOL.idle_bytes == before
