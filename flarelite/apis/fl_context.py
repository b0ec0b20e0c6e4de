"""FLContext: the bag of props a component receives with every call (engine, identity, job id, peer...)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .fl_constant import FLContextKey, ReservedKey

if TYPE_CHECKING:
    from .signal import Signal

_logger = logging.getLogger("FLContext")

_MASK_PRIVATE = 1
_MASK_STICKY = 2


def _mask(private: bool, sticky: bool) -> int:
    return (_MASK_PRIVATE if private else 0) | (_MASK_STICKY if sticky else 0)


class FLContext:
    """Props with a private/sticky mask; sticky props carry over to contexts made later by the same manager."""

    def __init__(self, manager: FLContextManager | None = None) -> None:
        self._props: dict[str, tuple[Any, int]] = {}
        self._manager = manager

    # props ---------------------------------------------------------------------------------------------
    def set_prop(self, key: str, value: Any, private: bool = True, sticky: bool = True) -> bool:
        """Set a prop; returns False (and logs a warning) if ``key`` exists with a different private/sticky mask."""
        mask = _mask(private, sticky)
        existing = self._props.get(key)
        if existing is None and self._manager is not None:
            existing = self._manager._sticky.get(key)
        if existing is not None and existing[1] != mask:
            _logger.warning(
                "prop %r already exists with a different mask (private=%s, sticky=%s); not changed",
                key,
                bool(existing[1] & _MASK_PRIVATE),
                bool(existing[1] & _MASK_STICKY),
            )
            return False
        self._props[key] = (value, mask)
        if sticky and self._manager is not None:
            self._manager._set_sticky(key, value, mask)
        return True

    def put(self, key: str, value: Any, private: bool, sticky: bool) -> bool:
        """Same as ``set_prop`` with explicit mask."""
        return self.set_prop(key, value, private=private, sticky=sticky)

    def get_prop(self, key: str, default: Any = None) -> Any:
        """Return prop ``key``, or ``default``."""
        entry = self._props.get(key)
        return default if entry is None else entry[0]

    def get_prop_detail(self, key: str) -> dict | None:
        """Return ``{"value", "private", "sticky"}`` for ``key``, or None."""
        entry = self._props.get(key)
        if entry is None:
            return None
        return {"value": entry[0], "private": bool(entry[1] & _MASK_PRIVATE), "sticky": bool(entry[1] & _MASK_STICKY)}

    def get_prop_keys(self) -> list[str]:
        """Return the names of all props."""
        return list(self._props)

    def public_key_exists(self, key: str) -> bool:
        """True when ``key`` is a public prop."""
        entry = self._props.get(key)
        return entry is not None and not entry[1] & _MASK_PRIVATE

    def get_all_public_props(self) -> dict:
        """Return a dict of all public props (these travel as peer props with every request)."""
        return {k: v for k, (v, m) in self._props.items() if not m & _MASK_PRIVATE}

    def remove_prop(self, key: str, force_removal: bool = False) -> None:
        """Remove a prop; reserved keys (starting with ``__``) are kept unless ``force_removal``."""
        if key.startswith("__") and not force_removal:
            return
        self._props.pop(key, None)
        if self._manager is not None:
            self._manager._remove_sticky(key)

    def set_public_props(self, metadata: dict) -> None:
        """Set each item of ``metadata`` as a public, non-sticky prop."""
        for k, v in metadata.items():
            self.set_prop(k, v, private=False, sticky=False)

    def get_custom_prop(self, key: str, default: Any = None) -> Any:
        """Return a custom prop (stored under ``CUSTOM_PROPS``)."""
        props = self.get_prop(ReservedKey.CUSTOM_PROPS) or {}
        return props.get(key, default)

    def set_custom_prop(self, key: str, value: Any) -> None:
        """Set a custom prop (stored under ``CUSTOM_PROPS``)."""
        props = self.get_prop(ReservedKey.CUSTOM_PROPS)
        if props is None:
            props = {}
            self.set_prop(ReservedKey.CUSTOM_PROPS, props, private=True, sticky=False)
        props[key] = value

    # convenience getters -------------------------------------------------------------------------------
    def get_engine(self, default: Any = None) -> Any:
        """Return the site's engine (send_aux_request, register_aux_message_handler, ...)."""
        return self.get_prop(ReservedKey.ENGINE, default)

    def get_job_id(self, default: Any = None) -> Any:
        """Return the job id (``simulate_job`` in the simulator)."""
        return self.get_prop(ReservedKey.RUN_NUM, default)

    def get_identity_name(self, default: str = "") -> str:
        """Return this site's name (``server``, ``site-1``, ...)."""
        return self.get_prop(ReservedKey.IDENTITY_NAME, default)

    def get_run_abort_signal(self) -> Signal | None:
        """Return the signal triggered when the run is aborted."""
        return self.get_prop(ReservedKey.RUN_ABORT_SIGNAL)

    def get_workspace(self) -> Any:
        """Return the site's Workspace (``get_run_dir``, ``get_app_dir``, ``get_app_custom_dir`` ...)."""
        return self.get_prop(ReservedKey.WORKSPACE_OBJECT)

    def get_run_dir(self) -> str | None:
        """Return the site's run directory (its own folder in the workspace)."""
        return self.get_prop(ReservedKey.APP_ROOT)

    def get_process_type(self, default: Any = None) -> Any:
        """Return the process type."""
        return self.get_prop(ReservedKey.PROCESS_TYPE, default)

    def set_peer_context(self, ctx: FLContext | None) -> None:
        """Set the peer's context (the sender of the request being handled)."""
        self.set_prop(FLContextKey.PEER_CONTEXT, ctx, private=True, sticky=False)

    def get_peer_context(self) -> FLContext | None:
        """Return the peer's context: the sender of the request or the site that produced the result."""
        return self.get_prop(FLContextKey.PEER_CONTEXT)

    def set_job_is_unsafe(self, value: bool = True) -> None:
        """Mark the job unsafe."""
        self.set_prop(ReservedKey.JOB_IS_UNSAFE, value, private=True, sticky=True)

    def is_job_unsafe(self) -> bool:
        """True when the job is marked unsafe."""
        return bool(self.get_prop(ReservedKey.JOB_IS_UNSAFE, False))

    # copying and context manager ------------------------------------------------------------------------
    def clone(self) -> FLContext:
        """Return a copy of this context (same manager, same props)."""
        ctx = FLContext(self._manager)
        ctx._props = dict(self._props)
        return ctx

    def __enter__(self) -> FLContext:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"FLContext(identity={self.get_identity_name()!r}, job={self.get_job_id()!r})"


