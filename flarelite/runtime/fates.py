"""SiteFates: what became of each client site of a run, as the server saw it (for run_result.json)."""

from __future__ import annotations

import threading

OK = "ok"
NOT_IN_RUN = "not part of the run"


class SiteFates:
    """Each site's fate: ``"ok"``, ``"died: <why>"``, ``"failed: <why>"`` or ``"not part of the run"``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fates: dict[str, str] = {}

    def failed(self, name: str, why: str) -> None:
        """``name`` reported a failure (a fatal error, an interrupt)."""
        with self._lock:
            if not self._fates.get(name, "").startswith("failed:"):
                self._fates[name] = f"failed: {why}"

    def died(self, name: str, why: str) -> None:
        """``name`` went away without a word (its connection was lost)."""
        with self._lock:
            if not self._fates.get(name, "").startswith("failed:"):
                self._fates[name] = f"died: {why}"

    def back(self, name: str) -> None:
        """``name`` joined again: it is not dead after all."""
        with self._lock:
            if self._fates.get(name, "").startswith("died:"):
                del self._fates[name]

    def ended(self, name: str) -> None:
        """``name`` said goodbye without a failure."""
        with self._lock:
            self._fates.setdefault(name, OK)

    def not_in_run(self, name: str) -> None:
        """``name`` joined but the run went on without it."""
        with self._lock:
            self._fates[name] = NOT_IN_RUN

    def dead(self) -> list[str]:
        """Return the sites that died (so far)."""
        with self._lock:
            return sorted(n for n, f in self._fates.items() if f.startswith("died:"))

    def get(self, name: str) -> str | None:
        """Return ``name``'s fate so far, or None."""
        with self._lock:
            return self._fates.get(name)

    def report(self, names: list[str], joined: set[str], gone: set[str]) -> dict[str, str]:
        """Return ``{site: fate}`` for ``names``, given who joined and who left by the end of the run."""
        with self._lock:
            fates = dict(self._fates)
        out: dict[str, str] = {}
        for name in names:
            if name in fates:
                out[name] = fates[name]
            elif name not in joined:
                out[name] = NOT_IN_RUN
            elif name not in gone:
                out[name] = "failed: did not confirm the end of the run"
            else:
                out[name] = OK
        return out
