"""Log lines never carry raw control characters, and a peer cannot flood them.

A name a peer sent (``"site-1\\x1b[2J\\nFAKE LINE"``) is written
escaped (``site-1\\x1b[2J\\nFAKE LINE``), so it can neither forge a log line nor drive the operator's terminal.

``EscapeControls`` is a ``logging.Filter``: put it on a handler (``runtime.logs`` puts it on the site log files
and the console) or on a logger (the gRPC transport puts it on ``flarelite.grpc``). It rewrites the record once:
the values formatted into the message are escaped whole (newlines included); the message template, which is
the program's own text, keeps its newlines and tabs.

``RateLimit`` says when a line that a peer can cause again and again (a bad stream, a refused frame, a dropped
request) may be written again: once per key per interval, the rest counted for the next line.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029)


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every control character (C0, DEL, C1, line/paragraph separators) written as an escape.

    Characters in ``keep`` (e.g. ``"\\n\\t"``) are left as they are.
    """
    if not any(_is_control(ch) and ch not in keep for ch in text):
        return text
    return "".join(
        (_NAMED.get(ch) or f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        if _is_control(ch) and ch not in keep
        else ch
        for ch in text
    )


class _Escaped:
    """A logged value whose ``str`` and ``repr`` are escaped (numbers are left alone, so ``%d`` still works)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape_controls(str(self.value))

    def __repr__(self) -> str:
        return escape_controls(repr(self.value))


def _escape_arg(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _Escaped(value)


class EscapeControls(logging.Filter):
    """Escape the control characters of a record's message (see the module docstring); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_controls_escaped", False):
            return True
        record._controls_escaped = True  # type: ignore[attr-defined]
        msg = record.msg if isinstance(record.msg, str) else str(record.msg)
        args = record.args
        if args:
            if isinstance(args, dict):
                args = {key: _escape_arg(value) for key, value in args.items()}
            else:
                args = tuple(_escape_arg(value) for value in args)
            try:
                text = escape_controls(msg, keep="\n\t") % args
            except (TypeError, ValueError, KeyError):  # a bad format: leave it to logging to report
                return True
        else:
            text = escape_controls(msg, keep="\n\t")
        record.msg, record.args = text, None
        return True


class EscapingFormatter(logging.Formatter):
    """A Formatter whose tracebacks are escaped too (an exception's message may quote what a peer sent)."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return escape_controls(super().formatException(ei), keep="\n\t")

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return escape_controls(super().formatStack(stack_info), keep="\n\t")


ESCAPE_CONTROLS = EscapeControls()


def install(logger: logging.Logger | logging.Handler) -> None:
    """Add the shared ``EscapeControls`` filter to ``logger`` (or a handler) once."""
    if ESCAPE_CONTROLS not in logger.filters:
        logger.addFilter(ESCAPE_CONTROLS)


class RateLimit:
    """Once per key per ``interval`` seconds; the occurrences in between are counted. Thread-safe.

    At most ``max_keys`` keys are remembered (past that, the quiet ones are forgotten).
    """

    def __init__(self, interval: float = 10.0, max_keys: int = 4096) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> tuple[int, float] | None:
        """None: stay quiet (this one is counted). Else write the line: (how many were kept quiet for ``key``
        since its last line, seconds since that line, or ``interval`` for its first)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._quiet[key] = self._quiet.get(key, 0) + 1
                return None
            if len(self._last) > self.max_keys:
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
                self._quiet = {k: n for k, n in self._quiet.items() if k in self._last}
            self._last[key] = now
            return self._quiet.pop(key, 0), (now - last if last is not None else self.interval)
