"""DXO (data exchange object): a data kind, a data dict and meta props, carried inside a Shareable."""

from __future__ import annotations

import copy
from enum import Enum
from typing import Any

from .fl_constant import FLMetaKey
from .shareable import ReservedHeaderKey, Shareable


class DataKind(str, Enum):
    """What a DXO's data holds; each value equals its name."""

    FL_MODEL = "FL_MODEL"
    WEIGHTS = "WEIGHTS"
    WEIGHT_DIFF = "WEIGHT_DIFF"
    METRICS = "METRICS"
    ANALYTIC = "ANALYTIC"
    COLLECTION = "COLLECTION"
    STATISTICS = "STATISTICS"
    PSI = "PSI"
    APP_DEFINED = "APP_DEFINED"

    def __str__(self) -> str:
        return self.value


class MetaKey(FLMetaKey):
    """Keys of DXO meta props."""


_KEY_DXO = "DXO"
_KEY_KIND = "kind"
_KEY_DATA = "data"
_KEY_META = "meta"
_CONTENT_TYPE_DXO = "DXO"


class DXO:
    """Data exchange object: ``data_kind``, ``data`` (a dict unless APP_DEFINED) and ``meta`` (a dict)."""

    def __init__(self, data_kind: str, data: Any, meta: dict | None = None) -> None:
        self.data_kind = data_kind
        self.data = {} if data is None else data
        self.meta = {} if meta is None else meta
        err = self.validate()
        if err:
            raise ValueError(f"invalid DXO: {err}")

    def validate(self) -> str:
        """Return an error message, or ``""`` when the DXO is valid."""
        if not isinstance(self.data_kind, str) or not self.data_kind:
            return f"data_kind must be a non-empty str, got {type(self.data_kind).__name__}"
        if self.data_kind != DataKind.APP_DEFINED and not isinstance(self.data, dict):
            return f"data must be a dict for data_kind {self.data_kind}, got {type(self.data).__name__}"
        if not isinstance(self.meta, dict):
            return f"meta must be a dict, got {type(self.meta).__name__}"
        return ""

    def get_meta_prop(self, key: str, default: Any = None) -> Any:
        """Return meta prop ``key``, or ``default``."""
        return self.meta.get(key, default)

    def set_meta_prop(self, key: str, value: Any) -> None:
        """Set meta prop ``key``."""
        self.meta[key] = value

    def remove_meta_props(self, keys: list[str]) -> None:
        """Remove the given meta props (missing ones are ignored)."""
        for k in keys or ():
            self.meta.pop(k, None)

    def get_meta_props(self) -> dict:
        """Return the meta dict."""
        return self.meta

    def update_meta_props(self, meta: dict) -> None:
        """Merge a deep copy of ``meta`` into the meta props."""
        self.meta.update(copy.deepcopy(meta))

    def add_filter_history(self, filter_name: str | list[str]) -> None:
        """Record the name(s) of filters applied to this DXO."""
        if not filter_name:
            return
        history = self.meta.setdefault(MetaKey.FILTER_HISTORY, [])
        if isinstance(filter_name, list):
            history.extend(filter_name)
        else:
            history.append(filter_name)

    def get_filter_history(self) -> list | None:
        """Return the recorded filter names, or None."""
        return self.meta.get(MetaKey.FILTER_HISTORY)

    def to_dict(self) -> dict:
        """Return ``{"kind", "data", "meta"}``."""
        return {_KEY_KIND: str(self.data_kind), _KEY_DATA: self.data, _KEY_META: self.meta}

    def update_shareable(self, s: Shareable) -> Shareable:
        """Put this DXO into ``s`` (key ``"DXO"``, content type header ``"DXO"``) and return ``s``."""
        s.set_header(ReservedHeaderKey.CONTENT_TYPE, _CONTENT_TYPE_DXO)
        s[_KEY_DXO] = self.to_dict()
        return s

    def to_shareable(self) -> Shareable:
        """Return a new Shareable holding this DXO."""
        return self.update_shareable(Shareable())

    def to_bytes(self) -> bytes:
        """Encode with flarelite's safe codec (no pickle)."""
        from flarelite.serialization import dumps

        return dumps(self)

    def to_file(self, file_path: str) -> None:
        """Write ``to_bytes()`` to ``file_path``."""
        with open(file_path, "wb") as f:
            f.write(self.to_bytes())

    def __repr__(self) -> str:
        return f"DXO(data_kind={str(self.data_kind)!r}, data={self.data!r}, meta={self.meta!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DXO):
            return NotImplemented
        return (str(self.data_kind), self.data, self.meta) == (str(other.data_kind), other.data, other.meta)

    __hash__ = None  # type: ignore[assignment]


