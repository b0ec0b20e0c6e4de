"""ExcludeVars: remove variables (model layers) from WEIGHTS / WEIGHT_DIFF DXOs."""

from __future__ import annotations

import re

from ...apis.dxo import DXO, DataKind
from ...apis.dxo_filter import DXOFilter
from ...apis.fl_context import FLContext
from ...apis.shareable import Shareable


class ExcludeVars(DXOFilter):
    """Remove variables from the data of WEIGHTS / WEIGHT_DIFF DXOs.

    Parameters:
        exclude_vars: a list of variable names (removed where present), or a str compiled as a regular
            expression (variables it ``search``-matches are removed). None, an empty value or any other type
            leaves the data unchanged.
        data_kinds: the kinds to filter (default ``[WEIGHT_DIFF, WEIGHTS]``).

    Raises:
        ValueError: ``exclude_vars`` is a str that is not a valid regular expression.

    Unlike NVFlare 2.9.0, the str is kept as given (``self.exclude_vars``) and compiled privately, so a job with
    ``ExcludeVars("regex")`` exports and imports again correctly; NVFlare stores the compiled pattern in place of
    the str, so its job export writes ``{"path": "re.Pattern"}`` and copies parts of the standard library.
    """

    def __init__(self, exclude_vars: list[str] | str | None = None, data_kinds: list[str] | None = None) -> None:
        if not data_kinds:
            data_kinds = [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS]
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF], data_kinds_to_filter=data_kinds)
        self.exclude_vars = exclude_vars
        self.skip = False
        self._regex: re.Pattern[str] | None = None
        if isinstance(exclude_vars, str):
            if not exclude_vars:
                self.skip = True
                return
            try:
                self._regex = re.compile(exclude_vars)
            except re.error as exc:
                raise ValueError(f"ExcludeVars: {exclude_vars!r} is not a valid regular expression: {exc}") from exc
            self.logger.debug("excluding every variable that matches the regex %r", exclude_vars)
        elif isinstance(exclude_vars, list) and exclude_vars:
            if not all(isinstance(v, str) for v in exclude_vars):
                self.skip = True
                self.logger.warning(
                    "ExcludeVars: exclude_vars must hold variable names (str), got %r; nothing is excluded",
                    exclude_vars,
                )
                return
            self.logger.debug("excluding variables %s", exclude_vars)
        else:
            if exclude_vars:  # neither a list nor a str
                self.logger.warning(
                    "ExcludeVars: exclude_vars must be a list of variable names or a regex str, got %s; "
                    "nothing is excluded",
                    type(exclude_vars).__name__,
                )
            self.skip = True

    def _excluded(self, name: str) -> bool:
        if self._regex is not None:
            return self._regex.search(name) is not None
        return isinstance(self.exclude_vars, list) and name in self.exclude_vars

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Return ``dxo`` without the excluded variables (None when nothing is to be excluded)."""
        if self.skip:
            return None
        weights = dxo.data
        kept = {k: v for k, v in weights.items() if not (isinstance(k, str) and self._excluded(k))}
        n_excluded = len(weights) - len(kept)
        if self._regex is not None and n_excluded == 0:
            self.log_warning(fl_ctx, f"no variable matches the regex {self.exclude_vars!r}; nothing was excluded")
        self.log_debug(fl_ctx, f"excluded {n_excluded} of {len(weights)} variables; {len(kept)} remain")
        dxo.data = kept
        return dxo
