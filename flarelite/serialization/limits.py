"""What decoding a small input may cost: limits checked before work proportional to claimed counts is done.

Decoding untrusted data must cost time and memory in proportion to the bytes received, with a small
constant. The codec holds to that with these limits:

- ``meta`` is at most ``MAX_META_BYTES`` (``decode``/``loads`` take ``max_meta=`` to change it per call);
  it must be ASCII (as ``encode`` writes it), so its text costs one byte per byte.
- Every buffer is referenced by a node of at least ``BUFFER_REF_BYTES`` bytes of meta, so ``decode`` is
  never handed, and a container never announces, more buffers than ``len(meta) // BUFFER_REF_BYTES``.
- Every container in meta takes at least ``BYTES_PER_BRACKET`` bytes (``["l"]``), so a meta with more ``[``
  than that allows (beyond ``BRACKET_GRACE``, which also covers ``[`` inside strings) is refused before
  JSON parsing builds a list for each.
- The objects the walk builds are charged an approximate size (``COST_*``) against a budget of
  ``BUDGET_PER_BYTE`` bytes per input byte (meta plus buffers) plus ``BUDGET_BASE``: a flood of small
  nodes that decode to big objects (empty Shareables, DXOs, tensors, arrays) stops at the budget.
- A dict's int keys may share a hash at most ``MAX_HASH_COLLISIONS`` times (ints hash to themselves
  modulo 2**61 - 1, so colliding keys are easy to make and would cost quadratic time to insert).
- Containers nest at most 256 deep (``codec.MAX_DEPTH``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flarelite.errors import DecodeError

MAX_META_BYTES = 64 << 20
BUFFER_REF_BYTES = 6  # the shortest buffer reference, ["b",0], is 7 bytes
BYTES_PER_BRACKET = 5
BRACKET_GRACE = 1 << 16
BUDGET_PER_BYTE = 16
BUDGET_BASE = 4 << 20
MAX_HASH_COLLISIONS = 64

# approximate bytes of Python (and torch) objects one decoded node makes, beyond what JSON parsing made
COST_CONTAINER = 64
COST_ITEM = 8
COST_PAIR = 40
COST_SHAREABLE = 320
COST_DXO = 600  # a DXO is ~250 bytes but ~10x slower to build than a list: weighted for time too
COST_ARRAY = 400
COST_TENSOR = 600
COST_SCALAR = 48
COST_BYTES = 48
COST_DECOMPOSED = 128


def check_meta_size(n: int, max_meta: int | None) -> None:
    """Raise DecodeError if ``n`` meta bytes exceed the cap (``max_meta``, default ``MAX_META_BYTES``)."""
    cap = MAX_META_BYTES if max_meta is None else max_meta
    if n > cap:
        raise DecodeError(
            f"meta is {n} bytes, over the limit of {cap}; if this data is trusted, pass max_meta= to "
            "decode/loads or raise flarelite.serialization.limits.MAX_META_BYTES"
        )


def check_brackets(text: str) -> None:
    """Raise DecodeError if ``text`` (a meta) holds more ``[`` than flarelite's encoding of its length can."""
    brackets = text.count("[")
    if brackets > BRACKET_GRACE + len(text) // BYTES_PER_BRACKET:
        raise DecodeError(
            f"meta holds {brackets} '[' in {len(text)} bytes: more containers than flarelite's encoding makes "
            f"(each takes at least {BYTES_PER_BRACKET} bytes); the data is malformed or hostile"
        )


def max_buffers(meta_len: int) -> int:
    """The most buffers a meta of ``meta_len`` bytes can reference."""
    return meta_len // BUFFER_REF_BYTES


def check_buffer_count(count: int, meta_len: int, what: str) -> None:
    """Raise DecodeError if ``count`` buffers are more than a meta of ``meta_len`` bytes can reference."""
    if count > max_buffers(meta_len):
        raise DecodeError(
            f"{what} {count} buffers but its {meta_len}-byte meta can reference at most {max_buffers(meta_len)} "
            f"(each reference takes at least {BUFFER_REF_BYTES} bytes): the data is malformed"
        )


def check_int_key_hashes(keys: Sequence[Any]) -> None:
    """Raise DecodeError if the int keys of one dict share hashes more than ``MAX_HASH_COLLISIONS`` times."""
    ints = [k for k in keys if type(k) is int]
    collisions = len(ints) - len(set(map(hash, ints)))
    if collisions > MAX_HASH_COLLISIONS:
        raise DecodeError(
            f"dict node has {collisions} int keys whose hash equals another key's (at most "
            f"{MAX_HASH_COLLISIONS} allowed): a hash-flooding pattern, not data flarelite writes"
        )


class Budget:
    """The approximate bytes of objects one decode may build: meta bytes first, the buffers' bytes when needed."""

    __slots__ = ("left", "buffers", "meta_len")

    def __init__(self, meta_len: int, buffers: Sequence[Any]) -> None:
        self.left = BUDGET_BASE + BUDGET_PER_BYTE * meta_len
        self.buffers: Sequence[Any] | None = buffers  # their bytes join the budget when it first runs out
        self.meta_len = meta_len

    def refill(self, left: int) -> int:
        """Return what is left (``left``, below 0) once the buffers' bytes join; raise DecodeError if still below 0."""
        buffers, self.buffers = self.buffers, None
        if buffers is not None:
            total = getattr(buffers, "nbytes", None)
            if total is None:
                try:
                    total = sum(memoryview(b).nbytes for b in buffers)
                except TypeError:  # a buffer that is not bytes-like: decode reports it when it gets there
                    total = 0
            left += BUDGET_PER_BYTE * total
            if left >= 0:
                return left
        raise DecodeError(
            f"meta of {self.meta_len} bytes describes more objects than its size allows (over "
            f"{BUDGET_PER_BYTE} bytes of objects per input byte, plus {BUDGET_BASE >> 20} MiB): "
            "the data is malformed or hostile"
        )
