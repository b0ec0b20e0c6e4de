"""Threads shared by many sites of one process (the in-memory simulator), so that an idle site holds none.

``ThreadPool`` runs submitted calls on at most ``max_threads`` threads, started on demand; a thread that finds
no work for ``idle_timeout`` seconds exits. ``Lane`` puts one site's calls on a pool in order, at most
``width`` of them at a time (a site's tasks: one; its aux handlers: up to 16), with the interface of the
site's own ``WorkerPool`` (``submit``, ``shutdown``). ``SharedThreads`` is the pair a simulated deployment
uses: one pool for the sites' tasks (an executor may block there, waiting for its peers: at most
``max_blocked_sites`` do at once) and one for aux handlers and side-by-side sends.

A full pool whose every thread waits for another thread (on a lock, an event, a queue, or polling with sleep)
while calls wait for a thread cannot go on: the calls that would wake them are the ones waiting. After
``stall_timeout`` seconds with no call finished, the pool looks at its threads twice (``SAMPLE`` apart): when each
is in a threading/queue wait or stayed at one instruction, and together they used under a quarter of a core, it
says so (``on_stall``, with a message naming the limit) instead of hanging. Threads that compute, even in one long
C call, use the CPU and are not a stall.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable

from .logs import bind_thread

_log = logging.getLogger("flarelite.runtime.pool")

SERVICE_THREADS = 256  # aux handlers and side-by-side sends of all the sites at once: at least, or max_blocked_sites
STALL_TIMEOUT = 10.0  # seconds every thread of a full pool may wait, with calls queued, before it is a stall
IDLE_TIMEOUT = 2.0  # seconds a thread without work stays
CORE_THREADS = 16  # threads a pool starts as soon as calls wait; past them it grows only when its threads block
GROW_AFTER = 0.01  # seconds calls may wait with no call starting before the pool adds threads (a quarter more)
SAMPLE = 0.25  # seconds between the two looks at a full pool's threads that decide whether they all wait
_current = threading.local()  # .lane: the Lane whose call this thread runs
_WAITING_IN = {os.path.normcase(m.__file__) for m in (threading, queue) if m.__file__}


@contextmanager
def _working_for(site: str, role: str) -> Iterator[None]:
    """Name the current pool thread for ``site`` (logs, thread dumps) while it works for it."""
    thread = threading.current_thread()
    base = thread.name
    thread.name = f"{site}-{role} ({base})"
    bind_thread(site)
    try:
        yield
    finally:
        thread.name = base
        bind_thread(None)


def _waiting(frame: Any) -> bool:
    """Whether a thread whose innermost frame is ``frame`` waits on another thread (threading or queue)."""
    return frame is not None and os.path.normcase(frame.f_code.co_filename) in _WAITING_IN


def _cpu_seconds(ident: int) -> float | None:
    """CPU time the thread ``ident`` has used (None where the platform cannot tell)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError, ValueError):
        return None


def _all_waiting(idents: list[int], look: float = SAMPLE) -> bool:
    """Whether every thread of ``idents`` waits: it is in a threading/queue wait, or it stayed at the same
    instruction for ``look`` seconds (a sleep, a lock taken in C) while together they used under a quarter of a
    core (a long computation in C stays at one instruction too, but uses the CPU)."""
    before = sys._current_frames()
    where = {i: (id(f), f.f_lasti) for i in idents if (f := before.get(i)) is not None}
    cpu = {i: _cpu_seconds(i) for i in idents}
    time.sleep(look)
    after = sys._current_frames()
    used = 0.0
    for ident in idents:
        frame = after.get(ident)
        if frame is None:
            continue  # it ended its call: not waiting, but not this stall's concern either
        if not _waiting(frame) and where.get(ident) != (id(frame), frame.f_lasti):
            return False  # it moves: it works
        start, now = cpu[ident], _cpu_seconds(ident)
        if start is not None and now is not None:
            used += now - start
    return used < look / 4


