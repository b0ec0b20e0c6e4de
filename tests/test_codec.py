"""Tests of the safe codec (flarelite.serialization): round trips, zero copy, errors, hostile input."""

from __future__ import annotations

import collections
import enum
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flarelite.serialization as ser
from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.dxo import from_bytes as dxo_from_bytes
from flarelite.apis.shareable import ReservedHeaderKey, Shareable
from flarelite.errors import CodecError, DecodeError, UnsupportedTypeError
from flarelite.serialization import (
    Decomposer,
    Encoded,
    decode,
    dumps,
    encode,
    loads,
    register_decomposer,
    unregister_decomposer,
)

SERIALIZATION_DIR = pathlib.Path(ser.__file__).parent


# ----------------------------------------------------------------------------------------------- helpers


def roundtrip(value, **kwargs):
    """Decode(encode(value)) and loads(dumps(value)) must agree; return the former."""
    enc = encode(value)
    out = decode(enc.meta, enc.buffers, **kwargs)
    assert_same(loads(dumps(value), **kwargs), out)
    return out


def assert_same(a, b, path="v"):
    """Strict equality: types must match exactly, NaN equals NaN, arrays compare dtype, shape and values."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.dtype.str == b.dtype.str, f"{path}: {a.dtype.str} != {b.dtype.str}"
        assert a.shape == b.shape, f"{path}: {a.shape} != {b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), f"{path}: values differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype, f"{path}: {a.dtype} != {b.dtype}"
        assert a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert type(k) is type(next(kk for kk in b if kk == k)), f"{path}: key type of {k!r}"
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, DXO):
        assert type(a.data_kind) is type(b.data_kind) and a.data_kind == b.data_kind, path
        assert_same(a.data, b.data, f"{path}.data")
        assert_same(a.meta, b.meta, f"{path}.meta")
    elif "torch" in sys.modules and isinstance(a, sys.modules["torch"].Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, path
        assert sys.modules["torch"].equal(a, b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def meta_of(root) -> bytes:
    return json.dumps([1, root]).encode()


# ----------------------------------------------------------------------------------------------- plain values


PLAIN_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**62,
    2**63 - 1,
    -(2**63) + 1,
    2**63,
    -(2**63),
    2**64 + 12345,
    -(10**5000),  # beyond int<->str digit limit: must still round-trip
    1.5,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    5e-324,
    "",
    "hello",
    "héllo wörld ✓ 😀",
    "\ud800 lone surrogate",
    "\x00 nul",
    b"",
    b"\x00\xffbytes",
    bytearray(b"mutable"),
    bytearray(),
    [],
    (),
    {},
    [1, "a", None, [2.5, (3, b"x")]],
    (1, [2, (3,)], {"k": (4,)}),
    {"a": {"b": {"c": [1, 2, {"d": None}]}}},
]


@pytest.mark.parametrize(
    "value",
    PLAIN_VALUES,
    ids=lambda v: f"{type(v).__name__}:{repr(v)[:20] if not isinstance(v, int) or abs(v) < 2**64 else 'huge'}",
)
def test_plain_values_round_trip(value):
    assert_same(value, roundtrip(value))


def test_dict_key_types_are_preserved():
    value = {1: "int", "1": "str", -7: "neg", 2**70: "big", "x": {0: [1], "0": [2]}}
    assert_same(value, roundtrip(value))
    bool_keys = {True: "t", False: "f", "True": "s"}
    assert_same(bool_keys, roundtrip(bool_keys))


def test_bytes_decode_without_copy_when_given_bytes():
    data = b"x" * 1000
    enc = encode(data)
    assert enc.buffers[0].obj is data
    assert decode(enc.meta, [data]) is data


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=64)
)
keys = st.text(max_size=8) | st.integers(min_value=-(2**80), max_value=2**80)
nested = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
        | st.binary(max_size=16).map(bytearray)
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested)
def test_nested_structures_round_trip(value):
    assert_same(value, roundtrip(value))


class Color(enum.IntEnum):
    RED = 1


class Mode(str, enum.Enum):
    FAST = "fast"


Pair = collections.namedtuple("Pair", "a b")


def test_subclasses_travel_as_their_plain_base_value():
    value = {
        "kind": DataKind.WEIGHTS,
        "color": Color.RED,
        "mode": Mode.FAST,
        Mode.FAST: 1,
        Color.RED: 2,
        "od": collections.OrderedDict([("b", 1), ("a", 2)]),
        "pair": Pair(1, 2),
    }
    out = roundtrip(value)
    assert type(out["kind"]) is str and out["kind"] == "WEIGHTS"
    assert type(out["color"]) is int and out["color"] == 1
    assert type(out["mode"]) is str and out["mode"] == "fast"
    assert {type(k) for k in out} == {str, int} and out["fast"] == 1 and out[1] == 2
    assert type(out["od"]) is dict and list(out["od"].items()) == [("b", 1), ("a", 2)]
    assert type(out["pair"]) is tuple and out["pair"] == (1, 2)


# ----------------------------------------------------------------------------------------------- numpy


DTYPES = [
    "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16",
    ">i2", ">i4", ">i8", ">u4", ">f4", ">f8", ">c16", "<f8",
    np.longdouble, np.clongdouble,
    "M8[ns]", "M8[D]", "m8[s]", ">M8[us]", "S5", "U3",
]  # fmt: skip
SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 4)]


def _sample(dtype, shape):
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "b":
        flat = np.arange(n) % 3 == 0
    elif dt.kind in "mM":
        flat = np.arange(n).astype(dt.newbyteorder("=")).astype(dt)
    elif dt.kind == "S":
        flat = np.array([b"ab%d" % i for i in range(n)], dtype=dt)
    elif dt.kind == "U":
        flat = np.array([f"é{i}" for i in range(n)], dtype=dt)
    elif dt.kind == "c":
        flat = (np.arange(n) - 2.5 + 1j * np.arange(n)).astype(dt)
    elif dt.kind == "f":
        flat = (np.arange(n) - 2.5).astype(dt)
        if n > 2:
            flat[1], flat[2] = np.nan, -np.inf
    else:
        flat = (np.arange(n) * 37 % 251).astype(dt)
    return flat.reshape(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).str)
def test_numpy_arrays_round_trip(dtype, shape):
    arr = _sample(dtype, shape)
    out = roundtrip(arr)
    assert_same(arr, out)
    assert out.dtype.str == np.dtype(dtype).str  # byte order kept


def test_fortran_order_array_round_trips_in_fortran_order():
    arr = np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4))
    enc = encode(arr)
    assert np.shares_memory(np.frombuffer(enc.buffers[0], dtype=np.uint8), arr)  # no copy
    out = roundtrip(arr)
    assert_same(arr, out)
    assert out.flags.f_contiguous


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a[::2],
        lambda a: a[:, 1:3],
        lambda a: a.T[::-1],
        lambda a: a[..., ::3],
        lambda a: np.broadcast_to(a[:1], a.shape),
    ],
    ids=["step", "columns", "reversed-T", "stride3", "broadcast"],
)
def test_non_contiguous_arrays_round_trip_with_one_copy(make):
    arr = make(np.arange(60, dtype=">i4").reshape(6, 10))
    enc = encode(arr)
    assert len(enc.buffers) == 1 and enc.nbytes == arr.size * arr.itemsize
    assert_same(arr, roundtrip(arr))


def test_encode_does_not_copy_a_contiguous_array():
    arr = np.arange(1000, dtype=np.float32)
    enc = encode({"w": arr, "x": [arr[:10]]})
    assert isinstance(enc, Encoded) and isinstance(enc.meta, bytes)
    assert all(isinstance(b, memoryview) for b in enc.buffers)
    assert len(enc.buffers) == 2 and enc.nbytes == 4000 + 40
    view = np.frombuffer(enc.buffers[0], dtype=np.uint8)
    assert view.ctypes.data == arr.ctypes.data and np.shares_memory(view, arr)


def test_decode_from_writable_buffer_shares_its_memory():
    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    enc = encode({"a": arr})
    buf = bytearray(enc.buffers[0])
    out = decode(enc.meta, [buf])["a"]
    assert np.shares_memory(out, np.frombuffer(buf, dtype=np.uint8))
    assert out.flags.writeable
    out[0, 0] = 99
    assert np.frombuffer(buf, dtype=np.int64)[0] == 99


def test_decode_from_read_only_bytes_gives_read_only_array():
    enc = encode(np.arange(4.0))
    out = decode(enc.meta, [bytes(enc.buffers[0])])
    assert not out.flags.writeable and out.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_loads_aligns_arrays_to_64_bytes_within_the_container():
    value = {"a": b"xyz", "b": np.arange(3, dtype=np.int8), "c": np.arange(5.0), "d": np.ones((3, 3), np.complex128)}
    data = bytearray(dumps(value))
    out = loads(data)
    base = np.frombuffer(data, dtype=np.uint8).ctypes.data
    for key in "bcd":
        assert (out[key].ctypes.data - base) % 64 == 0
        assert np.shares_memory(out[key], np.frombuffer(data, dtype=np.uint8))
    assert_same(value, out)


NP_SCALARS = [
    np.bool_(True),
    np.int8(-3),
    np.int16(300),
    np.int32(-(2**31)),
    np.int64(2**62),
    np.uint8(255),
    np.uint16(65535),
    np.uint32(2**32 - 1),
    np.uint64(2**64 - 1),
    np.float16(0.5),
    np.float32(1.5),
    np.float64(-2.25),
    np.float64("nan"),
    np.longdouble("1.000000000000000000001"),
    np.complex64(1 + 2j),
    np.complex128(-1.5 - 0.25j),
    np.clongdouble(3 - 4j),
    np.datetime64("2024-02-29T12:34:56", "s"),
    np.timedelta64(5, "ms"),
    np.str_("héllo"),
    np.bytes_(b"b\x00y"),
]


@pytest.mark.parametrize("value", NP_SCALARS, ids=lambda v: f"{type(v).__name__}")
def test_numpy_scalars_round_trip_with_their_type(value):
    out = roundtrip(value)
    assert type(out) is type(value)
    assert_same(value, out)


# ----------------------------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


TORCH_DTYPES = ["float32", "bfloat16", "float16", "float64", "int64", "int32", "int8", "uint8", "bool", "complex64"]


@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_tensors_round_trip(torch, dtype, shape):
    t = (torch.arange(int(np.prod(shape)), dtype=torch.float64) - 3).reshape(shape).to(getattr(torch, dtype))
    out = roundtrip({"t": t})["t"]
    assert isinstance(out, torch.Tensor) and out.dtype == t.dtype and out.shape == t.shape
    assert torch.equal(out, t) and out.device.type == "cpu"


def test_torch_non_contiguous_grad_and_conj_tensors(torch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    p = torch.nn.Parameter(torch.randn(3, 3))
    g = torch.randn(4, requires_grad=True) * 2
    c = torch.randn(3, dtype=torch.complex64).conj()
    value = {"t": base.t(), "s": base[:, ::2], "p": p, "g": g, "c": c}
    out = roundtrip(value)
    for k, v in value.items():
        assert type(out[k]) is torch.Tensor and not out[k].requires_grad
        assert torch.equal(out[k], v.detach().resolve_conj()), k


def test_torch_tensor_decoded_from_bytearray_is_zero_copy(torch):
    t = torch.arange(16, dtype=torch.int32)
    enc = encode(t)
    buf = bytearray(enc.buffers[0])
    out = decode(enc.meta, [buf])
    assert out.data_ptr() == np.frombuffer(buf, dtype=np.uint8).ctypes.data
    assert torch.equal(out, t)


def test_torch_tensor_from_read_only_bytes_is_a_private_copy(torch):
    data = dumps(torch.zeros(4))
    out = loads(data)
    out += 1  # must not write into the immutable bytes object
    assert loads(data).sum().item() == 0.0


def test_torch_device_argument(torch):
    out = decode(*encode({"t": torch.ones(2)}), device="cpu")
    assert out["t"].device.type == "cpu"


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch deprecates quantized tensors
@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda torch: torch.eye(3).to_sparse(), "to_dense"),
        (lambda torch: torch.empty(3, device="meta"), "meta tensors"),
        (lambda torch: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8), "dequantize"),
    ],
    ids=["sparse", "meta", "quantized"],
)
def test_unsupported_tensors_are_rejected_with_reason(torch, make, reason):
    with pytest.raises(UnsupportedTypeError, match=reason) as info:
        encode({"x": [make(torch)]})
    assert "payload['x'][0]" in str(info.value) and "torch.Tensor" in str(info.value)


# ----------------------------------------------------------------------------------------------- Shareable / DXO


def test_shareable_round_trips_with_headers_cookies_and_nested_dxo():
    s = DXO(DataKind.WEIGHTS, {"w": np.ones(3, np.float32), "n": 5}, meta={"NUM_STEPS": 10}).to_shareable()
    s.set_return_code("OK")
    s.set_header(ReservedHeaderKey.TOPIC, "consensus")
    s.add_cookie("round", 3)
    s.set_peer_props({"__identity_name__": "site-1", "__job_id__": "job-1"})
    s["extra"] = DXO(DataKind.METRICS, {"acc": 0.9})
    out = roundtrip(s)
    assert type(out) is Shareable
    assert_same(s, out)
    assert out.get_cookie("round") == 3
    assert out.get_peer_prop("__identity_name__", None) == "site-1"
    assert out.get_header(ReservedHeaderKey.TOPIC) == "consensus"
    assert out["extra"].data_kind is DataKind.METRICS


def test_dxo_round_trips_with_data_kind_member():
    d = DXO(DataKind.COLLECTION, {"a": DXO(DataKind.WEIGHT_DIFF, {"x": [1.0]}), "s": Shareable({"k": 1})})
    out = roundtrip(d)
    assert type(out) is DXO and out.data_kind is DataKind.COLLECTION
    assert out.data["a"].data_kind is DataKind.WEIGHT_DIFF
    assert type(out.data["s"]) is Shareable and out.data["s"]["k"] == 1
    custom = roundtrip(DXO("my_kind", {"v": 1}))
    assert type(custom.data_kind) is str and custom.data_kind == "my_kind"
    app = roundtrip(DXO(DataKind.APP_DEFINED, [1, 2, 3]))
    assert app.data_kind is DataKind.APP_DEFINED and app.data == [1, 2, 3]


def test_shareable_and_dxo_to_bytes_use_the_codec():
    s = DXO(DataKind.WEIGHTS, {"message": "Hello from site-1"}).to_shareable()
    assert_same(s, Shareable.from_bytes(s.to_bytes()))
    d = DXO(DataKind.METRICS, {"loss": np.float32(0.25)})
    assert_same(d, dxo_from_bytes(d.to_bytes()))
    with pytest.raises(ValueError, match="not Shareable"):
        Shareable.from_bytes(dumps([1]))


# ----------------------------------------------------------------------------------------------- encode errors


class Foo:
    pass


def test_unsupported_type_message_names_type_and_key_path():
    s = DXO(DataKind.WEIGHTS, {"model": [1, 2, Foo()]}).to_shareable()
    with pytest.raises(UnsupportedTypeError) as info:
        encode(s)
    msg = str(info.value)
    assert f"{Foo.__module__}.Foo" in msg
    assert "payload['DXO']['data']['model'][2]" in msg
    assert "register_decomposer" in msg and "numpy arrays" in msg
    assert isinstance(info.value, TypeError) and isinstance(info.value, CodecError)


def test_unsupported_type_path_through_dxo_object_and_tuple():
    value = Shareable({"peers": ({"d": DXO(DataKind.METRICS, {"acc": {1, 2}})},)})
    with pytest.raises(UnsupportedTypeError, match=r"builtins\.set at payload\['peers'\]\[0\]\['d'\]\.data\['acc'\]"):
        encode(value)


@pytest.mark.parametrize(
    "value, type_name",
    [
        ({1, 2}, "builtins.set"),
        (frozenset(), "builtins.frozenset"),
        (1 + 2j, "builtins.complex"),
        (lambda: 1, "builtins.function"),
        (len, "builtins.builtin_function_or_method"),
        (object(), "builtins.object"),
        (Foo, "builtins.type"),
        (range(3), "builtins.range"),
        (np.array([1, "a"], dtype=object), "numpy.ndarray"),
        (np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]), "numpy.ndarray"),
        (np.zeros(2, dtype="V8"), "numpy.ndarray"),
        (np.ma.masked_array([1, 2], mask=[0, 1]), "numpy.ma.MaskedArray"),
        (np.zeros(1, dtype=[("a", "i4")])[0], "numpy.void"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_values_are_rejected_at_encode(value, type_name):
    with pytest.raises(UnsupportedTypeError, match=type_name.replace(".", r"\.")) as info:
        encode({"k": [value]})
    assert "payload['k'][0]" in str(info.value)


@pytest.mark.parametrize("key", [(1, 2), 1.5, None, b"k"], ids=repr)
def test_unsupported_dict_keys_are_rejected(key):
    with pytest.raises(UnsupportedTypeError, match=r"dict key .* at payload\['outer'\]: dict keys must be str or int"):
        encode({"outer": {key: 1}})


def test_self_referencing_structures_are_rejected_clearly():
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(CodecError, match=r"payload\['a'\]: it contains itself \(at payload\['a'\]\[1\]\)"):
        encode({"a": loop})
    d: dict = {}
    d["self"] = {"inner": d}
    with pytest.raises(CodecError, match=r"at payload: it contains itself \(at payload\['self'\]\['inner'\]\)"):
        encode(d)


def test_too_deep_nesting_is_rejected_at_encode():
    value: list = []
    for _ in range(300):
        value = [value]
    with pytest.raises(CodecError, match="deeper than 256"):
        encode(value)
    ok: list = []
    for _ in range(255):
        ok = [ok]
    assert_same(ok, roundtrip(ok))


def test_invalid_dxo_is_rejected_at_encode():
    d = DXO(DataKind.WEIGHTS, {})
    d.data = [1]
    with pytest.raises(CodecError, match=r"DXO at payload\['x'\]: data must be a dict"):
        encode({"x": d})


# ----------------------------------------------------------------------------------------------- decomposers


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and all(np.array_equal(a, b) for a, b in ((self.x, other.x), (self.y, other.y)))


class PointDecomposer(Decomposer):
    def supported_type(self):
        return Point

    def decompose(self, obj):
        return {"x": obj.x, "y": obj.y}

    def recompose(self, data):
        return Point(data["x"], data["y"])


@pytest.fixture
def point_decomposer():
    register_decomposer(PointDecomposer())
    yield
    unregister_decomposer(Point)


def test_decomposer_round_trip(point_decomposer):
    value = DXO(DataKind.APP_DEFINED, {"pts": [Point(1, np.arange(3)), Point("a", Point(2, 3))]}).to_shareable()
    out = roundtrip(value)
    pts = out["DXO"]["data"]["pts"]
    assert pts[0].x == 1 and np.array_equal(pts[0].y, np.arange(3))
    assert pts[1] == Point("a", Point(2, 3))


def test_unregistered_type_on_decode_raises_decode_error(point_decomposer):
    enc = encode({"p": Point(1, 2)})
    unregister_decomposer(Point)
    with pytest.raises(DecodeError, match=rf"{Point.__module__}\.Point.*register_decomposer") as info:
        decode(*enc)
    assert "payload['p']" in str(info.value)
    with pytest.raises(UnsupportedTypeError, match="Point"):
        encode(Point(1, 2))


def test_decomposer_registration_rules(point_decomposer):
    class Other(PointDecomposer):
        def decompose(self, obj):
            return [obj.x, obj.y]

        def recompose(self, data):
            return Point(*data)

    register_decomposer(Other())  # replaces the first one
    assert roundtrip(Point(1, 2)) == Point(1, 2)
    assert b'"l",1,2' in encode(Point(1, 2)).meta

    class DictDecomposer(PointDecomposer):
        def supported_type(self):
            return dict

    with pytest.raises(ValueError, match="natively"):
        register_decomposer(DictDecomposer())
    with pytest.raises(TypeError):
        register_decomposer(Point)  # type: ignore[arg-type]
    assert unregister_decomposer(f"{Point.__module__}.Point") is not None
    assert unregister_decomposer(Point) is None


def test_failing_decomposers_raise_codec_errors(point_decomposer):
    class Broken(PointDecomposer):
        def decompose(self, obj):
            raise RuntimeError("boom")

        def recompose(self, data):
            raise KeyError("gone")

    enc = encode(Point(1, 2))
    register_decomposer(Broken())
    with pytest.raises(CodecError, match="decomposer failed.*boom"):
        encode([Point(1, 2)])
    with pytest.raises(DecodeError, match="failed to recompose"):
        decode(*enc)


# ----------------------------------------------------------------------------------------------- hostile input


def _arr(index=0, dtype="<f4", shape=(2,), order="C"):
    return ["a", index, dtype, list(shape) if isinstance(shape, tuple) else shape, order]


HOSTILE = [
    (b"", [], "JSON"),
    (b"\xff\xfe\x00garbage", [], "UTF-8"),
    (b"not json", [], "JSON"),
    (b"[1, ", [], "JSON"),
    (b"{}", [], "format version"),
    (b"[2, 1]", [], "format version"),
    (b"[true, 1]", [], "format version"),
    (b"[1, 1, 2]", [], "format version"),
    (meta_of({"__class__": "os.system"}), [], "unexpected JSON dict"),
    (meta_of(["zz", 1]), [], "unknown tag"),
    (meta_of([]), [], "unknown tag"),
    (meta_of([["l"], 1]), [], "unknown tag"),
    (meta_of(["pickle", "cos\nsystem\n"]), [], "unknown tag"),
    (meta_of(_arr(dtype="|O8")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype="O")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype="|V8")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype="[('a','O')]")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype="f4,i4")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype="(2,)f4")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype="<f8[ns]")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype="<M8[bogus]")), [bytes(16)], "dtype"),
    (meta_of(_arr(dtype=["<f4"])), [bytes(8)], "dtype"),
    (meta_of(_arr(dtype="S0")), [b""], "dtype"),
    (meta_of(_arr(index=1)), [bytes(8)], "buffer index"),
    (meta_of(_arr(index=5)), [bytes(8)], "buffer index"),
    (meta_of(_arr(index=-1)), [bytes(8)], "buffer index"),
    (meta_of(_arr(index="0")), [bytes(8)], "buffer index"),
    (meta_of(["l", _arr(0), _arr(0)]), [bytes(8)], "buffer index"),
    (meta_of(_arr()), [], "out of range"),
    (meta_of(_arr()), [bytes(8), bytes(8)], "2 buffers were given"),
    (meta_of(_arr()), [bytes(7)], "buffer holds 7 bytes"),
    (meta_of(_arr()), [bytes(9)], "buffer holds 9 bytes"),
    (meta_of(_arr(shape=(-1,))), [bytes(8)], "non-negative"),
    (meta_of(_arr(shape=(2.0,))), [bytes(8)], "non-negative"),
    (meta_of(_arr(shape=(True, 2))), [bytes(8)], "non-negative"),
    (meta_of(_arr(shape=5)), [bytes(8)], "shape"),
    (meta_of(_arr(shape=[1] * 65)), [bytes(4)], "shape"),
    (meta_of(_arr(shape=(2**40, 2**40))), [bytes(8)], "buffer holds"),
    (meta_of(_arr(shape=(0, 2**62, 2**62))), [b""], "cannot be built"),
    (meta_of(_arr(order="K")), [bytes(8)], "order"),
    (meta_of(["a", 0, "<f4", [2]]), [bytes(8)], "fields"),
    (meta_of(["b", 0, 1]), [b"x"], "fields"),
    (meta_of(["b", 0]), [object()], "bytes-like"),
    (meta_of(["n", "|O8", "00" * 8]), [], "dtype"),
    (meta_of(["n", "<f4", "zz"]), [], "hex"),
    (meta_of(["n", "<f4", "0000"]), [], "needs 4 bytes"),
    (meta_of(["I", "0xZZ"]), [], "hex"),
    (meta_of(["I", 5]), [], "hex"),
    (meta_of(["d", "a"]), [], "pairs"),
    (meta_of(["d", "a", 1, "a", 2]), [], "duplicate"),
    (meta_of(["d", 1.5, 1]), [], "key"),
    (meta_of(["d", ["t", 1], 1]), [], "key"),
    (meta_of(["d", None, 1]), [], "key"),
    (meta_of(["X", "WEIGHTS", ["l", 1], ["d"]]), [], "invalid DXO"),
    (meta_of(["X", "WEIGHTS", ["d"], ["l"]]), [], "invalid DXO"),
    (meta_of(["X", 5, ["d"], ["d"]]), [], "kind"),
    (meta_of(["X", "WEIGHTS", ["d"]]), [], "fields"),
    (meta_of(["D", "os.system", "ls"]), [], "os.system, which has no registered decomposer"),
    (meta_of(["D", "builtins.eval", "1+1"]), [], "no registered decomposer"),
    (meta_of(["D", ["x"], 1]), [], "name"),
    (meta_of(["T", 0, "float32); import os", [1]]), [bytes(4)], "torch dtype"),
    (meta_of(["T", 0, "qint8", [1]]), [bytes(1)], "torch dtype"),
    (meta_of(["T", 0, "float32", [3]]), [bytes(4)], "buffer holds"),
]


@pytest.mark.parametrize("meta, buffers, match", HOSTILE, ids=lambda v: repr(v)[:50] if isinstance(v, bytes) else "")
def test_hostile_input_raises_decode_error(meta, buffers, match):
    with pytest.raises(DecodeError, match=match):
        decode(meta, buffers)


def test_hostile_error_names_the_key_path():
    meta = meta_of(["S", "DXO", ["X", "WEIGHTS", ["d", "w", ["l", 1, _arr(shape=(-3,))]], ["d"]]])
    with pytest.raises(DecodeError, match=r"non-negative.*payload\['DXO'\]\.data\['w'\]\[1\]"):
        decode(meta, [bytes(8)])


def test_absurdly_deep_nesting_is_rejected():
    for depth in (300, 5000, 200_000):
        meta = b"[1," + b'["l",' * depth + b"1" + b"]" * depth + b"]"
        with pytest.raises(DecodeError, match="deep"):
            decode(meta, [])
    deep_dict = b"[1," + b'["d","k",' * 300 + b"1" + b"]" * 300 + b"]"
    with pytest.raises(DecodeError, match="deep"):
        decode(deep_dict, [])


def test_non_contiguous_buffer_is_rejected():
    strided = memoryview(bytes(16))[::2]
    with pytest.raises(DecodeError, match="contiguous"):
        decode(meta_of(_arr()), [strided])


def test_decode_accepts_any_bytes_like_buffer_format():
    arr = np.arange(6, dtype=np.int16)
    enc = encode(arr)
    as_i16 = memoryview(np.frombuffer(enc.buffers[0], dtype=np.int16).copy())
    assert_same(arr, decode(enc.meta, [as_i16]))
    assert_same(arr, decode(bytes(enc.meta).decode(), [enc.buffers[0]]))


def _sample_container() -> bytes:
    return dumps(
        DXO(
            DataKind.WEIGHTS, {"w": np.arange(10, dtype=np.float32), "b": b"raw", "s": "text", "n": [1, 2]}
        ).to_shareable()
    )


def test_truncated_or_garbled_container_raises_decode_error():
    data = _sample_container()
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            loads(data[:n])
    with pytest.raises(DecodeError, match="trailing"):
        loads(data + b"\x00")
    with pytest.raises(DecodeError, match="magic"):
        loads(b"PK\x03\x04" + data[4:])
    with pytest.raises(DecodeError, match="version"):
        loads(data[:4] + b"\x09\x00" + data[6:])
    huge_count = bytearray(data)
    huge_count[16:24] = (2**60).to_bytes(8, "little")
    with pytest.raises(DecodeError, match="truncated"):
        loads(bytes(huge_count))
    with pytest.raises(DecodeError):
        loads("a str is not bytes")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_corruption_never_escapes_as_another_exception(data):
    blob = bytearray(_sample_container())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        loads(bytes(blob))
    except DecodeError:
        pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from(list("lltdSXbBanTID"))
    | st.text(max_size=5),
    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(json_values, st.lists(st.binary(max_size=32), max_size=3))
def test_random_meta_never_escapes_as_another_exception(root, buffers):
    try:
        decode(meta_of(root), buffers)
    except DecodeError:
        pass


# ----------------------------------------------------------------------------------------------- hygiene


def test_serialization_source_has_no_pickle_eval_or_dynamic_import():
    banned = re.compile(
        r"^\s*(import|from)\s+(c?pickle|_pickle|marshal|dill|cloudpickle|shelve|importlib)\b"
        r"|\b(eval|exec|__import__|import_module|find_class|__reduce__)\s*\(",
        re.MULTILINE,
    )
    files = list(SERIALIZATION_DIR.glob("*.py"))
    assert len(files) >= 4
    for path in files:
        found = banned.search(path.read_text())
        assert found is None, f"{path.name}: {found.group(0)!r}"


def test_importing_and_encoding_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import flarelite.serialization as s\n"
        "assert 'torch' not in sys.modules\n"
        "s.loads(s.dumps({'a': np.ones(3), 'b': [1, 'x']}))\n"
        "assert 'torch' not in sys.modules\n"
    )
    root = pathlib.Path(__file__).absolute().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=60)


def test_public_api():
    assert set(ser.__all__) == {
        "Encoded", "encode", "decode", "dumps", "loads", "Decomposer", "register_decomposer", "unregister_decomposer",
    }  # fmt: skip
