"""The safe codec: values <-> ``Encoded(meta, buffers)``. The only module that knows the value encoding.

Nothing decoded can run code: there is no pickle, no eval, and no import of names found in the data.
Types are dispatched by exact type through two tables (``_ENCODERS`` by Python type, ``_DECODERS`` by
tag), with one flat ``_enc_x``/``_dec_x`` pair per type.

``meta`` is ASCII JSON ``[1, root]`` (1 is the format version). JSON null, true/false, numbers and
strings stand for themselves (NaN and +-Infinity included; ints beyond +-2**63 use tag ``I``). Every
other value is a JSON array whose first element is a tag; JSON objects never appear::

    ["l", v, ...]                    list            ["b", i]                      bytes (buffer i)
    ["t", v, ...]                    tuple           ["B", i]                      bytearray (buffer i)
    ["d", k, v, k, v, ...]           dict            ["a", i, dtype, shape, order] numpy array (buffer i)
    ["S", k, v, k, v, ...]           Shareable       ["n", dtype, hex]             numpy scalar
    ["X", kind, data, meta]          DXO             ["T", i, dtype, shape]        torch tensor (buffer i)
    ["I", hex]                       big int         ["D", "module.qualname", v]   registered decomposer

Dict keys are JSON strings or ints (or ``["I", hex]``), so their type survives. Buffers are numbered
in the order they are met and each is used exactly once. Containers nest at most 256 deep.
Decoding costs time and memory in proportion to the input's size: see ``limits``.

Subclasses of str, int, float, bytes, list, tuple and dict without a registered decomposer travel as
their plain base value (a ``str`` Enum such as ``DataKind`` as its str value, an ``IntEnum`` as its
int, an ``OrderedDict`` as a dict, a namedtuple as a tuple); a subclass of Shareable travels as a
Shareable. A DXO's ``data_kind`` comes back as a ``DataKind`` member when it names one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import numpy as np

from flarelite.apis.dxo import DXO
from flarelite.apis.dxo import from_dict as dxo_from_dict
from flarelite.apis.shareable import Shareable
from flarelite.errors import CodecError, DecodeError, UnsupportedTypeError

from . import arrays, limits
from .decomposers import decomposer_for_name, decomposer_for_type, type_name
from .limits import (
    COST_BYTES,
    COST_CONTAINER,
    COST_DECOMPOSED,
    COST_DXO,
    COST_ITEM,
    COST_PAIR,
    COST_SCALAR,
    COST_SHAREABLE,
    MAX_HASH_COLLISIONS,
    Budget,
    check_int_key_hashes,
)
from .paths import PATH, finish, key_text, mark_too_deep, note

FORMAT_VERSION = 1
MAX_DEPTH = 256
_INT_LIMIT = 1 << 63
Node = list[Any]  # a tagged JSON array in meta
SUPPORTED = (
    "None, bool, int, float, str, bytes, bytearray, list, tuple, dict with str or int keys, "
    "numpy arrays and scalars (bool/int/uint/float/complex/datetime/fixed str), torch tensors, Shareable, DXO"
)


class Encoded(NamedTuple):
    """An encoded value: ``meta`` (structure, small) and ``buffers`` (raw array/bytes data, out of band)."""

    meta: bytes
    buffers: list[memoryview]

    @property
    def nbytes(self) -> int:
        """Total size of the buffers in bytes."""
        return sum(b.nbytes for b in self.buffers)


# ------------------------------------------------------------------------------------------------ walkers


class _Encoder:
    """One encode pass: walks the value, collects buffers."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def enc(self, v: Any, depth: int) -> Any:
        fn = _ENCODERS.get(type(v))
        return fn(self, v, depth) if fn is not None else _enc_other(self, v, depth)

    def add(self, buf: memoryview) -> int:
        self.buffers.append(buf)
        return len(self.buffers) - 1


