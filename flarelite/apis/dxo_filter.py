"""DXOFilter: the base of filters that work on the DXO inside a Shareable (walking COLLECTION DXOs)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .dxo import DXO, DataKind, from_shareable
from .filter import Filter, FilterContextKey
from .fl_constant import ReturnCode
from .fl_context import FLContext
from .shareable import Shareable


class DXOFilter(Filter, ABC):
    """A filter that hands each DXO of a kind it handles to ``process_dxo``.

    Parameters:
        supported_data_kinds: the data kinds this filter can handle (None or empty: every kind).
        data_kinds_to_filter: the kinds to filter (None or empty: the supported ones); must be a subset of
            the supported kinds.

    Raises:
        ValueError: an argument is not a list, or asks for kinds the filter does not support.
    """

    def __init__(self, supported_data_kinds: list[str] | None, data_kinds_to_filter: list[str] | None) -> None:
        super().__init__()
        if supported_data_kinds and not isinstance(supported_data_kinds, list):
            raise ValueError(
                f"{type(self).__name__}: supported_data_kinds must be a list of data kinds, "
                f"got {type(supported_data_kinds).__name__}"
            )
        if data_kinds_to_filter and not isinstance(data_kinds_to_filter, list):
            raise ValueError(
                f"{type(self).__name__}: the data kinds to filter must be a list of data kinds (e.g. "
                f"[DataKind.WEIGHTS]), got {type(data_kinds_to_filter).__name__}"
            )
        if supported_data_kinds and data_kinds_to_filter:
            unsupported = [k for k in data_kinds_to_filter if k not in supported_data_kinds]
            if unsupported:
                raise ValueError(
                    f"{type(self).__name__}: cannot filter data kinds {[str(k) for k in unsupported]}; "
                    f"it supports {[str(k) for k in supported_data_kinds]}"
                )
        self.data_kinds: list[str] = list(data_kinds_to_filter or supported_data_kinds or [])

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Filter the DXO in ``shareable``; a non-OK return code, no DXO or a DXO without data pass unchanged."""
        if shareable.get_return_code() != ReturnCode.OK:
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable  # not a DXO-based Shareable: nothing to filter
        if dxo.data is None:
            self.log_debug(fl_ctx, "the DXO has no data to filter")
            return shareable
        return self._filter_dxo(dxo, shareable, fl_ctx, set()).update_shareable(shareable)

    @abstractmethod
    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Filter one DXO: return the filtered DXO (``dxo`` itself or a new one), or None when it is not filtered.

        Received arrays may be read-only: build new arrays rather than writing into the ones given.
        """

    def _selects(self, data_kind: Any) -> bool:
        """Whether DXOs of ``data_kind`` go to ``process_dxo``."""
        return not self.data_kinds or data_kind in self.data_kinds

    def _filter_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext, seen: set[int]) -> DXO:
        if dxo.data_kind == DataKind.COLLECTION:
            if id(dxo) in seen:  # a collection that contains itself: each DXO is visited once
                return dxo
            seen.add(id(dxo))
            if not isinstance(dxo.data, dict):
                raise ValueError(
                    f"{type(self).__name__}: a COLLECTION DXO's data must be a dict of DXOs, "
                    f"got {type(dxo.data).__name__}"
                )
            for key, child in list(dxo.data.items()):
                if isinstance(child, DXO):
                    dxo.data[key] = self._filter_dxo(child, shareable, fl_ctx, seen)
            return dxo
        if not self._selects(dxo.data_kind):
            return dxo
        return self._apply(dxo, shareable, fl_ctx)

    def _apply(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        if not dxo.data:
            self.log_debug(fl_ctx, "the DXO has no data to filter")
            return dxo
        name = type(self).__name__
        result = self.process_dxo(dxo, shareable, fl_ctx)
        if result is None:
            return dxo  # not filtered
        if not isinstance(result, DXO):
            raise RuntimeError(f"{name}.process_dxo returned {type(result).__name__}: it must return a DXO or None")
        if result is not dxo:
            result.add_filter_history(list(dxo.get_filter_history() or []))
        result.add_filter_history(name)
        chain = self.get_prop(FilterContextKey.CHAIN_TYPE, "?")
        source = self.get_prop(FilterContextKey.SOURCE, "?")
        self.log_debug(fl_ctx, f"applied filter: {name}@{source} on {chain}")
        return result
