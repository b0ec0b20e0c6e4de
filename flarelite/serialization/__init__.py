"""The safe codec: Shareable, DXO, plain values, numpy arrays and torch tensors <-> bytes, without pickle."""

from __future__ import annotations

from .codec import Encoded, decode, encode
from .container import dumps, loads
from .decomposers import Decomposer, register_decomposer, unregister_decomposer

__all__ = [
    "Encoded",
    "encode",
    "decode",
    "dumps",
    "loads",
    "Decomposer",
    "register_decomposer",
    "unregister_decomposer",
]
