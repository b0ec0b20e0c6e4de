"""Write a float64 array as a ``.pt`` file that ``torch.load`` reads as a tensor, without importing torch.

Importing torch costs a site process 1.6-2 s of CPU; a site that only saves a history of numbers at the end of
its run (``ConsensusExecutor``'s ``value_sequence.pt``) need not pay it. The file is torch's own zip format
(what ``torch.save`` writes since torch 1.6): ``data.pkl`` (a protocol-2 pickle that rebuilds the tensor with
``torch._utils._rebuild_tensor_v2`` from storage ``0``, both allowed by ``torch.load(weights_only=True)``),
``data/0`` (the little-endian values), ``byteorder``, ``version``. The pickle is written opcode by opcode here;
nothing is unpickled.
"""

from __future__ import annotations

import os
import secrets
import struct
import zipfile
from typing import Any

import numpy as np


def _pickle_tensor(numel: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """The ``data.pkl`` of one CPU float64 tensor over persistent storage ``0``."""
    out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(module: str, name: str) -> None:
        out.extend(b"c" + module.encode() + b"\n" + name.encode() + b"\n")  # GLOBAL

    def text(value: str) -> None:
        data = value.encode()
        out.extend(b"X" + struct.pack("<I", len(data)) + data)  # BINUNICODE

    def integer(value: int) -> None:
        if 0 <= value < 1 << 8:
            out.extend(b"K" + bytes([value]))  # BININT1
        elif 0 <= value < 1 << 16:
            out.extend(b"M" + struct.pack("<H", value))  # BININT2
        elif -(1 << 31) <= value < 1 << 31:
            out.extend(b"J" + struct.pack("<i", value))  # BININT
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            out.extend(b"\x8a" + bytes([len(data)]) + data)  # LONG1

    def ints(values: tuple[int, ...]) -> None:
        out.extend(b"(")  # MARK
        for value in values:
            integer(value)
        out.extend(b"t")  # TUPLE

    global_("torch._utils", "_rebuild_tensor_v2")
    out.extend(b"((")  # MARK (the arguments), MARK (the storage's persistent id)
    text("storage")
    global_("torch", "DoubleStorage")
    text("0")
    text("cpu")
    integer(numel)
    out.extend(b"tQ")  # TUPLE, BINPERSID
    integer(0)  # storage offset
    ints(shape)
    ints(stride)
    out.extend(b"\x89")  # NEWFALSE: requires_grad
    global_("collections", "OrderedDict")
    out.extend(b")R")  # EMPTY_TUPLE, REDUCE: no backward hooks
    out.extend(b"tR.")  # TUPLE (the arguments), REDUCE, STOP
    return bytes(out)


def save_float64_tensor(values: Any, path: str | os.PathLike) -> None:
    """Write ``values`` (a number, a nested list or a numpy array) to ``path`` as a float64 torch tensor file."""
    array = np.ascontiguousarray(values, dtype="<f8")
    stride = tuple(s // array.itemsize for s in array.strides)
    name = "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", _pickle_tensor(array.size, array.shape, stride))
        archive.writestr(f"{name}/byteorder", "little")
        archive.writestr(f"{name}/data/0", array.tobytes())
        archive.writestr(f"{name}/version", "3\n")
        archive.writestr(f"{name}/.data/serialization_id", str(secrets.randbits(128)))