def _kind(value: Any) -> Any:
    try:
        return DataKind(value)
    except ValueError:
        return value


def from_dict(d: dict) -> DXO:
    """Build a DXO from ``{"kind", "data", "meta"}``; raises ``ValueError`` for anything else."""
    if not isinstance(d, dict) or _KEY_KIND not in d:
        raise ValueError(f"cannot make a DXO from {type(d).__name__}: expected a dict with keys kind, data, meta")
    return DXO(data_kind=_kind(d[_KEY_KIND]), data=d.get(_KEY_DATA), meta=d.get(_KEY_META))


def from_shareable(s: Shareable) -> DXO:
    """Return the DXO inside ``s``; raises ``ValueError`` when ``s`` holds none (e.g. a bare ``make_reply``)."""
    if not isinstance(s, Shareable):
        raise ValueError(f"from_shareable expects a Shareable, got {type(s).__name__}")
    content_type = s.get_header(ReservedHeaderKey.CONTENT_TYPE)
    if content_type != _CONTENT_TYPE_DXO:
        rc = s.get_return_code()
        raise ValueError(
            f"the Shareable holds no DXO (content type {content_type!r}, return code {rc!r}); "
            "check the return code before reading data, and build payloads with DXO(...).to_shareable()"
        )
    d = s.get(_KEY_DXO)
    if not isinstance(d, dict):
        raise ValueError(f"the Shareable's 'DXO' entry is {type(d).__name__}, not a dict")
    return from_dict(d)


def from_bytes(data: bytes) -> DXO:
    """Decode bytes made by ``DXO.to_bytes``; raises ``ValueError`` if they do not hold a DXO."""
    from flarelite.serialization import loads

    value = loads(data)
    if not isinstance(value, DXO):
        raise ValueError(f"bytes decode to {type(value).__name__}, not DXO")
    return value


def from_file(file_path: str) -> DXO:
    """Read a DXO written by ``DXO.to_file``."""
    with open(file_path, "rb") as f:
        return from_bytes(f.read())


def get_leaf_dxos(dxo: DXO, root_name: str = "") -> tuple[dict, list]:
    """Walk a COLLECTION tree; return ``({path: leaf DXO}, [errors])``."""
    leaves: dict[str, DXO] = {}
    errors: list[str] = []
    _collect_leaves(dxo, root_name, leaves, errors, set())
    return leaves, errors


def _collect_leaves(dxo: DXO, path: str, leaves: dict, errors: list, seen: set[int]) -> None:
    if id(dxo) in seen:  # a collection that contains itself: visit each DXO once
        return
    seen.add(id(dxo))
    if dxo.data_kind != DataKind.COLLECTION:
        leaves[path] = dxo
        return
    if not isinstance(dxo.data, dict):
        errors.append(f"{path}: COLLECTION data is {type(dxo.data).__name__}, not dict")
        return
    for name, child in dxo.data.items():
        child_path = f"{path}.{name}" if path else str(name)
        if isinstance(child, DXO):
            _collect_leaves(child, child_path, leaves, errors, seen)
        else:
            errors.append(f"{child_path}: {type(child).__name__} is not a DXO")
