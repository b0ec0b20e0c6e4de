"""What a small hostile input may cost the codec: every limit of flarelite.serialization.limits, each attack bounded.

Each attack is checked for its outcome (a DecodeError naming the problem), its memory (tracemalloc's peak, numpy's
allocations included) and its CPU time, against the input's size. Before these limits: a 23 MiB container listing
3M empty buffers took 597 MiB and 3.4 s; 20,000 colliding int dict keys (0.5 MB) took 2.7 s (quadratic); a flood of
empty Shareables took 70x its size.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc

import numpy as np
import pytest

from flarelite.apis.dxo import DXO, DataKind
from flarelite.apis.shareable import Shareable
from flarelite.errors import DecodeError
from flarelite.serialization import decode, dumps, encode, limits, loads

MiB = 1 << 20
P61 = (1 << 61) - 1  # ints hash to themselves modulo this


def container(meta: bytes, lengths: list[int], body: bytes = b"") -> bytes:
    """A container with these header fields, padded so that empty buffers line up (see container.py)."""
    head = struct.pack("<4sHHQQ", b"FLRC", 1, 0, len(meta), len(lengths)) + struct.pack(f"<{len(lengths)}Q", *lengths)
    return head + meta + bytes(-(len(head) + len(meta)) % 64 if lengths else 0) + body


def cost(fn, *args, **kwargs):
    """Run ``fn``; return (outcome, peak traced bytes, CPU seconds); the outcome is the value or the DecodeError."""
    tracemalloc.start()
    t0 = time.process_time()
    try:
        outcome = fn(*args, **kwargs)
    except DecodeError as exc:
        outcome = exc
    finally:
        seconds = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, peak, seconds


def listing(items: bytes) -> bytes:
    return b'[1,["l"' + items + b"]]"


# ----------------------------------------------------------------------------------------------- buffer counts


def test_container_announcing_many_unreferenced_buffers_is_refused_before_any_work():
    blob = container(b"[1,null]", [0] * 1_000_000)  # 8 MB of lengths, nothing in meta uses them
    err, peak, seconds = cost(loads, blob)
    assert isinstance(err, DecodeError) and "1000000 buffers" in str(err) and "can reference at most 1" in str(err)
    assert peak < 64 << 10 and seconds < 1.0


def test_decode_handed_more_buffers_than_meta_can_reference_is_refused_at_once():
    buffers = [b""] * 1_000_000
    err, peak, seconds = cost(decode, b"[1,null]", buffers)
    assert isinstance(err, DecodeError) and "handed 1000000 buffers" in str(err)
    assert peak < 64 << 10 and seconds < 0.5
    assert decode(b'[1,["b",0]]', [b"x"]) == b"x"  # the shortest reference is still allowed


def test_container_of_many_referenced_buffers_costs_in_proportion_to_its_size():
    n = 50_000
    meta = listing(b"".join(b',["b",%d]' % i for i in range(n)))
    blob = container(meta, [1] * n, b"".join(b"x" + bytes(63) for _ in range(n - 1)) + b"x")
    value, peak, _ = cost(loads, blob)
    assert value == [b"x"] * n
    assert peak < 12 * len(blob)  # before: one memoryview per buffer up front, 17x for empty buffers


def test_container_lengths_beyond_its_size_are_refused():
    meta = b'[1,["b",0]]'
    for n in (2**64 - 1, 2**63, 10**12):
        with pytest.raises(DecodeError, match="truncated"):
            loads(container(meta, [n]))


# ----------------------------------------------------------------------------------------------- meta size


def test_meta_over_the_cap_is_refused_and_the_cap_can_be_raised(monkeypatch):
    meta = listing(b",1" * 1000)
    with pytest.raises(DecodeError, match=r"over the limit of 1000.*max_meta="):
        decode(meta, [], max_meta=1000)
    assert decode(meta, [], max_meta=len(meta)) == [1] * 1000
    blob = dumps([1] * 1000)
    with pytest.raises(DecodeError, match="over the limit"):
        loads(blob, max_meta=100)
    monkeypatch.setattr(limits, "MAX_META_BYTES", 100)
    with pytest.raises(DecodeError, match="MAX_META_BYTES"):
        loads(blob)
    assert loads(blob, max_meta=len(blob)) == [1] * 1000


def test_non_ascii_meta_is_refused_before_it_is_widened():
    meta = '[1,["l","\U0001f600'.encode() + b"a" * 1_000_000 + b'"]]'  # as UTF-8 text this is 4 bytes a char
    err, peak, _ = cost(decode, meta, [])
    assert isinstance(err, DecodeError) and "not ASCII" in str(err)
    assert peak < 3 * len(meta)  # the error's copy of the input; before: 8x (text widened to 4 bytes a char)
    assert decode('[1,"\u00e9"]') == "\u00e9"  # a str meta is the caller's own: taken as it is
    assert decode(b'[1,"\\u00e9"]') == "\u00e9"


# ----------------------------------------------------------------------------------------------- object floods


FLOODS = {
    "Shareable": b',["S"]',
    "DXO": b',["X","W",["d"],["d"]]',
    "numpy array": b',["a",%d,"<f8",[0],"C"]',
    "numpy scalar": b',["n","|b1","01"]',
    "bytes": b',["b",%d]',
    "empty dict": b',["d"]',
}


@pytest.mark.parametrize("what", FLOODS)
def test_flood_of_small_nodes_costs_in_proportion_to_its_size(what):
    item = FLOODS[what]
    n = 40_000
    buffered = b"%d" in item
    meta = listing(b"".join((item % i if buffered else item) for i in range(n)))
    outcome, peak, _ = cost(decode, meta, [b""] * n if buffered else [])
    assert isinstance(outcome, (list, DecodeError))
    assert peak < 30 * len(meta) + limits.BUDGET_BASE  # before: Shareables 70x, DXOs 26x, arrays 19x


@pytest.fixture
def small_budget(monkeypatch):
    """No free allowance: every object must be paid for by input bytes (the default gives 4 MiB free)."""
    monkeypatch.setattr(limits, "BUDGET_BASE", 0)


@pytest.mark.parametrize("what", ["Shareable", "DXO", "numpy array"])
def test_flood_of_nodes_that_decode_to_big_objects_stops_at_the_budget(what, small_budget):
    item = FLOODS[what]
    buffered = b"%d" in item
    meta = listing(b"".join((item % i if buffered else item) for i in range(20_000)))
    with pytest.raises(DecodeError, match="more objects than its size allows"):
        decode(meta, [b""] * 20_000 if buffered else [])


def test_flood_of_empty_torch_tensors_stops_at_the_budget(small_budget):
    pytest.importorskip("torch")
    n = 20_000
    meta = listing(b"".join(b',["T",%d,"bool",[0]]' % i for i in range(n)))
    with pytest.raises(DecodeError, match="more objects than its size allows"):
        decode(meta, [b""] * n)


def test_buffer_bytes_extend_the_budget(small_budget):
    n = 20_000
    meta = listing(b"".join(b',["a",%d,"<f8",[4],"C"]' % i for i in range(n)))
    assert len(decode(meta, [bytes(32)] * n)) == n  # 400 bytes of objects for 24 of meta and 32 of data
    assert len(loads(dumps([np.zeros(4)] * n))) == n
    with pytest.raises(DecodeError, match="more objects"):
        decode(listing(b"".join(b',["a",%d,"<f8",[0],"C"]' % i for i in range(n))), [b""] * n)


@pytest.mark.parametrize("item", [b",[]", b",[[]]", b",[1]", b',["l",[]]'])
def test_meta_denser_in_brackets_than_any_encoding_is_refused_before_parsing(item):
    meta = listing(item * 600_000)
    err, peak, _ = cost(decode, meta, [])
    assert isinstance(err, DecodeError) and "more containers than" in str(err)
    assert peak < 1.1 * len(meta)  # its text; before: 28x the meta in parsed lists, then an error


def test_brackets_inside_strings_are_fine_up_to_the_grace():
    value = ["[" * 60_000, ["l"] * 10_000, [[()]] * 10_000]
    assert loads(dumps(value)) == value


def test_nested_list_flood_frees_the_parsed_tree_as_it_decodes():
    n = 50_000
    meta = listing(b',["l",["t"]]' * n)
    value, peak, _ = cost(decode, meta, [])
    assert len(value) == n and value[0] == [()]
    assert peak < 30 * len(meta)  # before: parsed and decoded trees both whole, 33x


@pytest.mark.parametrize(
    "value",
    [
        [(i, i + 1) for i in range(100_000)],
        [{} for _ in range(100_000)],
        {f"layer{i}.weight": np.zeros(3, np.float32) for i in range(10_000)},
        [np.zeros(0, np.float32) for _ in range(10_000)],
        [np.float32(i) for i in range(50_000)],
        {i: float(i) for i in range(100_000)},
        [Shareable({"i": i}) for i in range(5_000)],
        [DXO(DataKind.METRICS, {"loss": float(i)}) for i in range(5_000)],
    ],
    ids=["2-tuples", "empty dicts", "named arrays", "empty arrays", "scalars", "int keys", "Shareables", "DXOs"],
)
def test_dense_honest_payloads_fit_the_budget(value):
    assert len(loads(dumps(value))) == len(value)


def test_many_small_tensors_with_names_fit_the_budget():
    torch = pytest.importorskip("torch")
    state = {f"model.layers.{i}.norm.num_batches_tracked": torch.tensor(i) for i in range(10_000)}
    out = loads(dumps(state))
    assert len(out) == len(state) and int(out["model.layers.9.norm.num_batches_tracked"]) == 9


# ----------------------------------------------------------------------------------------------- dict keys


@pytest.mark.parametrize("big", [False, True], ids=["ints", "big ints"])
def test_int_keys_with_colliding_hashes_are_refused_quickly(big):
    n = 20_000  # before: 2.7 s for these 0.5 MB, and quadratic
    keys = [k * P61 + (2**70 if big else 0) * P61 for k in range(1, n + 1)]
    assert len({hash(k) for k in keys}) == 1
    root = ["d"]
    for k in keys:
        root += [k if k < 2**63 else ["I", hex(k)], ["l"]]
    meta = json.dumps([1, root]).encode()
    err, _, seconds = cost(decode, meta, [])
    assert isinstance(err, DecodeError) and "hash" in str(err)
    assert seconds < 1.0


def test_a_few_colliding_int_keys_are_fine():
    value = {-1: "a", -2: "b", **{k * P61: k for k in range(1, limits.MAX_HASH_COLLISIONS + 1)}}
    assert len(value) == limits.MAX_HASH_COLLISIONS + 2
    assert loads(dumps(value)) == value
    flat = {k * P61: "x" for k in range(1, limits.MAX_HASH_COLLISIONS + 2)}  # 64 collisions, at the limit
    assert loads(dumps(flat)) == flat


@pytest.mark.parametrize(
    "root", [["d", 1, 0, True, 0], ["d", "k", 0, "k", 1], ["d"] + ["k", 0] * 100, ["d", 5, 0, ["I", "0x5"], 1]]
)
def test_duplicate_dict_keys_are_refused(root):
    with pytest.raises(DecodeError, match="duplicate"):
        decode(json.dumps([1, root]).encode(), [])


# ----------------------------------------------------------------------------------------------- numbers, dtypes


def test_big_int_hex_decodes_in_linear_time_and_longer_is_refused():
    value, _, seconds = cost(decode, b'[1,["I","' + b"f" * 1_000_000 + b'"]]', [])
    assert value == (1 << 4_000_000) - 1 and seconds < 0.5
    with pytest.raises(DecodeError, match="big int"):
        decode(b'[1,["I","' + b"f" * 1_000_001 + b'"]]', [])


def test_json_numbers_beyond_the_digit_limit_are_refused():
    with pytest.raises(DecodeError):
        decode(b"[1," + b"1" * 5000 + b"]", [])


@pytest.mark.parametrize(
    "shape",
    [[0, 2**62, 2**62], [0, 2**63], [0, 2**63 - 1, 2**63 - 1], [2**40, 2**40], [10**30], [0] * 64 + [1], [3, -1]],
)
def test_huge_or_overflowing_shapes_are_refused_without_allocating(shape):
    for dtype in ("<f8", "|b1", "|S999999999"):
        meta = json.dumps([1, ["a", 0, dtype, shape, "C"]]).encode()
        err, peak, _ = cost(decode, meta, [b""])
        assert isinstance(err, DecodeError), (dtype, shape, err)
        assert peak < 1 << 20


def test_zero_size_arrays_with_large_dims_cost_nothing():
    for dtype in ("<f8", "<U9", "|b1"):
        arr, peak, _ = cost(decode, json.dumps([1, ["a", 0, dtype, [0, 2**40], "C"]]).encode(), [b""])
        assert arr.shape == (0, 2**40) and arr.nbytes == 0 and peak < 1 << 20
    err, peak, _ = cost(decode, json.dumps([1, ["a", 0, "|S999999999", [0, 2**40], "C"]]).encode(), [b""])
    assert isinstance(err, DecodeError) and "cannot be built" in str(err) and peak < 1 << 20


def test_torch_shapes_are_bounded_too():
    pytest.importorskip("torch")
    for shape in ([0, 2**62, 2**62], [0, 2**64], [2**40, 2**40], [-1]):
        with pytest.raises(DecodeError):
            decode(json.dumps([1, ["T", 0, "float32", shape]]).encode(), [b""])


@pytest.mark.parametrize(
    "dtype",
    ["|O8", "O", "V8", "|V0", "<U0", "S0", "f4,i4", "[('a','O')]", "(2,)f4", "<M8[999999999999Y]", "<U999999999",
     "<u8\n", " <u8", "<f8" + "0" * 20, "<Q", "<g", "<e"],
)  # fmt: skip
def test_disallowed_dtype_strings_are_refused(dtype):
    with pytest.raises(DecodeError, match="dtype"):
        decode(json.dumps([1, ["a", 0, dtype, [1], "C"]]).encode(), [bytes(8)])
    with pytest.raises(DecodeError, match="dtype"):
        decode(json.dumps([1, ["n", dtype, "00" * 8]]).encode(), [])


def test_scalar_hex_of_the_wrong_length_is_refused_before_conversion():
    meta = json.dumps([1, ["n", "<f4", "00" * 1_000_000]]).encode()
    err, peak, _ = cost(decode, meta, [])
    assert isinstance(err, DecodeError) and "needs 4 bytes, got 2000000 hex digits" in str(err)
    assert peak < 2.2 * len(meta)  # the text and its parsed str; the hex is not turned into bytes first


@pytest.mark.parametrize("name", ["qint8", "quint8", "float32); import os", "Tensor", "__class__", "FloatTensor"])
def test_torch_dtype_names_outside_the_allow_list_are_refused(name):
    with pytest.raises(DecodeError, match="torch dtype"):
        decode(json.dumps([1, ["T", 0, name, [1]]]).encode(), [bytes(8)])


def test_every_allowed_torch_dtype_that_exists_decodes():
    torch = pytest.importorskip("torch")
    for name in sorted(limits_torch_dtypes()):
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype):
            continue
        t = decode(json.dumps([1, ["T", 0, name, [2]]]).encode(), [bytearray(2 * dt.itemsize)])
        assert t.dtype == dt and t.shape == (2,)


def limits_torch_dtypes() -> frozenset[str]:
    from flarelite.serialization.arrays import TORCH_DTYPES

    return TORCH_DTYPES


# ----------------------------------------------------------------------------------------------- nesting, names


def test_deep_shareable_and_dxo_nesting_is_refused():
    meta = b"[1," + b'["S","k",' * 300 + b"1" + b"]" * 300 + b"]"
    with pytest.raises(DecodeError, match="deep"):
        decode(meta, [])
    meta = b"[1," + b'["X","W",["d","k",' * 200 + b'["d"]' + b'],["d"]]' * 200 + b"]"
    with pytest.raises(DecodeError, match="deep"):
        decode(meta, [])
    fine = DXO(DataKind.WEIGHTS, {"inner": DXO(DataKind.METRICS, {"s": Shareable({"x": 1})}).to_shareable()})
    assert loads(dumps(fine)) == fine


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen", "flarelite.apis.dxo.DXO", ""])
def test_only_registered_decomposer_names_decode(name):
    with pytest.raises(DecodeError, match="no registered decomposer"):
        decode(json.dumps([1, ["D", name, ["l"]]]).encode(), [])


def test_encoded_sizes_respect_the_buffer_reference_rule():
    value = {"a": [b"", bytearray(), np.zeros(0), b"x" * 3], "b": (b"",) * 100}
    enc = encode(value)
    assert len(enc.buffers) <= limits.max_buffers(len(enc.meta))
    assert loads(dumps(value))["b"] == (b"",) * 100
