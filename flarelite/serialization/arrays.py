"""numpy arrays, numpy scalars and torch tensors <-> (header fields, raw buffer): the codec's array pairs.

Arrays travel out of band as one raw C- or F-ordered buffer each, described by a dtype string, a
shape and an order. Everything read from the wire is checked against allow-lists before numpy or
torch sees it. torch is never imported here at module import time: the encoder receives the
module from ``sys.modules`` and the decoder imports it only when a tensor is in the data.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from flarelite.errors import DecodeError, UnsupportedTypeError

MAX_NDIM = 64
_MAX_DIM = (1 << 63) - 1
# dtype kinds that may travel: bool, signed/unsigned int, float, complex, datetime/timedelta, fixed bytes/str.
NUMPY_KINDS = frozenset("biufcmMSU")
_DTYPE_RE = re.compile(r"[<>|=]?[biufcmMSU][0-9]{1,9}(\[[0-9]{0,9}[A-Za-z]{1,7}\])?\Z")

TORCH_DTYPES = frozenset(
    (
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    )
)  # fmt: skip


def _check_dtype_for_encode(dt: np.dtype) -> None:
    if dt.kind not in NUMPY_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise UnsupportedTypeError(
            f"numpy dtype {str(dt)!r} (kind {dt.kind!r}) cannot travel: only bool, int, uint, float, complex, "
            "datetime64/timedelta64 and fixed-size bytes/str dtypes are allowed (no object or structured dtypes)"
        )
    if dt.itemsize == 0:
        raise UnsupportedTypeError(f"numpy dtype {str(dt)!r} has item size 0 and cannot travel")


def wire_dtype(text: Any) -> np.dtype:
    """Return the numpy dtype for a dtype string from the wire, or raise DecodeError if it is not allowed."""
    if type(text) is not str:
        raise DecodeError(f"numpy dtype must be a str, got {type(text).__name__}")
    return _wire_dtype(text)


@lru_cache(maxsize=512)
def _wire_dtype(text: str) -> np.dtype:
    if not _DTYPE_RE.match(text):
        raise DecodeError(f"numpy dtype {text!r} is not allowed: expected e.g. '<f4', '|b1', '>i8', '<M8[ns]', '|S4'")
    try:
        dt = np.dtype(text)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"numpy dtype {text!r} is not valid: {exc}") from exc
    if dt.kind not in NUMPY_KINDS or dt.fields is not None or dt.subdtype is not None or dt.itemsize == 0:
        raise DecodeError(f"numpy dtype {text!r} (kind {dt.kind!r}) is not allowed")
    return dt


def wire_shape(shape: Any) -> tuple[int, ...]:
    """Return a shape from the wire as a tuple, or raise DecodeError unless it is a list of non-negative ints."""
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise DecodeError(f"shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r:.80}")
    for n in shape:
        if type(n) is not int or n < 0 or n > _MAX_DIM:
            raise DecodeError(f"shape must be a list of non-negative ints below 2**63, got {shape!r:.80}")
    return tuple(shape)


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_length(buf: memoryview, count: int, itemsize: int, what: str) -> None:
    if buf.nbytes != count * itemsize:
        raise DecodeError(
            f"{what}: buffer holds {buf.nbytes} bytes but shape and dtype need "
            f"{count} x {itemsize} = {count * itemsize}"
        )


def ndarray_to_wire(arr: np.ndarray) -> tuple[str, list[int], str, memoryview]:
    """Return ``(dtype, shape, order, buffer)``; the buffer is the array's own memory when it is contiguous."""
    dt = arr.dtype
    _check_dtype_for_encode(dt)
    if arr.flags.c_contiguous:
        order, flat = "C", arr.reshape(-1)
    elif arr.flags.f_contiguous:
        order, flat = "F", arr.reshape(-1, order="F")
    else:
        order, flat = "C", np.ascontiguousarray(arr).reshape(-1)
    return dt.str, list(arr.shape), order, flat.view(np.uint8).data


