"""Which in-process site a thread works for: ``flare.init()``'s binding, and the script's prints and log records.

Several sites can run in one process (the in-process simulator), each with its own ClientAPIExecutor and
script thread. A ``SiteBinding`` ties a script thread to its site's exchange; threads the script starts inherit
the binding (``threading.Thread.__init__`` copies it from the creating thread, installed once). So:

- ``flare.init()`` binds to the site whose script thread (or a thread it started) calls it, and two sites in one
  process never see each other's tasks. A thread no script started falls back to the only site of the process,
  if there is exactly one. (NVFlare 2.9.0 keeps one process-wide default instead.)
- ``print`` on a bound thread goes to that site's log at INFO with the site context (a thread-aware
  ``sys.stdout`` proxy, installed while in-process scripts run); other threads' prints go where they went.
- ``logging`` records made on a bound thread carry the site (``record.site``), so they land in that site's log.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any, Callable

_ATTR = "_flarelite_site_binding"
_lock = threading.RLock()
_active: list[SiteBinding] = []
_users = 0
_proxy: _ThreadAwareStdout | None = None
_factory_before: Callable[..., logging.LogRecord] | None = None
_thread_init_patched = False
_emitting = threading.local()


class SiteBinding:
    """One in-process site's training script: its exchange, its output, and the Client API contexts made on it."""

    def __init__(self, site_name: str, job_id: str, exchange: Any, output: Callable[[str], None]) -> None:
        self.site_name = site_name
        self.job_id = job_id
        self.exchange = exchange
        self.output = output  # takes one printed line (no newline)
        self.active = True
        self.lock = threading.RLock()
        self.contexts: dict[tuple[str, str | None], Any] = {}  # (rank, config_file) -> APIContext
        self.default: Any = None  # the most recently created APIContext
        self.initialized = threading.Event()  # set by the script's first flare.init()

    def __repr__(self) -> str:
        return f"SiteBinding(site={self.site_name!r}, job={self.job_id!r}, active={self.active})"


def bind_thread(binding: SiteBinding, thread: threading.Thread | None = None) -> None:
    """Bind ``thread`` (default: the current one) and the threads it starts to ``binding``."""
    setattr(thread or threading.current_thread(), _ATTR, binding)


def unbind_thread(thread: threading.Thread | None = None) -> None:
    """Remove the binding of ``thread`` (default: the current one)."""
    target = thread or threading.current_thread()
    if hasattr(target, _ATTR):
        delattr(target, _ATTR)


def current_binding() -> SiteBinding | None:
    """Return the active binding of the current thread, or None."""
    binding = getattr(threading.current_thread(), _ATTR, None)
    return binding if binding is not None and binding.active else None


def active_bindings() -> list[SiteBinding]:
    """Return the bindings of the in-process scripts running now."""
    with _lock:
        return [b for b in _active if b.active]


def register(binding: SiteBinding) -> None:
    """Make ``binding`` known (for the one-site fallback) and install the output capture."""
    global _users
    with _lock:
        _active.append(binding)
        _patch_thread_init()
        _users += 1
        _install_stdout()
        _install_record_factory()


def unregister(binding: SiteBinding) -> None:
    """Forget ``binding``; the output capture is removed with the last one."""
    global _users
    with _lock:
        binding.active = False
        if binding in _active:
            _active.remove(binding)
            _users -= 1
        if _users == 0:
            _uninstall_stdout()
            _uninstall_record_factory()


# threads inherit the binding of the thread that creates them ---------------------------------------------------
def _patch_thread_init() -> None:
    global _thread_init_patched
    if _thread_init_patched:
        return
    original = threading.Thread.__init__

    def __init__(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        binding = getattr(threading.current_thread(), _ATTR, None)
        if binding is not None and binding.active:
            setattr(self, _ATTR, binding)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    threading.Thread.__init__ = __init__  # type: ignore[method-assign]
    _thread_init_patched = True


# print -> the site log -------------------------------------------------------------------------------------
class _ThreadAwareStdout(io.TextIOBase):
    """``sys.stdout`` while in-process scripts run: bound threads' lines go to their site log, the rest through."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        self._target = target
        self._pending = threading.local()

    @property
    def target(self) -> Any:
        """The stream this proxy replaced."""
        return self._target

    def _binding(self) -> SiteBinding | None:
        if getattr(_emitting, "active", False):
            return None  # a handler writing to stdout while a line is being logged: straight through
        return current_binding()

    def write(self, text: str) -> int:  # type: ignore[override]
        binding = self._binding()
        if binding is None:
            return self._target.write(text)
        pending = getattr(self._pending, "text", "") + text
        *lines, rest = pending.split("\n")
        self._pending.text = rest
        for line in lines:
            _emit(binding, line)
        return len(text)

    def flush(self) -> None:
        binding = self._binding()
        if binding is not None:
            rest = getattr(self._pending, "text", "")
            if rest:
                self._pending.text = ""
                _emit(binding, rest)
            return
        self._target.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False if self._binding() is not None else bool(self._target.isatty())

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def flush_output() -> None:
    """Write out what the current bound thread printed after its last newline (call it when its script ends)."""
    proxy = _proxy
    if proxy is not None and current_binding() is not None:
        proxy.flush()


def _emit(binding: SiteBinding, line: str) -> None:
    _emitting.active = True
    try:
        binding.output(line.rstrip("\r"))
    finally:
        _emitting.active = False


def _install_stdout() -> None:
    global _proxy
    if isinstance(sys.stdout, _ThreadAwareStdout):
        _proxy = sys.stdout
        return
    _proxy = _ThreadAwareStdout(sys.stdout)
    sys.stdout = _proxy


def _uninstall_stdout() -> None:
    global _proxy
    if _proxy is not None and sys.stdout is _proxy:
        sys.stdout = _proxy.target
    _proxy = None


# log records made on a bound thread carry its site ---------------------------------------------------------
class _ThreadSite:
    """A non-data descriptor: a record's ``site`` is its thread's site unless ``extra`` gave it one."""

    def __get__(self, record: Any, owner: Any = None) -> Any:
        if record is None:
            return self
        return record.__dict__.get("_flarelite_thread_site")


class SiteLogRecord(logging.LogRecord):
    """A LogRecord made on a bound thread: ``site`` reads the thread's site (``extra={"site": ...}`` still wins)."""

    site = _ThreadSite()


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = (_factory_before or logging.LogRecord)(*args, **kwargs)
    binding = current_binding()
    if binding is not None and type(record) is logging.LogRecord:
        record.__class__ = SiteLogRecord
        record.__dict__["_flarelite_thread_site"] = binding.site_name
    return record


def _install_record_factory() -> None:
    global _factory_before
    current = logging.getLogRecordFactory()
    if current is _record_factory:
        return
    _factory_before = current
    logging.setLogRecordFactory(_record_factory)


def _uninstall_record_factory() -> None:
    global _factory_before
    if logging.getLogRecordFactory() is _record_factory and _factory_before is not None:
        logging.setLogRecordFactory(_factory_before)
        _factory_before = None
