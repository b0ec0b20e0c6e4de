"""Property-based fuzzing of the codec and of chunked frame reassembly (bounded example counts, no deadline).

Round trips of random supported values are exact through encode/decode and dumps/loads; mutated, truncated and
random inputs raise DecodeError and nothing else. bench/fuzz.py runs the same kinds of inputs at volume.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.shareable import Shareable
from flarelite.errors import DecodeError
from flarelite.serialization import decode, dumps, encode, loads

try:
    import torch
except ImportError:  # torch is optional: its strategies are left out
    torch = None

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same(a, b, path="v"):
    """Exact equality: same types (dict keys too), NaN equals NaN, -0.0 is not 0.0, arrays by dtype, shape, bytes."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype.str == b.dtype.str and a.shape == b.shape, f"{path}: {a.dtype.str}{a.shape}"
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), f"{path}: values differ"
    elif isinstance(a, np.generic):
        assert a.dtype.str == b.dtype.str and a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], f"{path}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, DXO):
        assert type(a.data_kind) is type(b.data_kind) and a.data_kind == b.data_kind, path
        assert_same(a.data, b.data, f"{path}.data")
        assert_same(a.meta, b.meta, f"{path}.meta")
    elif torch is not None and isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, path
        assert a.contiguous().reshape(-1).view(torch.uint8).tolist() == b.reshape(-1).view(torch.uint8).tolist(), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ----------------------------------------------------------------------------------------------- strategies


numeric_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?"),
    st.sampled_from([np.dtype(np.longdouble), np.dtype(np.clongdouble), np.dtype("M8[ns]"), np.dtype(">m8[s]")]),
)


@st.composite
def ndarrays(draw):
    dtype = draw(numeric_dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # any bit pattern: NaN payloads, -0.0, NaT
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = np.repeat(arr, 2, axis=0)[::2]
    return arr


numpy_scalars = ndarrays().filter(lambda a: a.size > 0).map(lambda a: a.reshape(-1)[0])
big_ints = st.integers(min_value=-(2**300), max_value=2**300)
keys = st.text(max_size=6) | st.integers(min_value=-(2**70), max_value=2**70) | st.booleans()
leaves = (
    st.none()
    | st.booleans()
    | big_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.binary(max_size=24)
    | st.binary(max_size=8).map(bytearray)
    | ndarrays()
    | numpy_scalars
)
if torch is not None:
    TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                    torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]  # fmt: skip

    @st.composite
    def tensors(draw):
        dtype = draw(st.sampled_from(TORCH_DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        n = int(np.prod(shape)) * dtype.itemsize
        raw = bytearray(draw(st.binary(min_size=n, max_size=n)))
        if not n:
            return torch.empty(shape, dtype=dtype)
        t = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)
        return t.t() if t.ndim == 2 and draw(st.booleans()) else t  # non-contiguous too

    leaves = leaves | tensors()


_KIND_VALUES = {k.value for k in DataKind}


def _dxo(kind, data, meta):
    return DXO(kind, data, meta)


values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
        | st.dictionaries(st.text(max_size=6), children, max_size=4).map(Shareable)
        | st.builds(
            _dxo,
            # a kind naming a member comes back as the member (serialization/codec.py; test_codec covers it)
            st.sampled_from(list(DataKind)) | st.text(min_size=1, max_size=8).filter(lambda t: t not in _KIND_VALUES),
            st.dictionaries(st.text(max_size=6), children, max_size=4),
            st.dictionaries(st.text(max_size=6), children, max_size=3),
        )
    ),
    max_leaves=25,
)


# ----------------------------------------------------------------------------------------------- round trips


@FUZZ
@given(values)
def test_random_values_round_trip_exactly(value):
    enc = encode(value)
    assert_same(value, decode(enc.meta, enc.buffers))
    assert_same(value, loads(dumps(value)))
    assert_same(value, loads(bytearray(dumps(value))))  # writable container: arrays view it


@FUZZ
@given(st.lists(ndarrays(), min_size=1, max_size=6))
def test_random_arrays_of_every_numeric_dtype_round_trip_exactly(arrays):
    assert_same(arrays, loads(dumps(arrays)))
    scalars = tuple(a.reshape(-1)[0] for a in arrays if a.size)
    assert_same(scalars, loads(dumps(scalars)))


# ----------------------------------------------------------------------------------------------- hostile input


def only_decode_errors(fn, *args):
    try:
        fn(*args)
    except DecodeError:
        pass