def ndarray_from_wire(dtype: Any, shape: Any, order: Any, buf: memoryview) -> np.ndarray:
    """Return an array viewing ``buf`` (no copy), after checking dtype, shape, order and length."""
    dt = wire_dtype(dtype)
    dims = wire_shape(shape)
    if order != "C" and order != "F":
        raise DecodeError(f"array order must be 'C' or 'F', got {order!r:.40}")
    count = _count(dims)
    _check_length(buf, count, dt.itemsize, f"array {dt.str}{list(dims)}")
    try:
        if count == 0:
            return np.empty(dims, dtype=dt, order=order)
        return np.frombuffer(buf, dtype=dt).reshape(dims, order=order)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"array {dt.str}{list(dims)} cannot be built: {exc}") from exc


def npscalar_to_wire(value: np.generic) -> tuple[str, str]:
    """Return ``(dtype, hex of the value's bytes)`` for a numpy scalar."""
    dt = value.dtype
    _check_dtype_for_encode(dt)
    return dt.str, value.tobytes().hex()


def npscalar_from_wire(dtype: Any, data: Any) -> np.generic:
    """Return the numpy scalar of ``dtype`` whose bytes are the hex string ``data``."""
    dt = wire_dtype(dtype)
    if type(data) is not str:
        raise DecodeError(f"numpy scalar data must be a hex str, got {type(data).__name__}")
    if len(data) != 2 * dt.itemsize:
        raise DecodeError(f"numpy scalar {dt.str} needs {dt.itemsize} bytes, got {len(data)} hex digits")
    try:
        raw = bytes.fromhex(data)
    except ValueError as exc:
        raise DecodeError(f"numpy scalar data is not hex: {exc}") from exc
    if len(raw) != dt.itemsize:
        raise DecodeError(f"numpy scalar {dt.str} needs {dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt)[0]  # type: ignore[no-any-return]


def tensor_to_wire(t: Any, torch: Any) -> tuple[str, list[int], memoryview]:
    """Return ``(dtype name, shape, buffer)`` for a torch tensor (detached, on the CPU, contiguous)."""
    if t.layout != torch.strided or t.is_nested:
        raise UnsupportedTypeError(f"{t.layout} tensors cannot travel; convert with .to_dense() first")
    if t.is_quantized:
        raise UnsupportedTypeError("quantized tensors cannot travel; convert with .dequantize() first")
    if t.is_meta:
        raise UnsupportedTypeError("meta tensors hold no data and cannot travel")
    name = str(t.dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise UnsupportedTypeError(f"torch dtype {t.dtype} cannot travel (allowed: {', '.join(sorted(TORCH_DTYPES))})")
    try:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.resolve_conj().resolve_neg().contiguous()
        buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UnsupportedTypeError(f"the tensor's data cannot be read: {exc}") from exc
    return name, list(t.shape), buf


def import_torch() -> Any:
    """Import and return torch, or raise DecodeError saying how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise DecodeError(
            "the payload holds torch tensors but torch is not installed here; pip install flarelite[torch]"
        ) from exc
    return torch


def tensor_from_wire(torch: Any, dtype: Any, shape: Any, buf: memoryview, device: Any = None) -> Any:
    """Return a tensor over ``buf`` (copied once if ``buf`` is read-only), moved to ``device`` if given."""
    if type(dtype) is not str or dtype not in TORCH_DTYPES:
        raise DecodeError(f"torch dtype {dtype!r:.40} is not allowed (allowed: {', '.join(sorted(TORCH_DTYPES))})")
    dt = getattr(torch, dtype, None)
    if not isinstance(dt, torch.dtype):
        raise DecodeError(f"torch dtype {dtype!r} does not exist in this torch {torch.__version__}")
    dims = wire_shape(shape)
    count = _count(dims)
    _check_length(buf, count, dt.itemsize, f"tensor {dtype}{list(dims)}")
    try:
        if count == 0:
            t = torch.empty(dims, dtype=dt)
        else:
            # torch has no read-only tensors: never let a tensor write into immutable memory (e.g. bytes).
            t = torch.frombuffer(bytearray(buf) if buf.readonly else buf, dtype=dt).reshape(dims)
        if device is not None:
            t = t.to(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DecodeError(f"tensor {dtype}{list(dims)} cannot be built: {exc}") from exc
    return t
