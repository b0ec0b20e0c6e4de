"""The external-process exchange: a training script in its own process, talking to its site over a Unix socket.

The site writes a bootstrap file (JSON, mode 0600, in a private 0700 folder) and names it in the environment
variable ``FLARELITE_CLIENT_API_BOOTSTRAP``. ``flare.init()`` reads it, connects to the socket it names,
presents the token it holds (HELLO) and gets the Client API config back (READY). A reader thread then takes
TASK, ABORT, SHUTDOWN and HEARTBEAT messages; a heartbeat thread sends HEARTBEAT every ``heartbeat_interval``
and gives the site up when nothing came from it for ``heartbeat_timeout`` seconds (receive() then returns None,
so the script's loop ends).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

from flarelite.apis.shareable import Shareable
from flarelite.errors import CodecError, TransportError

from .channel import HELLO_MAX_SIZE, MAX_MESSAGE_SIZE, Channel, Msg
from .exchange import ClientAPIExchange, TaskMessage, wait_for_task

_log = logging.getLogger("flarelite.client")
CONNECT_TIMEOUT = 60.0
_MAX_QUEUED_TASKS = 4  # the site sends one task at a time; a few more is a broken peer


def read_bootstrap(path: str) -> dict:
    """Return the bootstrap a site wrote for its training script.

    Raises:
        RuntimeError: the file cannot be read, is not JSON, or lacks the socket path or the token.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"cannot read the Client API bootstrap file {path!r}: {exc}; this script must be started by its site "
            "(a ClientAPIExecutor with execution_mode='external_process')"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("socket"), str) or not isinstance(data.get("token"), str):
        raise RuntimeError(f"the Client API bootstrap file {path!r} lacks 'socket' or 'token'")
    return data


