"""A run's progress on the console: one live line where the output is a terminal (tqdm), plain lines otherwise.

The server's task table feeds ``RunProgress``: each task out (its name, its targets, and the round its data's
NVFlare headers ``current_round`` / ``num_rounds`` name), each result in, each task done. Every workflow goes
through that table (FedAvg, ScatterAndGather, the cyclic and p2p controllers, your own), so one mechanism
covers them all. What it shows::

    round 3 (3/10 done) | train: 2/3 results, waiting for site-3 | 0:12

``FLARELITE_PROGRESS`` chooses: ``live`` (the tqdm line; needs ``tqdm``), ``lines`` (a log line of logger
``flarelite.progress`` at most every 5 s and one at the end, in the server's log file too), ``off``. The
default is ``live`` where stderr is a terminal and tqdm is installed, else ``lines``. The simulator, when it
shows a live line, runs its server process with ``piped`` (marked lines on stdout, ``piped_text``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

LOGGER_NAME = "flarelite.progress"
PROGRESS_ENV = "FLARELITE_PROGRESS"
LINE_INTERVAL = 5.0  # seconds between plain lines
_WAITING_SHOWN = 3  # names of sites a task still waits for, at most
_log = logging.getLogger(LOGGER_NAME)
PIPE_MARK = "##flarelite-progress## "  # starts a line a site process prints for the simulator's live line
PIPE_INTERVAL = 0.5


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Task:
    def __init__(self, name: str, targets: list[str], round_: int | None) -> None:
        self.name = name
        self.targets = list(targets)
        self.answered: set[str] = set()
        self.round = round_


class RunProgress:
    """The run's rounds and standing tasks, shown through a display (``Lines``, ``Live`` or None: nothing).

    Never raises into the caller: the run matters more than its progress line.
    """

    def __init__(self, display: Lines | Live | None) -> None:
        self.display = display
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}  # by task id
        self._round: int | None = None
        self._rounds: int | None = None
        self._rounds_done: set[int] = set()
        self._tasks_done = 0
        self._start = time.monotonic()

    # fed by the scheduler --------------------------------------------------------------------------------
    def task_out(self, task_id: str, name: str, targets: list[str], data: Any = None) -> None:
        """A task was scheduled for ``targets``; ``data`` (its Shareable) may name the round."""
        round_ = rounds = None
        get_header = getattr(data, "get_header", None)
        if callable(get_header):
            round_ = _int_or_none(get_header("current_round"))
            rounds = _int_or_none(get_header("num_rounds"))
        with self._lock:
            self._tasks[task_id] = _Task(name, targets, round_)
            if round_ is not None:
                self._round = round_
            if rounds is not None and rounds > 0:
                self._rounds = rounds
        self._show()

    def result_in(self, task_id: str, site: str) -> None:
        """``site`` answered the task."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            task.answered.add(site)
        self._show()

    def task_done(self, task_id: str) -> None:
        """The task ended (all answered, enough answered, timed out, cancelled)."""
        with self._lock:
            task = self._tasks.pop(task_id, None)
            if task is None:
                return
            self._tasks_done += 1
            if task.round is not None and not any(t.round == task.round for t in self._tasks.values()):
                self._rounds_done.add(task.round)
        self._show()

    def close(self, failure: str | None = None) -> None:
        """The run ended: one last line (saying ``failure`` when it failed), and the live line stays as it."""
        with self._lock:
            text = self._final(failure)
            snapshot = self._snapshot()
        try:
            if self.display is not None:
                self.display.close(text, snapshot)
        except Exception:  # a display must not fail the run
            _log.debug("progress display failed", exc_info=True)

    # what it shows ---------------------------------------------------------------------------------------
    def summary(self) -> str:
        """One line: the round, each standing task's answers and whom it waits for, the time so far."""
        parts = []
        if self._round is not None or self._rounds:
            total = f"/{self._rounds}" if self._rounds else ""
            parts.append(f"round {self._round} ({len(self._rounds_done)}{total} done)")
        for task in list(self._tasks.values())[:2]:
            text = f"{task.name}: {len(task.answered)}/{len(task.targets)} results"
            if 0 < len(task.targets) - len(task.answered) <= _WAITING_SHOWN:  # names only then: O(1) per result
                waiting = [t for t in task.targets if t not in task.answered]
                if waiting:
                    text += f", waiting for {', '.join(waiting)}"
            parts.append(text)
        if len(self._tasks) > 2:
            parts.append(f"{len(self._tasks) - 2} more tasks")
        if not parts:
            parts.append("waiting for the first task")
        parts.append(_clock(time.monotonic() - self._start))
        return " | ".join(parts)

    def _final(self, failure: str | None) -> str:
        done = f"{len(self._rounds_done)}/{self._rounds} rounds done, " if self._rounds else ""
        text = f"{done}{self._tasks_done} tasks in {_clock(time.monotonic() - self._start)}"
        return f"failed: {failure} ({text})" if failure else f"finished: {text}"

    def _snapshot(self) -> tuple[int, int | None]:
        return len(self._rounds_done), self._rounds

    def _show(self) -> None:
        if self.display is None:
            return
        try:
            with self._lock:
                text = self.summary()
                snapshot = self._snapshot()
            self.display.show(text, snapshot)
        except Exception:
            _log.debug("progress display failed", exc_info=True)