class _Decoder:
    """One decode pass: walks the meta tree, hands out buffers in order, charges what it builds to a budget.

    The walk frees each parsed subtree once it is decoded, so the parsed and the decoded trees are not
    both held whole at the peak.
    """

    __slots__ = ("buffers", "used", "device", "torch", "left", "budget")

    def __init__(self, buffers: Sequence[Any], device: Any, meta_len: int) -> None:
        self.buffers = buffers
        self.used = 0
        self.device = device
        self.torch: Any = None
        self.budget = Budget(meta_len, buffers)
        self.left = self.budget.left  # bytes of objects still allowed; kept here, as the walk charges every node

    def overdrawn(self) -> None:
        """The budget ran out: raise DecodeError unless the buffers' bytes extend it."""
        self.left = self.budget.refill(self.left)

    def dec(self, node: Any, depth: int) -> Any:
        t = type(node)
        if t is list:
            tag = node[0] if node else None
            fn = _DECODERS.get(tag) if type(tag) is str else None
            if fn is None:
                raise DecodeError(f"unknown tag {tag!r:.40} in meta")
            return fn(self, node, depth)
        if t in _LEAVES:
            return node
        raise DecodeError(f"unexpected JSON {t.__name__} in meta")

    def take(self, index: Any) -> memoryview:
        """Return the next buffer as bytes; ``index`` must be its number (buffers are used once, in order)."""
        if type(index) is not int or index != self.used:
            raise DecodeError(f"buffer index {index!r:.40} is wrong: expected {self.used} (buffers are used in order)")
        if index >= len(self.buffers):
            raise DecodeError(f"buffer index {index} is out of range: {len(self.buffers)} buffers given")
        self.used += 1
        try:
            mv = memoryview(self.buffers[index])
            return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"buffer {index} is not contiguous bytes-like data: {exc}") from exc


_LEAVES = frozenset((str, int, float, bool, type(None)))
_PLAIN = _LEAVES
_PLAIN_NO_INT = frozenset((str, float, bool, type(None)))
_KEY_LEAVES = frozenset((str, int, bool))


def _unsupported(value: Any, reason: str | None = None) -> UnsupportedTypeError:
    reason = reason or (
        "register a Decomposer for it (flarelite.serialization.register_decomposer) "
        f"or convert it to a supported type ({SUPPORTED})"
    )
    return UnsupportedTypeError(f"cannot encode value of type {type_name(type(value))} at {PATH}: {reason}")