@FUZZ
@given(values, st.data())
def test_mutated_containers_raise_only_decode_error(value, data):
    blob = bytearray(dumps(value))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate", "lengths"]))
        i = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if op == "set" and blob:
            blob[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del blob[i : i + data.draw(st.integers(1, 9))]
        elif op == "truncate":
            del blob[i:]
        elif len(blob) >= 24:  # the header's counts: meta length or buffer count
            at = data.draw(st.sampled_from([8, 16]))
            blob[at : at + 8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    only_decode_errors(loads, bytes(blob))


json_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.sampled_from(list("ltdSXbBanTID") + ["<f4", "|b1", ">c16", "M8[ns]", "U3", "|O8", "float32", "C", "F"])
    | st.text(max_size=5),
    lambda c: (
        st.lists(c, max_size=6)
        | st.tuples(st.sampled_from(list("ltdSXbBanTID")), st.lists(c, max_size=5)).map(lambda t: [t[0], *t[1]])
        | st.dictionaries(st.text(max_size=3), c, max_size=3)
    ),
    max_leaves=30,
)


@FUZZ
@given(json_trees, st.lists(st.binary(max_size=40) | st.binary(max_size=4).map(bytearray), max_size=4))
def test_random_meta_raises_only_decode_error(root, buffers):
    only_decode_errors(decode, json.dumps([1, root]).encode(), buffers)


@FUZZ
@given(values, st.data())
def test_mutated_meta_and_buffers_raise_only_decode_error(value, data):
    enc = encode(value)
    meta = bytearray(enc.meta)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(meta) - 1))
        meta[i : i + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=3))
    buffers = [bytes(b) for b in enc.buffers]
    if buffers and data.draw(st.booleans()):
        j = data.draw(st.integers(0, len(buffers) - 1))
        buffers[j] = data.draw(st.binary(max_size=64))
    if data.draw(st.booleans()):
        buffers = data.draw(st.permutations(buffers)) + data.draw(st.lists(st.binary(max_size=8), max_size=2))
    only_decode_errors(decode, bytes(meta), buffers)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(blob):
    only_decode_errors(loads, blob)
    only_decode_errors(loads, b"FLRC\x01\x00\x00\x00" + blob)
    only_decode_errors(decode, blob, [])
    only_decode_errors(decode, b"[1," + blob + b"]", [blob])


# ----------------------------------------------------------------------------------------------- frame reassembly


def _wire():
    from flarelite.communication.grpc import flarelite_pb2 as pb
    from flarelite.communication.grpc import wire

    return pb, wire


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=5),
    st.binary(max_size=200),
    st.integers(1, 64),
    st.data(),
)
def test_frame_reassembly_restores_every_buffer(buffers, meta, chunk_size, data):
    pb, wire = _wire()
    from flarelite.communication.protocol import Frame

    frame = Frame(kind="aux_req", sender="site-1", target="site-2", msg_id="m", meta=meta, buffers=buffers)
    envelopes = list(wire.envelopes_of(frame, 7, chunk_size))
    assembly = wire.Assembly(envelopes[0].header)
    for env in envelopes[1:]:
        assert not assembly.complete
        assembly.add(env.chunk)
    assert assembly.complete
    got = assembly.finish()
    assert (got.kind, got.sender, got.msg_id, bytes(got.meta)) == ("aux_req", "site-1", "m", meta)
    assert [bytes(b) for b in got.buffers] == buffers


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 200), max_size=5),
    st.integers(0, 300),
    st.lists(st.tuples(st.integers(-1, 6), st.integers(0, 120)), max_size=30),
)
def test_frame_reassembly_of_random_chunks_fails_only_with_value_error(sizes, meta_size, chunks):
    pb, wire = _wire()
    header = pb.Header(kind="aux_req", buffer_sizes=sizes, meta_size=meta_size)
    assembly = wire.Assembly(header)
    announced = sizes + ([meta_size] if meta_size else [])
    received = [0] * len(announced)
    for index, n in chunks:
        try:
            assembly.add(pb.Chunk(stream=1, buffer=max(index, 0), data=bytes([index % 256]) * n))
        except ValueError:
            continue
        received[max(index, 0)] += n  # accepted: in order and within its buffer
        assert received[max(index, 0)] <= announced[max(index, 0)]
    if assembly.complete:
        assert received == announced
        got = assembly.finish()
        assert [len(b) for b in got.buffers] == sizes and len(got.meta) == meta_size
    else:
        assert received != announced


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@settings(max_examples=100, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=4) if torch is not None else st.nothing())
def test_random_tensors_of_every_dtype_round_trip_exactly(tensors_):
    assert_same(tensors_, loads(dumps(tensors_)))
    assert_same(tensors_, loads(bytearray(dumps(tensors_))))