class Lines:
    """Plain lines: logger ``flarelite.progress`` at INFO, at most one every ``interval`` seconds, and the last."""

    def __init__(self, site: str | None = None, interval: float = LINE_INTERVAL) -> None:
        self.interval = interval
        self._extra = {"site": site} if site else {}
        self._last = time.monotonic()  # the first line after ``interval``: a short run says it once, at its end
        self._lock = threading.Lock()

    def show(self, text: str, snapshot: tuple[int, int | None] = (0, None)) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                return
            self._last = now
        self.close(text, snapshot)

    def close(self, text: str, snapshot: tuple[int, int | None] = (0, None)) -> None:
        _log.info("%s", text, extra=self._extra)


class Piped(Lines):
    """For a process whose output the simulator shows with its own live line: marked lines on stdout (the mark,
    rounds done, rounds or 0, the text), every ``PIPE_INTERVAL`` seconds at most (``piped_text`` reads them)."""

    def __init__(self, interval: float = PIPE_INTERVAL) -> None:
        super().__init__(None, interval)

    def close(self, text: str, snapshot: tuple[int, int | None] = (0, None)) -> None:
        done, total = snapshot
        sys.stdout.write(f"{PIPE_MARK}{done} {total or 0} {text}\n")
        sys.stdout.flush()


class Live:
    """One live line at the bottom of a terminal (a tqdm bar over the rounds when they are known); console
    lines written meanwhile go above it (``write``; the root logger's console handlers are sent there while
    it is shown)."""

    def __init__(self, stream: Any = None) -> None:
        from tqdm import tqdm  # only where the output is a terminal

        self._tqdm = tqdm
        self.stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        self._lock = threading.RLock()
        self._closed = False
        self._undo: list[tuple[logging.StreamHandler, Any]] = []

    def _ensure(self, total: int | None) -> Any:
        if self._bar is None:
            width = _columns(self.stream)
            self._bar = self._tqdm(
                total=total,
                file=self.stream,
                unit="round",
                dynamic_ncols=width is None,  # follow the terminal's width where it has one
                ncols=width,
                nrows=None if width is None else 24,  # tqdm hides a bar below a terminal 0 lines high
                leave=True,
                bar_format="|{bar:16}| {desc}" if total else "{desc}",
            )
            self._console_above()
        elif total and self._bar.total != total:
            self._bar.total = total
        return self._bar

    def show(self, text: str, snapshot: tuple[int, int | None] = (0, None)) -> None:
        done, total = snapshot
        with self._lock:
            if self._closed:
                return
            bar = self._ensure(total)
            bar.n = done
            bar.set_description_str(text, refresh=False)
            bar.refresh()

    def close(self, text: str | None = None, snapshot: tuple[int, int | None] = (0, None)) -> None:
        """Show ``text`` (None: what it shows now) and leave it there as the last line."""
        with self._lock:
            if self._closed:
                return
            if text is not None:
                self.show(text, snapshot)
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            for handler, stream in self._undo:
                handler.setStream(stream)
            self._undo.clear()

    def _console_above(self) -> None:
        """The root logger's console handlers that write where this line is drawn write above it instead."""
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.stream is self.stream:  # not a FileHandler
                self._undo.append((handler, handler.setStream(_Above(self))))

    def write(self, line: str) -> None:
        """Print ``line`` (a console line, newline included) above the live line."""
        with self._lock:
            if self._bar is None or self._closed:
                self.stream.write(line)
                self.stream.flush()
            else:
                self._tqdm.write(line.rstrip("\n"), file=self.stream)


def _columns(stream: Any) -> int | None:
    """None where the terminal says its width; else 120 (a terminal without a size, such as script(1)'s)."""
    try:
        if os.get_terminal_size(stream.fileno()).columns > 0:
            return None
    except (AttributeError, ValueError, OSError):
        pass
    return 120


class _Above:
    """A console handler's stream while a live line is shown: each write goes above the line."""

    def __init__(self, live: Live) -> None:
        self._live = live

    def write(self, text: str) -> None:
        self._live.write(text)

    def flush(self) -> None:
        pass


def _tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def choice() -> str:
    """``live``, ``lines``, ``piped`` or ``off``: what ``FLARELITE_PROGRESS`` says, else live on a terminal with
    tqdm, else lines."""
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in ("lines", "off", "piped"):
        return value
    if value == "live" or _isatty(sys.stderr):
        return "live" if _tqdm_available() else "lines"
    return "lines"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def console_display(site: str | None = None, stream: Any = None) -> Lines | Live | None:
    """The display ``choice()`` names, for the process's console (``site``: whose log file gets the lines)."""
    picked = choice()
    if picked == "off":
        return None
    if picked == "live":
        return Live(stream)
    if picked == "piped":
        return Piped()
    return Lines(site)


def piped_text(line: str) -> tuple[str, tuple[int, int | None]] | None:
    """The text and (rounds done, rounds) of a line a ``Piped`` display printed, else None."""
    if not line.startswith(PIPE_MARK):
        return None
    done, total, text = (line[len(PIPE_MARK) :].rstrip("\n").split(" ", 2) + ["", ""])[:3]
    if not (done.isdigit() and total.isdigit()):
        return None
    return text, (int(done), int(total) or None)
