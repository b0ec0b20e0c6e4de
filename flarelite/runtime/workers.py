"""WorkerPool: a site's aux handler threads, started on demand up to a limit, fed through one queue."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from .logs import bind_thread

_log = logging.getLogger("flarelite.runtime.workers")
_STOP = None


class WorkerPool:
    """Runs submitted calls on up to ``max_workers`` threads named ``<site>-aux_<i>``; cheap to submit to."""

    def __init__(self, site: str, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.site = site
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; start another worker if none is idle and the limit allows.

        Raises:
            RuntimeError: the pool is shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the worker pool of {self.site} is shut down")
            self._queue.put((fn, args))
            if self._idle > 0:
                self._idle -= 1
                return
            if len(self._threads) >= self.max_workers:
                return
            thread = threading.Thread(target=self._work, name=f"{self.site}-aux_{len(self._threads)}", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        bind_thread(self.site)
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # the callers report their own errors; this is a last resort
                _log.exception("unhandled error in a worker of %s", self.site)
            with self._lock:
                if self._queue.empty():
                    self._idle += 1

    def shutdown(self, drain_timeout: float = 0.0) -> bool:
        """Stop accepting work; with ``drain_timeout > 0`` run what is queued first, waiting up to that long.

        Returns True when every worker has exited.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            threads = list(self._threads)
        if drain_timeout <= 0:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        for _ in threads:
            self._queue.put(_STOP)
        if drain_timeout <= 0:
            return False
        deadline = time.monotonic() + drain_timeout
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not current)