class ThreadPool:
    """Up to ``max_threads`` threads named ``<name>_<i>`` running submitted calls in submission order.

    Up to ``CORE_THREADS`` threads start as calls come; past them the pool grows (by a quarter, up to
    ``max_threads``) only when calls wait and none has started for ``GROW_AFTER`` seconds: every thread is busy
    and stays so (blocked). Short calls are run by few threads, which switch less than thousands would.
    """

    def __init__(
        self,
        name: str,
        max_threads: int,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        on_stall: Callable[[str], None] | None = None,
        stall_hint: str = "",
    ) -> None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ValueError(f"{name}: max_threads must be a positive int, got {max_threads!r}")
        self.name = name
        self.max_threads = max_threads
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.stall_hint = stall_hint
        self._cv = threading.Condition()
        self._work: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._threads = 0
        self._idle = 0
        self._busy: dict[int, threading.Thread] = {}
        self._finished = 0  # calls finished so far: progress, as the stall watch sees it
        self._started = 0  # calls started so far: progress, as the growth sees it
        self._serial = 0
        self._watching = False
        self._closed = False
        self.waited_full = 0  # calls that found every thread of the full pool busy (they waited for one)

    @property
    def threads(self) -> int:
        """How many threads the pool has now (busy or idle)."""
        return self._threads

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; a thread runs it as soon as one is free (a new one while under the limit).

        Raises:
            RuntimeError: the pool is closed.
        """
        start = watch = False
        with self._cv:
            if self._closed:
                raise RuntimeError(f"the thread pool {self.name} is closed")
            self._work.append((fn, args))
            if self._idle > len(self._work) - 1:
                self._cv.notify()
            elif self._threads < min(self.max_threads, CORE_THREADS):
                self._threads += 1
                start = True
            else:
                if self._threads >= self.max_threads:
                    self.waited_full += 1
                if not self._watching:
                    self._watching = watch = True
        if start:
            self._start_thread()
        if watch:
            threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True).start()

    def submit_future(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue ``fn(*args)`` and return a Future of its result (as ``concurrent.futures.Executor.submit``)."""
        future: Future = Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the caller gets it from the future
                future.set_exception(exc)

        self.submit(call)
        return future

    def _start_thread(self) -> None:
        """Start one thread (``_threads`` already counts it)."""
        with self._cv:
            self._serial += 1
            serial = self._serial
        threading.Thread(target=self._run, name=f"{self.name}_{serial}", daemon=True).start()

    def _run(self) -> None:
        me = threading.current_thread()
        ident = threading.get_ident()
        cv = self._cv
        while True:
            with cv:
                if not self._work and not self._closed:
                    self._idle += 1
                    cv.wait_for(lambda: self._work or self._closed, self.idle_timeout)
                    self._idle -= 1
                if not self._work:  # idle too long, or closed
                    self._threads -= 1
                    return
                fn, args = self._work.popleft()
                self._busy[ident] = me
                self._started += 1
            try:
                fn(*args)
            except BaseException:  # the callers report their own errors; this is a last resort (sys.exit too)
                _log.exception("unhandled error in a thread of %s", self.name)
            finally:
                bind_thread(None)
                with cv:
                    del self._busy[ident]
                    self._finished += 1

    def _watch(self) -> None:
        """While calls wait and no thread is idle: add threads when none starts a call for ``GROW_AFTER`` (the
        busy ones block); at ``max_threads``, report a stall when they all wait and nothing finishes."""
        started, starving_since = -1, time.monotonic()
        finished, idle_since = -1, time.monotonic()
        finished_then = -1
        while True:
            busy: list[int] = []
            with self._cv:
                full = self._threads >= self.max_threads
            time.sleep(min(1.0, self.stall_timeout / 4) if full else GROW_AFTER / 2)
            grow = 0
            with self._cv:
                if not self._work or self._closed:  # (only then: a call may wait behind one an idle thread takes)
                    self._watching = False
                    return
                now = time.monotonic()
                if self._started != started or self._idle:
                    started, starving_since = self._started, now
                elif self._threads < self.max_threads:
                    if now - starving_since >= GROW_AFTER:
                        grow = min(self.max_threads - self._threads, max(1, self._threads // 4), len(self._work))
                        self._threads += grow
                        starving_since = now
                if len(self._busy) < self.max_threads:
                    finished = -1  # the stall watch counts only while every thread of a full pool is busy
                elif self._finished != finished:
                    finished, idle_since = self._finished, now
                elif now - idle_since >= self.stall_timeout:
                    busy = list(self._busy)
                    finished_then = self._finished
                    idle_since = now  # (looked at again a stall_timeout later unless this is one)
                else:
                    busy = []
            if busy and _all_waiting(busy):
                with self._cv:
                    if self._finished == finished_then and self._work and not self._closed:
                        queued = len(self._work)
                        self._watching = False
                        break
            for _ in range(grow):
                self._start_thread()
        message = (
            f"{self.name}: all {self.max_threads} threads have been waiting for {self.stall_timeout:.0f}s with "
            f"nothing finished, and {queued} calls wait for a thread: {self.stall_hint}"
        )
        _log.error("%s", message)
        if self.on_stall is not None:
            self.on_stall(message)

    def close(self) -> None:
        """Take no more calls; idle threads exit, busy ones after their call (calls still queued are run)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class Lane:
    """One site's calls on a shared pool, in order, at most ``width`` at a time; as ``WorkerPool`` for a site."""

    def __init__(self, pool: ThreadPool, site: str, width: int = 1, role: str = "main") -> None:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.pool = pool
        self.site = site
        self.width = width
        self.role = role  # the thread is named "<site>-<role> (<pool thread>)" while it runs a call
        self._lock = threading.Condition()
        self._items: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._running = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` behind this site's earlier calls.

        Raises:
            RuntimeError: the lane is shut down (the site is ending).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the calls of {self.site} are shut down")
            if self._running >= self.width:
                self._items.append((fn, args))
                return
            self._running += 1
        self.pool.submit(self._call, fn, args)

    def _call(self, fn: Callable[..., Any], args: tuple) -> None:
        with _working_for(self.site, self.role):
            _current.lane = self
            try:
                fn(*args)
            except BaseException:  # (sys.exit too: the lane must go on to the site's next call)
                _log.exception("unhandled error in a call of %s", self.site)
            finally:
                _current.lane = None
        with self._lock:
            if self._items:  # the next one goes to the back of the pool's queue: the other sites get turns
                nxt = self._items.popleft()
            else:
                self._running -= 1
                self._lock.notify_all()
                return
        try:
            self.pool.submit(self._call, *nxt)
        except RuntimeError:  # the pool is closed (the run is over): what is left of this site's calls is dropped
            _log.debug("the pool %s is closed: %d calls of %s dropped", self.pool.name, len(self._items) + 1, self.site)
            with self._lock:
                self._items.clear()
                self._running -= 1
                self._lock.notify_all()

    def shutdown(self, drain_timeout: float = 0.0) -> bool:
        """Take no more calls; with ``drain_timeout > 0`` let those queued run first, waiting up to that long.

        Returns True when none of this site's calls is running any more (the caller's own call not counted).
        """
        mine = 1 if getattr(_current, "lane", None) is self else 0
        with self._lock:
            self._closed = True
            if drain_timeout <= 0:
                self._items.clear()
                return self._running <= mine
            self._lock.wait_for(lambda: self._running <= mine, drain_timeout)
            return self._running <= mine


class PoolExecutor:
    """``submit`` -> Future on a pool, for code written against ``ThreadPoolExecutor`` (a site's senders)."""

    def __init__(self, pool: ThreadPool, site: str) -> None:
        self.pool = pool
        self.site = site

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        site = self.site

        def call() -> Any:
            with _working_for(site, "send"):
                return fn(*args)

        return self.pool.submit_future(call)

    def shutdown(self, wait: bool = True) -> None:
        """Nothing to let go: the threads are the pool's."""


class SharedThreads:
    """The thread pools of one simulated deployment: the sites' tasks and their aux handlers and sends."""

    def __init__(
        self,
        max_blocked_sites: int,
        service_threads: int | None = None,
        *,
        stall_timeout: float | None = None,
        on_stall: Callable[[str], None] | None = None,
    ) -> None:
        stall_timeout = STALL_TIMEOUT if stall_timeout is None else stall_timeout
        # as many handlers may block as sites may (each blocked executor's request can hold one), 256 at least
        service_threads = max(SERVICE_THREADS, max_blocked_sites) if service_threads is None else service_threads
        self.max_blocked_sites = max_blocked_sites
        self.tasks = ThreadPool(
            "sim-task",
            max_blocked_sites,
            stall_timeout=stall_timeout,
            on_stall=on_stall,
            stall_hint=(
                f"the in-process simulator runs at most {max_blocked_sites} sites' tasks at once "
                f"(max_blocked_sites={max_blocked_sites}), and these wait for sites that have not started theirs "
                "(a job whose sites all execute at once and wait for each other, such as a synchronous "
                "peer-to-peer algorithm); raise max_blocked_sites to the number of sites, or use protocol='unix'. "
                f"(Tasks that wait {stall_timeout:.0f}s for anything else, a sleep or another process, while other "
                "sites' tasks wait for a thread look the same: raising max_blocked_sites lets them all run at once)"
            ),
        )
        self.service = ThreadPool(
            "sim-aux",
            service_threads,
            stall_timeout=stall_timeout,
            on_stall=on_stall,
            stall_hint=(
                f"the in-process simulator runs at most {service_threads} aux handlers at once (as many as "
                f"max_blocked_sites={max_blocked_sites}, at least {SERVICE_THREADS}), and these wait for requests "
                "that wait for a thread (handlers that wait for other sites' handlers); raise max_blocked_sites, "
                "let handlers answer without waiting, or use protocol='unix'"
            ),
        )

    def site_lane(self, site: str) -> Lane:
        """The lane of ``site``'s own work (joining, its tasks one at a time, its end)."""
        return Lane(self.tasks, site, 1)

    def aux_lane(self, site: str, width: int) -> Lane:
        """The lane of ``site``'s aux handlers, ``width`` at a time."""
        return Lane(self.service, site, width, "aux")

    def senders(self, site: str) -> PoolExecutor:
        """``site``'s side-by-side sends."""
        return PoolExecutor(self.service, site)

    def explain(self, failure: str) -> str:
        """``failure`` (the run's), with a note naming ``max_blocked_sites`` when sites' tasks had to wait for a
        thread: a job whose executors wait for their peers fails by its own timeout then, not by the stall watch."""
        waited = self.tasks.waited_full
        if not waited or "max_blocked_sites" in failure:
            return failure
        return (
            f"{failure} (note: {waited} site task(s) had to wait for a thread, as at most "
            f"max_blocked_sites={self.max_blocked_sites} sites execute at once in memory; if executors wait for "
            "their peers, raise max_blocked_sites to the number of sites, or use protocol='unix')"
        )

    def close(self) -> None:
        """Let every thread go once its work is done."""
        self.tasks.close()
        self.service.close()
