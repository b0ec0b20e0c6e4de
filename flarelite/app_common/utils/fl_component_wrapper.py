"""FLComponentWrapper: an FLComponent that keeps its FLContext, so its helpers need no fl_ctx argument."""

from __future__ import annotations

from typing import Any

from ...apis.fl_component import FLComponent
from ...apis.fl_exception import TaskExecutionError


class ContextLogging:
    """``debug/info/warning/error/exception/critical(msg)`` that log with the stored ``self.fl_ctx``.

    For FLComponents that keep their run's FLContext (FLComponentWrapper, ModelAggregator).
    """

    fl_ctx: Any

    def debug(self, msg: str) -> None:
        """Log at DEBUG with the stored context."""
        self.log_debug(self.fl_ctx, msg)

    def info(self, msg: str) -> None:
        """Log at INFO with the stored context."""
        self.log_info(self.fl_ctx, msg)

    def warning(self, msg: str) -> None:
        """Log at WARNING with the stored context."""
        self.log_warning(self.fl_ctx, msg)

    def error(self, msg: str) -> None:
        """Log at ERROR with the stored context."""
        self.log_error(self.fl_ctx, msg)

    def exception(self, msg: str) -> None:
        """Log at ERROR with the traceback and the stored context."""
        self.log_exception(self.fl_ctx, msg)

    def critical(self, msg: str) -> None:
        """Log at CRITICAL with the stored context."""
        self.log_critical(self.fl_ctx, msg)


class FLComponentWrapper(FLComponent, ContextLogging):
    """Logging, events and lookups against the stored ``self.fl_ctx`` (set by the subclass when it starts)."""

    STATE = None

    def __init__(self) -> None:
        super().__init__()
        self.engine: Any = None
        self.fl_ctx: Any = None
        self.workspace: Any = None
        self.shareable: Any = None
        self.args: Any = None
        self.site_name: str | None = None
        self.job_id: str | None = None
        self.app_root: str | None = None
        self.job_root: str | None = None
        self.workspace_root: str | None = None
        self.abort_signal: Any = None
        self.current_round = 0
        self.total_rounds = 0

    def is_aborted(self) -> bool:
        """True when the stored abort signal has been triggered."""
        signal = getattr(self, "abort_signal", None)
        return bool(signal is not None and signal.triggered)

    def get_shareable_header(self, key: str, default: Any = None) -> Any:
        """Return header ``key`` of the stored Shareable, or ``default``."""
        shareable = getattr(self, "shareable", None)
        if not shareable:
            return default
        return shareable.get_header(key, default)

    def get_context_prop(self, key: str, default: Any = None) -> Any:
        """Return prop ``key`` of the stored FLContext, or ``default``."""
        fl_ctx = getattr(self, "fl_ctx", None)
        if fl_ctx is None:
            raise RuntimeError(f"{self.name}: no FLContext yet (the component has not started)")
        return fl_ctx.get_prop(key, default)

    def get_component(self, component_id: str) -> Any:
        """Return the component ``component_id`` of this site, or None."""
        engine = getattr(self, "engine", None)
        if engine is None and getattr(self, "fl_ctx", None) is not None:
            engine = self.fl_ctx.get_engine()
        if engine is None:
            raise RuntimeError(f"{self.name}: no engine yet (the component has not started)")
        return engine.get_component(component_id)

    def build_component(self, config_dict: dict) -> Any:
        """Build a component from ``{"path": "module.Class", "args": {...}}`` given by your own code.

        It imports the named class, so never pass it a dict received from another site.
        """
        import importlib

        if not isinstance(config_dict, dict) or not isinstance(config_dict.get("path"), str):
            raise ValueError(f"{self.name}.build_component: expected {{'path': 'module.Class', 'args': {{}}}}")
        module_name, _, class_name = config_dict["path"].rpartition(".")
        if not module_name:
            raise ValueError(f"{self.name}.build_component: {config_dict['path']!r} is not a 'module.Class' path")
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if not isinstance(cls, type):
            raise ValueError(f"{self.name}.build_component: {config_dict['path']!r} is not a class")
        return cls(**(config_dict.get("args") or {}))

    def initialize(self) -> None:
        """Called when the component starts; the default does nothing."""

    def abort(self) -> None:
        """Called when the run is aborted; the default does nothing."""

    def finalize(self) -> None:
        """Called when the component ends; the default does nothing."""

    def event(self, event_type: str) -> None:
        """Fire ``event_type`` with the stored FLContext."""
        self.fire_event(event_type, self.fl_ctx)

    def panic(self, reason: str) -> None:
        """End the run because of ``reason`` (``system_panic`` with the stored FLContext)."""
        self.system_panic(reason, self.fl_ctx)

    def stop_task(self, reason: str) -> None:
        """Log ``reason`` and raise TaskExecutionError to end the current task."""
        self.log_error(self.fl_ctx, f"Task stopped: {reason}")
        raise TaskExecutionError(reason)