def _check_depth_enc(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise mark_too_deep(CodecError(f"cannot encode the value at {PATH}: containers nest deeper than {MAX_DEPTH}"))


def _check_depth_dec(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise DecodeError(f"meta nests deeper than {MAX_DEPTH} levels")


def _arity(node: Node, n: int, what: str) -> None:
    if len(node) != n:
        raise DecodeError(f"{what} node must have {n - 1} fields, got {len(node) - 1}")


# ------------------------------------------------------------------------------------------------ pairs


def _enc_plain(e: _Encoder, v: Any, depth: int) -> Any:
    return v


def _enc_int(e: _Encoder, v: int, depth: int) -> Any:
    return v if -_INT_LIMIT < v < _INT_LIMIT else ["I", hex(v)]


def _dec_bigint(d: Any, node: Node, depth: int) -> int:
    _arity(node, 2, "int")
    text = node[1]
    if type(text) is not str or len(text) > 1_000_000:
        raise DecodeError(f"big int must be a hex str, got {text!r:.40}")
    try:
        return int(text, 16)
    except ValueError as exc:
        raise DecodeError(f"big int is not hex: {text!r:.40}") from exc


def _enc_key(k: Any) -> Any:
    t = type(k)
    if t is str or t is bool:
        return k
    if t is int:
        return k if -_INT_LIMIT < k < _INT_LIMIT else ["I", hex(k)]
    if isinstance(k, str):
        return str.__str__(k)
    if isinstance(k, int):
        return _enc_key(int.__int__(k))
    exc = UnsupportedTypeError(
        f"cannot encode dict key {key_text(k)[1:-1]} of type {type_name(t)} in the dict at {PATH}: "
        "dict keys must be str or int"
    )
    exc.__dict__["_fl_key"] = True
    raise exc


def _dec_key(k: Any) -> Any:
    t = type(k)
    if t is str or t is int or t is bool:
        return k
    if t is list and len(k) == 2 and k[0] == "I":
        return _dec_bigint(None, k, 0)
    raise DecodeError(f"dict key must be a str or int, got {k!r:.40}")


def _enc_dict(e: _Encoder, v: dict[Any, Any], depth: int, tag: str = "d") -> Node:
    _check_depth_enc(depth)
    out: Node = [tag]
    get = _ENCODERS.get
    sub = depth + 1
    k = None
    try:
        for k, x in v.items():
            out.append(k if type(k) is str else _enc_key(k))
            tx = type(x)
            if tx in _PLAIN_NO_INT:  # leaves travel as they are: no call
                out.append(x)
                continue
            fn = get(tx)
            out.append(fn(e, x, sub) if fn is not None else _enc_other(e, x, sub))
    except CodecError as exc:
        if not exc.__dict__.pop("_fl_key", False):
            note(exc, key_text(k), v)
        raise
    return out


def _dec_dict(d: _Decoder, node: Node, depth: int) -> dict[Any, Any]:
    _check_depth_dec(depth)
    n = len(node)
    if n % 2 != 1:
        raise DecodeError("dict node must hold key/value pairs")
    d.left -= COST_CONTAINER + COST_PAIR * (n >> 1)
    if d.left < 0:
        d.overdrawn()
    if n >> 1 > MAX_HASH_COLLISIONS:
        return _dec_big_dict(d, node, depth)
    out: dict[Any, Any] = {}
    dec = d.dec
    sub = depth + 1
    k: Any = None
    try:
        for i in range(1, n, 2):
            k = node[i]
            if type(k) is not str:
                k = _dec_key(k)
            x = node[i + 1]
            if type(x) in _LEAVES:
                out[k] = x
            else:
                node[i + 1] = None  # the parsed subtree goes once decoded
                out[k] = dec(x, sub)
    except DecodeError as exc:
        note(exc, key_text(k), None)
        raise
    if len(out) != n // 2:
        raise DecodeError("dict node has duplicate keys")
    return out


def _dec_big_dict(d: _Decoder, node: Node, depth: int) -> dict[Any, Any]:
    """A dict of more than MAX_HASH_COLLISIONS keys: keys first (checked for colliding int hashes), then values."""
    keys = node[1::2]
    key_types = set(map(type, keys))
    if not key_types <= _KEY_LEAVES:  # big-int keys (["I", hex]), or garbage
        raw, keys = keys, []
        k: Any = None
        try:
            for k in raw:
                keys.append(k if type(k) in _KEY_LEAVES else _dec_key(k))
        except DecodeError as exc:
            note(exc, key_text(k), None)
            raise
        key_types = {int}
    if int in key_types:
        check_int_key_hashes(keys)
    values = node[2::2]
    if set(map(type, values)) <= _LEAVES:  # a big flat dict of leaves (e.g. metrics) is built in one C pass
        out: dict[Any, Any] = dict(zip(keys, values))
    else:
        del values
        out = {}
        dec = d.dec
        sub = depth + 1
        try:
            for i, k in enumerate(keys, 1):
                x = node[2 * i]
                if type(x) in _LEAVES:
                    out[k] = x
                else:
                    node[2 * i] = None  # the parsed subtree goes once decoded
                    out[k] = dec(x, sub)
        except DecodeError as exc:
            note(exc, key_text(k), None)
            raise
    if len(out) != len(keys):
        raise DecodeError("dict node has duplicate keys")
    return out


def _enc_shareable(e: _Encoder, v: Shareable, depth: int) -> Node:
    return _enc_dict(e, v, depth, "S")


def _dec_shareable(d: _Decoder, node: Node, depth: int) -> Shareable:
    d.left -= COST_SHAREABLE
    if d.left < 0:
        d.overdrawn()
    return Shareable(_dec_dict(d, node, depth))


def _enc_list(e: _Encoder, v: list[Any] | tuple[Any, ...], depth: int, tag: str = "l") -> Node:
    _check_depth_enc(depth)
    types = set(map(type, v))
    if types <= _PLAIN_NO_INT or (
        types <= _PLAIN and all(-_INT_LIMIT < x < _INT_LIMIT for x in v if type(x) is int)
    ):  # a flat list of JSON leaves (numbers, names, flags): one C-level pass
        return [tag, *v]
    out: Node = [tag]
    get = _ENCODERS.get
    sub = depth + 1
    try:
        for x in v:
            fn = get(type(x))
            out.append(fn(e, x, sub) if fn is not None else _enc_other(e, x, sub))
    except CodecError as exc:
        note(exc, f"[{len(out) - 1}]", v)
        raise
    return out


def _dec_list(d: _Decoder, node: Node, depth: int) -> list[Any]:
    _check_depth_dec(depth)
    n = len(node)
    d.left -= COST_CONTAINER + COST_ITEM * n
    if d.left < 0:
        d.overdrawn()
    rest = node[1:]
    if set(map(type, rest)) <= _LEAVES:  # a flat list of JSON leaves needs no walk
        return rest
    del rest
    dec = d.dec
    sub = depth + 1
    out: list[Any] = []
    try:
        for i in range(1, n):
            x = node[i]
            if type(x) in _LEAVES:
                out.append(x)
            else:
                node[i] = None  # the parsed subtree goes once decoded
                out.append(dec(x, sub))
    except DecodeError as exc:
        note(exc, f"[{len(out)}]", None)
        raise
    return out


def _enc_tuple(e: _Encoder, v: tuple[Any, ...], depth: int) -> Node:
    return _enc_list(e, v, depth, "t")


def _dec_tuple(d: _Decoder, node: Node, depth: int) -> tuple[Any, ...]:
    return tuple(_dec_list(d, node, depth))


def _enc_dxo(e: _Encoder, v: DXO, depth: int) -> Node:
    _check_depth_enc(depth)
    err = v.validate()
    if err:
        raise CodecError(f"cannot encode the DXO at {PATH}: {err}")
    field = ".data"
    try:
        data = e.enc(v.data, depth + 1)
        field = ".meta"
        meta = e.enc(v.meta, depth + 1)
    except CodecError as exc:
        note(exc, field, v)
        raise
    return ["X", str.__str__(v.data_kind), data, meta]


def _dec_dxo(d: _Decoder, node: Node, depth: int) -> DXO:
    _check_depth_dec(depth)
    _arity(node, 4, "DXO")
    kind = node[1]
    if type(kind) is not str:
        raise DecodeError(f"DXO kind must be a str, got {kind!r:.40}")
    d.left -= COST_DXO
    if d.left < 0:
        d.overdrawn()
    field = ".data"
    try:
        x, node[2] = node[2], None
        data = d.dec(x, depth + 1)
        field = ".meta"
        x, node[3] = node[3], None
        meta = d.dec(x, depth + 1)
    except DecodeError as exc:
        note(exc, field, None)
        raise
    try:
        return dxo_from_dict({"kind": kind, "data": data, "meta": meta})
    except ValueError as exc:
        raise DecodeError(f"invalid DXO: {exc}") from exc


def _enc_bytes(e: _Encoder, v: bytes, depth: int) -> Node:
    return ["b", e.add(memoryview(v))]


def _dec_bytes(d: _Decoder, node: Node, depth: int) -> bytes:
    _arity(node, 2, "bytes")
    d.left -= COST_BYTES
    if d.left < 0:
        d.overdrawn()
    buf = d.take(node[1])
    return buf.obj if type(buf.obj) is bytes and buf.nbytes == len(buf.obj) else bytes(buf)


def _enc_bytearray(e: _Encoder, v: bytearray, depth: int) -> Node:
    # copied: exporting the bytearray's own memory would forbid resizing it while the Encoded is alive
    return ["B", e.add(memoryview(bytes(v)))]


def _dec_bytearray(d: _Decoder, node: Node, depth: int) -> bytearray:
    _arity(node, 2, "bytearray")
    d.left -= COST_BYTES
    if d.left < 0:
        d.overdrawn()
    return bytearray(d.take(node[1]))


def _enc_ndarray(e: _Encoder, v: np.ndarray, depth: int) -> Node:
    try:
        dtype, shape, order, buf = arrays.ndarray_to_wire(v)
    except UnsupportedTypeError as exc:
        raise _unsupported(v, str(exc)) from None
    return ["a", e.add(buf), dtype, shape, order]


def _dec_ndarray(d: _Decoder, node: Node, depth: int) -> np.ndarray:
    _arity(node, 5, "numpy array")
    d.left -= limits.COST_ARRAY
    if d.left < 0:
        d.overdrawn()
    return arrays.ndarray_from_wire(node[2], node[3], node[4], d.take(node[1]))


def _enc_npscalar(e: _Encoder, v: np.generic, depth: int) -> Node:
    try:
        dtype, data = arrays.npscalar_to_wire(v)
    except UnsupportedTypeError as exc:
        raise _unsupported(v, str(exc)) from None
    return ["n", dtype, data]


def _dec_npscalar(d: _Decoder, node: Node, depth: int) -> np.generic:
    _arity(node, 3, "numpy scalar")
    d.left -= COST_SCALAR
    if d.left < 0:
        d.overdrawn()
    return arrays.npscalar_from_wire(node[1], node[2])


def _enc_tensor(e: _Encoder, v: Any, depth: int, torch: Any) -> Node:
    try:
        dtype, shape, buf = arrays.tensor_to_wire(v, torch)
    except UnsupportedTypeError as exc:
        raise _unsupported(v, str(exc)) from exc.__cause__
    return ["T", e.add(buf), dtype, shape]


def _dec_tensor(d: _Decoder, node: Node, depth: int) -> Any:
    _arity(node, 4, "torch tensor")
    d.left -= limits.COST_TENSOR
    if d.left < 0:
        d.overdrawn()
    buf = d.take(node[1])
    if d.torch is None:
        d.torch = arrays.import_torch()
    return arrays.tensor_from_wire(d.torch, node[2], node[3], buf, d.device)


def _enc_decomposed(e: _Encoder, v: Any, depth: int, decomposer: Any) -> Node:
    _check_depth_enc(depth)
    name = type_name(type(v))
    try:
        data = decomposer.decompose(v)
    except Exception as exc:
        raise CodecError(f"cannot encode value of type {name} at {PATH}: its decomposer failed: {exc!r}") from exc
    try:
        return ["D", name, e.enc(data, depth + 1)]
    except CodecError as exc:
        note(exc, f"<{name}>", v)
        raise


def _dec_decomposed(d: _Decoder, node: Node, depth: int) -> Any:
    _check_depth_dec(depth)
    _arity(node, 3, "decomposed value")
    name = node[1]
    if type(name) is not str:
        raise DecodeError(f"decomposed type name must be a str, got {name!r:.40}")
    decomposer = decomposer_for_name(name)
    if decomposer is None:
        raise DecodeError(
            f"the data holds a value of type {name}, which has no registered decomposer here; register one "
            "with flarelite.serialization.register_decomposer (sender and receiver need the same decomposers)"
        )
    d.left -= COST_DECOMPOSED
    if d.left < 0:
        d.overdrawn()
    try:
        x, node[2] = node[2], None
        data = d.dec(x, depth + 1)
    except DecodeError as exc:
        note(exc, f"<{name}>", None)
        raise
    try:
        return decomposer.recompose(data)
    except Exception as exc:
        raise DecodeError(f"the decomposer for {name} failed to recompose the value: {exc!r}") from exc


_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
    (bytes, bytes),
    (dict, dict),
    (list, list),
    (tuple, tuple),
)


def _enc_other(e: _Encoder, v: Any, depth: int) -> Any:
    """Encode a value whose exact type has no entry in ``_ENCODERS``: decomposers, torch, subclasses."""
    decomposer = decomposer_for_type(type(v))
    if decomposer is not None:
        return _enc_decomposed(e, v, depth, decomposer)
    if isinstance(v, Shareable):
        return _enc_shareable(e, v, depth)
    torch = sys.modules.get("torch")  # never imported here: if the user has tensors, torch is loaded
    if torch is not None and isinstance(v, torch.Tensor):
        return _enc_tensor(e, v, depth, torch)
    for base, convert in _BASES:
        if isinstance(v, base):
            return e.enc(convert(v), depth)
    if isinstance(v, np.ndarray):
        raise _unsupported(v, "numpy array subclasses cannot travel; convert with np.asarray(value) first")
    if type(v) is complex:
        raise _unsupported(v, "Python complex numbers cannot travel; use np.complex128(value)")
    raise _unsupported(v)


_ENCODERS: dict[type, Callable[[_Encoder, Any, int], Any]] = {
    type(None): _enc_plain,
    bool: _enc_plain,
    str: _enc_plain,
    float: _enc_plain,
    int: _enc_int,
    list: _enc_list,
    tuple: _enc_tuple,
    dict: _enc_dict,
    Shareable: _enc_shareable,
    DXO: _enc_dxo,
    bytes: _enc_bytes,
    bytearray: _enc_bytearray,
    np.ndarray: _enc_ndarray,
    np.memmap: _enc_ndarray,
}
for _code in np.typecodes["All"]:
    if _code not in "OV":
        _ENCODERS[np.dtype(_code).type] = _enc_npscalar
NATIVE_TYPES = frozenset(_ENCODERS)

_DECODERS: dict[str, Callable[[_Decoder, Node, int], Any]] = {
    "I": _dec_bigint,
    "l": _dec_list,
    "t": _dec_tuple,
    "d": _dec_dict,
    "S": _dec_shareable,
    "X": _dec_dxo,
    "b": _dec_bytes,
    "B": _dec_bytearray,
    "a": _dec_ndarray,
    "n": _dec_npscalar,
    "T": _dec_tensor,
    "D": _dec_decomposed,
}

_json_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_json_decode = json.JSONDecoder().raw_decode


# ------------------------------------------------------------------------------------------------ API


def encode(value: Any) -> Encoded:
    """Encode ``value`` into ``Encoded(meta, buffers)`` without copying array or bytes data.

    Parameters:
        value: a supported value (see the module docstring), possibly nested; arrays and bytes go to
            ``buffers`` as memoryviews of their own memory (non-contiguous arrays are copied once,
            bytearrays are copied, tensors are detached and moved to the CPU first).

    Returns:
        ``Encoded(meta, buffers)``; keep the source objects unchanged until the buffers are sent.

    Raises:
        UnsupportedTypeError: a value (or dict key) of a type outside the allow-list, with no registered
            decomposer; the message names the type and its key path, e.g. ``payload['DXO']['data'][2]``.
        CodecError: a self-referencing or too deeply nested structure, an invalid DXO, or a failing decomposer.
    """
    e = _Encoder()
    try:
        root = e.enc(value, 0)
    except CodecError as exc:
        finish(exc)
        raise
    except RecursionError as exc:
        raise CodecError("cannot encode the value: it nests too deeply for the Python stack") from exc
    return Encoded(_json_encode([FORMAT_VERSION, root]).encode("ascii"), e.buffers)


def decode(
    meta: bytes | bytearray | memoryview | str,
    buffers: Sequence[Any] = (),
    *,
    device: Any = None,
    max_meta: int | None = None,
) -> Any:
    """Rebuild the value that ``encode`` turned into ``meta`` and ``buffers``, checking everything.

    Decoding costs time and memory in proportion to the size of ``meta`` and ``buffers`` (see ``limits``).

    Parameters:
        meta: the ``meta`` bytes of an ``Encoded`` (untrusted: every field is validated).
        buffers: its buffers (bytes, bytearray or memoryview), in order. numpy arrays view them
            without copying (writable if the buffer is); torch tensors view writable buffers and
            copy read-only ones once (torch has no read-only tensors).
        device: where torch tensors go (e.g. ``"cuda:0"``); default: they stay on the CPU.
        max_meta: the largest ``meta`` accepted, in bytes (default ``limits.MAX_META_BYTES``, 64 MiB).

    Returns:
        the value; lists, tuples, dicts (key types kept), Shareable and DXO come back as such.

    Raises:
        DecodeError: malformed or untrusted data (bad JSON, unknown tag, disallowed dtype, wrong shape
            or buffer length, buffer index out of range or unused buffers, nesting deeper than 256,
            a type with no registered decomposer, or torch missing when the data holds tensors), or
            data over the limits (meta too big, more buffers or containers than the meta can hold,
            more objects than its size allows, colliding int dict keys). The message names the key
            path where the problem sits.
    """
    try:
        n_buffers = len(buffers)
    except TypeError as exc:
        raise DecodeError(f"buffers must be a sequence, got {type(buffers).__name__}") from exc
    try:
        if isinstance(meta, str):
            text, meta_len = meta, len(meta)
            limits.check_meta_size(meta_len, max_meta)
        else:
            meta_len = memoryview(meta).nbytes
            limits.check_meta_size(meta_len, max_meta)
            text = str(meta, "ascii")
        limits.check_buffer_count(n_buffers, meta_len, "decode was handed")
        limits.check_brackets(text)
        top, end = _json_decode(text)
        del text
        if end != meta_len:
            raise ValueError(f"extra data after the JSON value at char {end}")
    except RecursionError as exc:
        raise DecodeError("meta nests too deeply") from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"meta is not ASCII, so not JSON as flarelite writes it (ASCII-only, a subset of UTF-8): {exc}"
        ) from exc
    except DecodeError:
        raise
    except (TypeError, ValueError) as exc:  # not bytes-like, not JSON
        raise DecodeError(f"meta is not valid UTF-8 JSON: {exc}") from exc
    if type(top) is not list or len(top) != 2 or type(top[0]) is not int or top[0] != FORMAT_VERSION:
        raise DecodeError(f"meta is not flarelite codec data of format version {FORMAT_VERSION}")
    root = top.pop()  # the walk frees each parsed subtree once decoded: hold no other reference to it
    del top
    try:
        d = _Decoder(buffers, device, meta_len)
        value = d.dec(root, 0)
        if d.used != n_buffers:
            raise DecodeError(f"{n_buffers} buffers were given but the meta uses {d.used}")
    except DecodeError as exc:
        finish(exc)
        raise
    except RecursionError as exc:
        raise DecodeError("meta nests too deeply") from exc
    except Exception as exc:  # the edge to untrusted data: nothing else may escape
        raise DecodeError(f"malformed encoded data ({type(exc).__name__}: {exc})") from exc
    return value
