"""DXOBlocker: block DXOs of some data kinds (or of every kind but some)."""

from __future__ import annotations

from typing import Any

from ...apis.dxo import DXO
from ...apis.dxo_filter import DXOFilter
from ...apis.filter import ContentBlockedException
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable


class DXOBlocker(DXOFilter):
    """Raise ContentBlockedException for DXOs of the listed kinds (with ``allow_data_kinds``: of the others).

    Parameters:
        data_kinds: the data kinds to block (or, with ``allow_data_kinds=True``, the only kinds let through).
        allow_data_kinds: False (default): block the kinds listed; True: block every kind not listed.

    Raises:
        ValueError: ``data_kinds`` is empty or not a list of str.
    """

    def __init__(self, data_kinds: list[str], allow_data_kinds: bool = False) -> None:
        super().__init__(supported_data_kinds=[], data_kinds_to_filter=[])  # every kind reaches process_dxo
        if not data_kinds:
            raise ValueError("DXOBlocker: data_kinds must be a non-empty list of data kinds")
        if not isinstance(data_kinds, list):
            raise ValueError(f"DXOBlocker: data_kinds must be a list, got {type(data_kinds).__name__}")
        if not all(isinstance(k, str) for k in data_kinds):
            raise ValueError(f"DXOBlocker: data_kinds must be a list of str, got {data_kinds!r}")
        self.data_kinds = list(data_kinds)  # what the job export reads back; _selects lets every kind through
        self.configured_data_kinds = list(data_kinds)
        self.allow_data_kinds = allow_data_kinds

    def _selects(self, data_kind: Any) -> bool:
        return True

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Raise ContentBlockedException when ``dxo``'s kind is blocked; otherwise leave it (None)."""
        listed = dxo.data_kind in self.configured_data_kinds
        if listed != self.allow_data_kinds:
            raise ContentBlockedException(f"DXO kind {dxo.data_kind} is blocked")
        return None
