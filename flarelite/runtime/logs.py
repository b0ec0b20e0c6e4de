"""Logging for sites: the console format, per-site log files, and which site a log record belongs to.

A record belongs to the site named by its ``site`` attribute (set by FLComponent.log_* and the runtime's
loggers) or, failing that, to the site whose thread wrote it (set with ``bind_thread``).

Every record that reaches the site log files or the console is written with its control characters escaped
(``flarelite.logsafe``): a site name such as ``"evil\x1b[2J\nFAKE"`` shows as ``evil\x1b[2J\nFAKE`` on one line.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

from .. import logsafe

CONSOLE_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # the log files' (and -l full's)
SHORT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"  # the default console's
_CONTEXT = re.compile(r"\[identity=([^,\]]*)(?:, run=[^,\]]*)?(?:, peer=([^,\]]*))?(?:, [a-z_]+=[^,\]]*)*\] - ")


class ShortFormatter(logsafe.EscapingFormatter):
    """The console's lines: the time of day, and the context prefix ``[identity=site-1, run=..., peer=site-2,
    ...] - `` shortened to ``[site-1 <- site-2]`` (the log files keep it whole). ``flarelite.`` is left off the
    runtime's logger names."""

    def __init__(self) -> None:
        super().__init__(SHORT_FORMAT, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        line = line.replace(" flarelite.", " ", 1)
        return _CONTEXT.sub(lambda m: f"[{m.group(1)}{' <- ' + m.group(2) if m.group(2) else ''}] ", line, count=1)


_thread_site = threading.local()


def bind_thread(site: str | None) -> None:
    """Attribute log records written by the current thread to ``site`` (None: to no site)."""
    _thread_site.name = site


def current_site() -> str | None:
    """Return the site bound to the current thread, or None."""
    return getattr(_thread_site, "name", None)


class _SiteRouter(logging.Handler):
    """Root handler that forwards each record to the file handler of the site it belongs to."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        logsafe.install(self)
        self._files: dict[str, logging.Handler] = {}
        self._files_lock = threading.Lock()

    def add(self, site: str, handler: logging.Handler) -> None:
        with self._files_lock:
            old = self._files.pop(site, None)
            self._files[site] = handler
        if old is not None:
            old.close()

    def remove(self, site: str) -> None:
        with self._files_lock:
            handler = self._files.pop(site, None)
        if handler is not None:
            handler.close()

    def emit(self, record: logging.LogRecord) -> None:
        site = getattr(record, "site", None) or current_site()
        if site is None:
            return
        handler = self._files.get(site)
        if handler is not None:
            handler.handle(record)


_router = _SiteRouter()
_install_lock = threading.Lock()
_console: logging.Handler | None = None
_pinned_level: int | None = None
CONSOLE_ENV = "FLARELITE_CONSOLE"  # "short" or "full": the console's lines (default: short on a terminal)


def short_console() -> bool:
    """Whether the console shows short lines (``ShortFormatter``): ``FLARELITE_CONSOLE=short|full`` decides, else
    whether stderr is a terminal. Piped or captured output keeps NVFlare's full lines, which scripts may parse;
    the simulator passes its own choice on to its site processes, whose output it pipes."""
    import sys

    choice = os.environ.get(CONSOLE_ENV, "").strip().lower()
    if choice in ("short", "full"):
        return choice == "short"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False  # the root level a log config chose (simulator -l): setup_logging keeps it


def pin_root_level(level: int | None) -> None:
    """Keep the root logger's level as a log config set it (None: let ``setup_logging`` lower it to INFO)."""
    global _pinned_level
    _pinned_level = level


def setup_logging(console: bool = True, level: int = logging.INFO) -> int:
    """Install the site router on the root logger (and a console handler if the root logger has none).

    The root logger's level is lowered to ``level`` so the site log files get every record at that level
    (unless a log config pinned it: ``pin_root_level``); the previous level is returned so the caller can
    restore it after the run.
    """
    global _console
    with _install_lock:
        root = logging.getLogger()
        previous = root.level
        if _router not in root.handlers:
            root.addHandler(_router)
        for handler in root.handlers:  # the user's own console handler too: no raw control characters
            logsafe.install(handler)
        if console and _console is None and not any(h is not _router for h in root.handlers):
            _console = logging.StreamHandler()
            _console.setFormatter(ShortFormatter() if short_console() else logsafe.EscapingFormatter(CONSOLE_FORMAT))
            logsafe.install(_console)
            root.addHandler(_console)
        if _pinned_level is None and (root.level == logging.NOTSET or root.level > level):
            root.setLevel(level)
        return previous


def restore_level(previous: int) -> None:
    """Put back the root logger's level that ``setup_logging`` returned."""
    logging.getLogger().setLevel(previous)


def open_site_log(site: str, folder: str) -> str:
    """Send the records of ``site`` to ``folder/log.txt`` (a new file for each run); return its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "log.txt")
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logsafe.EscapingFormatter(CONSOLE_FORMAT))
    logsafe.install(handler)
    _router.add(site, handler)
    return path


def close_site_log(site: str) -> None:
    """Close the log file of ``site``."""
    _router.remove(site)


class SiteLogger(logging.LoggerAdapter):
    """The runtime's logger for one site: prefixes ``[identity=..., run=...]`` and tags records with the site."""

    def __init__(self, name: str, site: str, job_id: str) -> None:
        super().__init__(logging.getLogger(name), {"site": site})
        logsafe.install(self.logger)  # its records are escaped whichever handler gets them
        self.prefix = f"[identity={site}, run={job_id}]"

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra)
        return f"{self.prefix} - {msg}", kwargs