def peer_context_from_props(props: dict | None) -> FLContext | None:
    """Build a read-only-by-convention FLContext from a peer's public props; None if there are none."""
    if not isinstance(props, dict):
        return None
    ctx = FLContext()
    for k, v in props.items():
        if isinstance(k, str):
            ctx.set_prop(k, v, private=False, sticky=False)
    return ctx


class FLContextManager:
    """Makes FLContexts for one site: engine, identity, job id and the sticky props set so far."""

    def __init__(
        self,
        engine: Any = None,
        identity_name: str = "",
        job_id: str = "",
        public_stickers: dict | None = None,
        private_stickers: dict | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._sticky: dict[str, tuple[Any, int]] = {}
        self._sticky[ReservedKey.ENGINE] = (engine, _mask(True, True))
        self._sticky[ReservedKey.RUN_NUM] = (job_id, _mask(False, True))
        self.identity_name = identity_name
        for k, v in (public_stickers or {}).items():
            self._sticky[k] = (v, _mask(False, True))
        for k, v in (private_stickers or {}).items():
            self._sticky[k] = (v, _mask(True, True))

    def new_context(self) -> FLContext:
        """Return a new FLContext holding the sticky props and the identity (public, non-sticky)."""
        ctx = FLContext(self)
        with self._lock:
            ctx._props = dict(self._sticky)
        ctx._props[ReservedKey.IDENTITY_NAME] = (self.identity_name, _mask(False, False))
        return ctx

    def _set_sticky(self, key: str, value: Any, mask: int) -> None:
        with self._lock:
            self._sticky[key] = (value, mask)

    def _remove_sticky(self, key: str) -> None:
        with self._lock:
            self._sticky.pop(key, None)
