"""Signal: a flag that one thread triggers and others poll (abort signals)."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any


class Signal:
    """A triggerable flag with an optional value; it also reads as triggered when its parent is."""

    def __init__(self, parent: Signal | None = None) -> None:
        self._value: Any = None
        self._trigger_time: float | None = None
        self._triggered = False
        self._parent = parent
        self._event = threading.Event()
        self._children: weakref.WeakSet[Signal] = weakref.WeakSet()
        if parent is not None:
            parent._children.add(self)
            if parent.triggered:
                self._event.set()

    def trigger(self, value: Any) -> None:
        """Trigger the signal, recording ``value`` and the time."""
        self._value = value
        self._trigger_time = time.time()
        self._triggered = True
        self._wake()

    def _wake(self) -> None:
        self._event.set()
        for child in list(self._children):  # waiters on descendants wake too (they read as triggered)
            child._wake()

    def reset(self, value: Any = None) -> None:
        """Clear the signal; ``value`` becomes its value."""
        self._value = value
        self._trigger_time = None
        self._triggered = False
        if not self.triggered:  # still triggered through an ancestor: keep waiters awake
            self._event.clear()

    @property
    def value(self) -> Any:
        """The value given to the last trigger (or reset)."""
        return self._value

    @property
    def trigger_time(self) -> float | None:
        """When the signal was triggered (epoch seconds), or None."""
        return self._trigger_time

    @property
    def parent(self) -> Signal | None:
        """The parent signal, if any."""
        return self._parent

    @property
    def triggered(self) -> bool:
        """True when this signal or one of its ancestors is triggered."""
        if self._triggered:
            return True
        return self._parent.triggered if self._parent is not None else False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until this signal or an ancestor is triggered, or ``timeout`` passes; return ``triggered``."""
        self._event.wait(timeout)
        return self.triggered