def _number(data: dict, key: str, default: float) -> float:
    value = data.get(key, default)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _connect(path: str, timeout: float, site: str) -> socket.socket:
    """Connect to the site's socket, retrying while its backlog is full for a moment (EAGAIN), up to ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except (BlockingIOError, InterruptedError) as exc:
            sock.close()
            if time.monotonic() + delay > deadline:
                error: OSError = exc
            else:
                time.sleep(delay)  # a backoff between tries, not a synchronisation
                delay = min(delay * 2, 0.2)
                continue
        except OSError as exc:
            sock.close()
            error = exc
        raise RuntimeError(
            f"cannot connect to site {site} at {path!r}: {error}; is the site still running this job?"
        ) from error


class SocketExchange(ClientAPIExchange):
    """The trainer side of the local channel to a ClientAPIExecutor (one connection per script process)."""

    def __init__(self, bootstrap_path: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        boot = read_bootstrap(bootstrap_path)
        self.site_name = str(boot.get("site_name") or "")
        self.job_id = str(boot.get("job_id") or "")
        self.heartbeat_interval = _number(boot, "heartbeat_interval", 5.0)
        self.heartbeat_timeout = _number(boot, "heartbeat_timeout", 30.0)
        limit = int(_number(boot, "max_message_size", MAX_MESSAGE_SIZE))
        parent = boot.get("parent_pid")
        self._parent_pid = parent if isinstance(parent, int) and not isinstance(parent, bool) else os.getppid()
        self._cond = threading.Condition()
        self._queue: deque[TaskMessage] = deque()
        self._aborted: set[str] = set()
        self._taken: str | None = None
        self._stop_reason: str | None = None
        self._abort_reason: str | None = None
        self._lost: str | None = None
        self._shut_down = False
        self._wake = threading.Event()
        sock = _connect(boot["socket"], connect_timeout, self.site_name or "?")
        self.channel = Channel(sock, peer=f"site {self.site_name or '?'}", max_message_size=limit)
        try:
            self.channel.send(Msg.HELLO, {"token": boot["token"], "pid": os.getpid()})
            kind, body = self.channel.recv(deadline=time.monotonic() + connect_timeout, max_size=HELLO_MAX_SIZE * 16)
        except (TransportError, CodecError) as exc:
            self.channel.close()
            raise RuntimeError(f"the handshake with site {self.site_name or '?'} failed: {exc}") from exc
        if kind != Msg.READY:
            self.channel.close()
            raise RuntimeError(f"site {self.site_name or '?'} answered the handshake with message kind {kind}")
        self._config: dict = body["config"]
        threading.Thread(target=self._read_loop, name="client-api-reader", daemon=True).start()
        threading.Thread(target=self._heartbeat_loop, name="client-api-heartbeat", daemon=True).start()

    # background threads --------------------------------------------------------------------------------------
    def _lose(self, reason: str) -> None:
        with self._cond:
            if self._lost is None:
                self._lost = reason
            self._cond.notify_all()
        self._wake.set()
        self.channel.close()

    def _read_loop(self) -> None:
        while True:
            try:
                kind, body = self.channel.recv()
            except TransportError as exc:
                if not self._shut_down:
                    self._lose(f"lost the connection to the site: {exc}")
                return
            if kind == Msg.TASK:
                with self._cond:
                    if len(self._queue) >= _MAX_QUEUED_TASKS:
                        self._cond.notify_all()
                        overflow = True
                    else:
                        self._queue.append(TaskMessage(body["task_id"], body["task_name"], body["data"]))
                        self._cond.notify_all()
                        overflow = False
                if overflow:
                    self._lose(f"the site sent more than {_MAX_QUEUED_TASKS} tasks at once")
                    return
                self._send(Msg.ACCEPTED, {"task_id": body["task_id"]})
            elif kind == Msg.ABORT:
                with self._cond:
                    if body["task_id"] is None:
                        self._abort_reason = body["reason"]
                    else:
                        self._aborted.add(body["task_id"])
                        self._queue = deque(t for t in self._queue if t.task_id != body["task_id"])
                    self._cond.notify_all()
            elif kind == Msg.SHUTDOWN:
                with self._cond:
                    self._stop_reason = body["reason"] or "the site asked the script to shut down"
                    self._cond.notify_all()
            elif kind != Msg.HEARTBEAT:
                self._lose(f"the site sent an unexpected message kind {kind}")
                return

    def _heartbeat_loop(self) -> None:
        while not self._wake.wait(self.heartbeat_interval):
            if self.channel.closed:
                return
            if os.getppid() != self._parent_pid:
                self._lose("the site process is gone")
                return
            if self.heartbeat_timeout > 0 and time.monotonic() - self.channel.last_seen > self.heartbeat_timeout:
                self._lose(f"no message from the site for {self.heartbeat_timeout}s")
                return
            self._send(Msg.HEARTBEAT, {})

    def _send(self, kind: int, body: dict) -> bool:
        try:
            self.channel.send(kind, body, stall_timeout=self.heartbeat_timeout or None)
            return True
        except TransportError as exc:
            if not self._shut_down:
                self._lose(f"lost the connection to the site: {exc}")
            return False

    # ClientAPIExchange ---------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Return a copy of the config the site sent at the handshake."""
        return copy.deepcopy(self._config)

    def receive_task(self, timeout: float | None = None) -> TaskMessage | None:
        """Block until the site sends a task; None when stopping, when the site is gone, or after ``timeout``."""
        return wait_for_task(
            self._cond,
            timeout,
            self._take,
            lambda: self._abort_reason,
            lambda: self._stop_reason is not None or self._lost is not None or self._shut_down,
        )

    def _take(self) -> TaskMessage | None:
        if not self._queue:
            return None
        task = self._queue.popleft()
        self._taken = task.task_id
        return task

    def send_result(self, task_id: str, result: Shareable) -> bool:
        """Send the result; False if the task was aborted or the site is gone (codec errors are raised)."""
        with self._cond:
            if task_id in self._aborted or self.is_stopped_locked() or self._taken != task_id:
                return False
            self._taken = None
        try:
            self.channel.send(Msg.RESULT, {"task_id": task_id, "data": result}, stall_timeout=self.heartbeat_timeout)
        except TransportError as exc:
            self._lose(f"lost the connection to the site: {exc}")
            return False
        return True

    def send_log(self, record: dict) -> None:
        """Send a metric record; a value the codec cannot carry is logged and dropped."""
        if self.is_stopped():
            return
        try:
            self.channel.send(Msg.LOG, {"record": record}, stall_timeout=self.heartbeat_timeout or None)
        except CodecError as exc:
            _log.warning("metric %r dropped: %s", record.get("key"), exc)
        except TransportError as exc:
            self._lose(f"lost the connection to the site: {exc}")

    def shutdown(self) -> None:
        """Tell the site this script is done, and close the connection."""
        if self._shut_down:
            return
        if not self.is_stopped():
            self._send(Msg.SHUTDOWN, {"reason": "the training script called flare.shutdown()"})
        with self._cond:
            self._shut_down = True
            self._cond.notify_all()
        self._wake.set()
        self.channel.close()

    def is_stopped_locked(self) -> bool:
        """``is_stopped`` for a caller that holds the lock."""
        return (
            self._stop_reason is not None or self._abort_reason is not None or self._lost is not None or self._shut_down
        )

    def is_stopped(self) -> bool:
        """True once the site asked to shut down, aborted the job, was lost, or ``shutdown`` was called."""
        with self._cond:
            return self.is_stopped_locked()

    @property
    def lost_reason(self) -> Any:
        """Why the site was given up (None while connected)."""
        return self._lost
