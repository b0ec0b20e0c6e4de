"""External-process mode: the training script is a process of its own, talking to the site over a Unix socket.

Launch: ``command`` (an argv, no shell; a bare ``python3``/``python``, the default, means the site's own
interpreter, ``sys.executable``) in the site's app folder, in its own process group, with the site's
environment plus ``FLARELITE_CLIENT_API_BOOTSTRAP`` (a JSON file, mode 0600, in a private 0700 folder under
/tmp that also holds the socket) and the app's ``custom/`` folder first on ``PYTHONPATH`` (``CLIENT_API_TYPE``
removed). Its stdout goes to the site log at INFO, its stderr at WARNING, each line with the site context.

Handshake: the socket accepts connections until one presents the bootstrap's random token in its first message
(HELLO; anything else is closed), then accepts no more; connections are checked at once, so a stalled one delays
no other (``client_api.handshake``). No handshake within ``launch_timeout`` seconds, or the
process exiting first, is a failure that names the script and asks whether it called ``flare.init()`` (with
``launch_once`` the run ends with ``system_panic``; otherwise the task fails).

Running: one task at a time (TASK -> ACCEPTED -> RESULT); an ACCEPTED or RESULT for any task but the one in
flight is dropped (logged, rate-limited), so nothing the script sends piles up. Both sides send HEARTBEAT every
``heartbeat_interval``; a trainer the site hears nothing from for ``heartbeat_timeout`` seconds is taken as hung
and killed. ``launch_once=True`` keeps one process for the job; False launches one per task and checks its exit.

Failures: a trainer that dies, hangs or breaks the protocol fails the task in flight with EXECUTION_EXCEPTION
(the error names the exit status and the last lines of its stderr) and every later task at once; one that dies
with a non-zero status (or hangs) while no task is in flight ends the run (``system_panic``), so a crashed script
is never reported as a success. A script that exits 0 before the job's end without ``flare.shutdown()`` is
warned about. Abort: TASK_ABORTED (the trainer is told to drop the task).

END_RUN: SHUTDOWN is sent (``receive`` returns None in the script); the process gets ``shutdown_timeout`` seconds
(None: 30), then ``stop_grace_period`` seconds more, to exit by itself; then its process group gets SIGTERM and,
``KILL_GRACE`` seconds later, SIGKILL. On Linux the process also gets SIGKILL if the
site process dies (``PR_SET_PDEATHSIG``, set by a small wrapper that execs the command; processes are started
from one long-lived spawner thread, since the kernel ties the signal to the thread that forks); the script's
side also gives up a site it no longer hears from.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from flarelite import logsafe
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal
from flarelite.client.channel import MAX_MESSAGE_SIZE, NAMES, Channel, Msg
from flarelite.client.constants import BOOTSTRAP_ENV, CLIENT_API_TYPE_ENV
from flarelite.errors import CodecError, ProtocolError, TransportError
from flarelite.stopping import PR_SET_PDEATHSIG, signal_name

from .backend import POLL_INTERVAL, ClientAPIBackend, TaskClock, script_name
from .handshake import MAX_PENDING, Doorman

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
STDERR_LINES = 20
MAX_LINE = 64 << 10
SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to ~104-108 bytes
KILL_GRACE = 2.0  # between SIGTERM and SIGKILL of a script that did not exit when asked


# process launching ----------------------------------------------------------------------------------------
class _Spawner:
    """Starts every training-script process from one thread that lives as long as the site process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            args, kwargs, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen(*args, **kwargs)``, run on the spawner thread."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="client-api-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((args, kwargs, future))
        return future.result()


_spawner = _Spawner()


# Linux: the script's process gets SIGKILL when the site process dies. prctl(PR_SET_PDEATHSIG) is set by a tiny
# wrapper that then execs the command (same pid), not by a preexec_fn: Python code between fork and exec is unsafe
# in a site process whose gRPC threads hold locks (observed: the child died with SIGSEGV).
_WRAPPER = (
    "import ctypes, os, sys\n"
    "try:\n"
    f"    ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, {int(signal.SIGKILL)}, 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    sys.stderr.write(f'cannot run {sys.argv[2]!r}: {exc}\\n')\n"
    "    os._exit(127)\n"
)


_PYTHONS = ("python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}")


def site_interpreter(argv: list[str]) -> list[str]:
    """``argv`` with a bare ``python``/``python3`` (ScriptRunner's default command) replaced by the site's own
    interpreter, so the script finds the packages the site runs with (a site started from a virtual
    environment that is not activated would otherwise run the script with whatever ``python3`` PATH finds)."""
    if argv and argv[0] in _PYTHONS and sys.executable:
        return [sys.executable, *argv[1:]]
    return list(argv)


def _launch_argv(argv: list[str]) -> list[str]:
    """``argv``, run through the die-with-the-site wrapper on Linux."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-S", "-E", "-c", _WRAPPER, str(os.getpid()), *argv]


def _private_dir() -> str:
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="flarelite-capi-", dir=base)  # mode 0700


# one launched trainer ----------------------------------------------------------------------------------------
class _Trainer:
    """One training-script process: its output, its socket and what it said."""

    def __init__(self, backend: ExternalProcessBackend, label: str) -> None:
        self.backend = backend
        self.label = label
        self.cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.folder: str | None = None
        self.ready = False
        self.gone: str | None = None  # why the trainer is not usable (launch failure, exit, hang...)
        self.crashed = False  # gone because of a failure (not a clean exit, not stopped by the site)
        self.exit_code: int | None = None
        self.stopping = False  # the site is stopping it (END_RUN, or one task done)
        self.killed = False  # the site sent it a signal
        self.shut_down = False  # the script said it is done (flare.shutdown())
        self.reported = False  # its failure already went out (a task's reply, or system_panic)
        self.in_flight: str | None = None  # the task sent to the script and not answered yet
        self.accepted: set[str] = set()  # holds only the task in flight, once the script accepted it
        self.results: dict[str, Shareable] = {}  # holds only the result of the task in flight
        self._stray_log = logsafe.RateLimit()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._threads: list[threading.Thread] = []
        self._readers: list[threading.Thread] = []
        self._exited = threading.Event()

    # launch ----------------------------------------------------------------------------------------------
    def start(self, argv: list[str], cwd: str, env: dict, launch_timeout: float | None) -> None:
        """Start the process and the handshake (on a thread of its own).

        Raises:
            RuntimeError: the process cannot be started (the private folder is removed again).
        """
        self.folder = _private_dir()
        try:
            self._start(argv, cwd, env, launch_timeout)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _start(self, argv: list[str], cwd: str, env: dict, launch_timeout: float | None) -> None:
        b = self.backend
        assert self.folder is not None
        sock_path = os.path.join(self.folder, "s")
        if len(sock_path.encode()) > SOCKET_PATH_MAX:
            raise RuntimeError(f"the socket path {sock_path!r} is too long for a Unix socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(sock_path)
            os.chmod(sock_path, 0o600)
            listener.listen(MAX_PENDING)
        except OSError:
            listener.close()
            raise
        token = secrets.token_hex(32)
        boot_path = os.path.join(self.folder, "bootstrap.json")
        boot = {
            "version": 1,
            "socket": sock_path,
            "token": token,
            "site_name": b.site_name,
            "job_id": b.job_id,
            "heartbeat_interval": b.executor.heartbeat_interval,
            "heartbeat_timeout": b.executor.heartbeat_timeout,
            "max_message_size": MAX_MESSAGE_SIZE,
            "parent_pid": os.getpid(),
        }
        fd = os.open(boot_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(boot, f)
        env = dict(env)
        env[BOOTSTRAP_ENV] = boot_path
        try:
            self.proc = _spawner.popen(
                _launch_argv(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            listener.close()
            raise RuntimeError(f"cannot start the training script {argv!r} in {cwd}: {exc}") from exc
        b.executor.log_info(b.new_context(), f"started the training script (pid {self.proc.pid}): {argv}")
        for stream, level, name in (
            (self.proc.stdout, logging.INFO, ""),
            (self.proc.stderr, logging.WARNING, "stderr"),
        ):
            reader = threading.Thread(
                target=self._pump,
                args=(stream, level, name),
                name=f"{b.site_name}-script-{name or 'stdout'}",
                daemon=True,
            )
            reader.start()
            self._readers.append(reader)
        deadline = None if launch_timeout is None else time.monotonic() + launch_timeout
        self._spawn(self._handshake, listener, token, deadline, launch_timeout)
        self._spawn(self._watch_exit)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"{self.backend.site_name}-{target.__name__}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _pump(self, stream: Any, level: int, name: str) -> None:
        try:
            for raw in iter(lambda: stream.readline(MAX_LINE), b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if name:
                    self.stderr_tail.append(line)
                self.backend.script_output(line, level, name)
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def _handshake(self, listener: socket.socket, token: str, deadline: float | None, timeout: float | None) -> None:
        try:
            channel = self._accept(listener, token, deadline, timeout)
        except RuntimeError as exc:
            self._lose(str(exc), crashed=True)
            return
        finally:
            listener.close()
            try:
                os.unlink(os.path.join(self.folder or "", "s"))
            except OSError:
                pass
        try:
            channel.send(Msg.READY, {"config": self.backend.trainer_config()})
        except (TransportError, CodecError) as exc:
            channel.close()
            self._lose(f"the handshake with the training script failed: {exc}", crashed=True)
            return
        with self.cond:
            self.channel = channel
            self.ready = self.gone is None
            self.cond.notify_all()
        self._spawn(self._read_loop)
        self._spawn(self._heartbeat_loop)

    def _accept(self, listener: socket.socket, token: str, deadline: float | None, timeout: float | None) -> Channel:
        hint = "did it call flare.init()?"

        def check() -> None:
            if self.gone is not None:
                raise RuntimeError(self.gone)
            if self._exited.is_set():
                raise RuntimeError(
                    f"the training script {self.label} exited with status {self.exit_code} before it connected to "
                    f"the site ({hint}){self.stderr_text()}"
                )
            if deadline is not None and time.monotonic() > deadline:
                message = (
                    f"the training script {self.label} did not connect to the site within {timeout}s "
                    f"(launch_timeout; {hint}); it was stopped{self.stderr_text()}"
                )
                self._lose(message, crashed=True)  # before the kill, so that this is the reason given
                self.kill()
                raise RuntimeError(message)

        def warn(message: str) -> None:
            self.backend.executor.log_warning(self.backend.new_context(), message, fire_event=False)

        doorman = Doorman(listener, token, f"the training script {self.label}", warn)
        return doorman.accept(POLL_INTERVAL, check)

    # running ---------------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        channel = self.channel
        assert channel is not None
        while True:
            try:
                kind, body = channel.recv()
            except ProtocolError as exc:
                self.kill()
                self._lose(f"the training script {self.label} broke the Client API protocol: {exc}", crashed=True)
                return
            except TransportError:
                with self.cond:
                    self.cond.notify_all()
                return  # the process is ending: _watch_exit reports it
            if kind in (Msg.ACCEPTED, Msg.RESULT):
                self._answer(kind, body)
            elif kind == Msg.LOG:
                self.backend.handle_log(body["record"], federated=True)
            elif kind == Msg.SHUTDOWN:
                with self.cond:
                    self.shut_down = True
                    self.cond.notify_all()
            elif kind != Msg.HEARTBEAT:
                self.kill()
                self._lose(f"the training script {self.label} sent an unexpected message kind {kind}", crashed=True)
                return

    def _answer(self, kind: int, body: dict) -> None:
        """An ACCEPTED or RESULT: kept for the task in flight only; any other task id is dropped (and logged)."""
        task_id = body["task_id"]
        with self.cond:
            if task_id == self.in_flight:
                if kind == Msg.RESULT:
                    self.results[task_id] = body["data"]
                    self.in_flight = None
                else:
                    self.accepted.add(task_id)
                self.cond.notify_all()
                return
        said = self._stray_log.check("stray")
        if said is not None:
            more = f" ({said[0]} more such messages since)" if said[0] else ""
            self.backend.executor.log_warning(
                self.backend.new_context(),
                f"the training script {self.label} sent {NAMES[kind]} for task {task_id!r:.80}, which is not in "
                f"flight: dropped{more}",
                False,
            )

    def send_task(self, task_id: str, task_name: str, data: Shareable) -> bool:
        """Send a task to the script and make it the one in flight; False if the connection is gone.

        Raises:
            CodecError: the task's data holds a value the codec does not carry.
        """
        channel = self.channel
        if channel is None:
            return False
        with self.cond:
            self.in_flight = task_id
            self.accepted.clear()
            self.results.clear()
        body = {"task_id": task_id, "task_name": task_name, "data": data}
        try:
            channel.send(Msg.TASK, body, stall_timeout=self.backend.executor.heartbeat_timeout or None)
        except TransportError:
            return False
        except CodecError:
            self.settle(task_id)
            raise
        return True

    def settle(self, task_id: str) -> None:
        """The site is done with task ``task_id`` (answered, aborted or timed out): later answers are dropped."""
        with self.cond:
            if self.in_flight == task_id:
                self.in_flight = None
            self.accepted.discard(task_id)
            self.results.pop(task_id, None)

    def _heartbeat_loop(self) -> None:
        ex = self.backend.executor
        channel = self.channel
        assert channel is not None
        while not self._exited.wait(ex.heartbeat_interval):
            if channel.closed or self.gone is not None:
                return
            if ex.heartbeat_timeout and time.monotonic() - channel.last_seen > ex.heartbeat_timeout:
                self.kill()
                self._lose(
                    f"no heartbeat from the training script {self.label} for {ex.heartbeat_timeout}s "
                    "(heartbeat_timeout): it is hung; it was killed",
                    crashed=True,
                )
                return
            if not self.send(Msg.HEARTBEAT, {}):
                return

    def send(self, kind: int, body: dict) -> bool:
        """Send a message to the trainer; False if the connection is gone."""
        channel = self.channel
        if channel is None:
            return False
        try:
            channel.send(kind, body, stall_timeout=self.backend.executor.heartbeat_timeout or None)
            return True
        except TransportError:
            return False

    def _watch_exit(self) -> None:
        proc = self.proc
        assert proc is not None
        code = proc.wait()
        self._kill_group(signal.SIGKILL)  # what the script left behind in its process group
        for reader in self._readers:
            reader.join(2.0)
        self.exit_code = code
        self._exited.set()
        if self.channel is not None:
            self.channel.close()
        if self.killed:
            self._lose(f"the training script {self.label} was stopped by the site ({self._status(code)})", False)
        elif self.channel is None:
            self._lose(
                f"the training script {self.label} exited with {self._status(code)} before it connected to the site "
                f"(did it call flare.init()?){self.stderr_text()}",
                crashed=True,
            )
        elif code != 0:
            self._lose(
                f"the training script {self.label} exited with {self._status(code)}{self.stderr_text()}", crashed=True
            )
        elif self.stopping or self.shut_down:
            self._lose(f"the training script {self.label} ended", crashed=False)
        else:
            self._lose(
                f"the training script {self.label} exited (status 0) before the end of the job without calling "
                "flare.shutdown()",
                crashed=False,
            )

    @staticmethod
    def _status(code: int) -> str:
        return f"signal {signal_name(-code)}" if code < 0 else f"status {code}"

    def stderr_text(self) -> str:
        """The last lines of the script's stderr, for an error message ('' when there were none)."""
        lines = list(self.stderr_tail)
        return "; last lines of its stderr:\n  " + "\n  ".join(lines) if lines else ""

    def _lose(self, reason: str, crashed: bool) -> None:
        with self.cond:
            first = self.gone is None
            if first:
                self.gone = reason
                self.crashed = crashed
            self.ready = False
            self.cond.notify_all()
        if first:
            self.backend.trainer_gone(self)

    # stopping --------------------------------------------------------------------------------------------
    def _kill_group(self, sig: int) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def kill(self) -> None:
        """SIGKILL the process group at once."""
        self.killed = True
        self._kill_group(signal.SIGKILL)

    def stop(self, reason: str, shutdown_timeout: float, grace: float) -> None:
        """SHUTDOWN; ``shutdown_timeout`` then ``grace`` seconds to exit; then kill the group; clean up the folder."""
        self.stopping = True
        if self.ready:
            self.send(Msg.SHUTDOWN, {"reason": reason})
        if self.proc is not None and not self._exited.wait(shutdown_timeout) and not self._exited.wait(grace):
            log = self.backend.executor.log_warning
            log(self.backend.new_context(), f"the training script {self.label} did not exit; killing it", False)
            self.killed = True
            self._kill_group(signal.SIGTERM)
            if not self._exited.wait(KILL_GRACE):
                self._kill_group(signal.SIGKILL)
                self._exited.wait(KILL_GRACE)
        if self.channel is not None:
            self.channel.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5.0)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


# the backend -------------------------------------------------------------------------------------------------
class ExternalProcessBackend(ClientAPIBackend):
    """Launches the training script (once per job, or once per task) and exchanges tasks with it."""

    def __init__(self, executor: Any) -> None:
        super().__init__(executor)
        self.trainer: _Trainer | None = None
        self._exec_lock = threading.Lock()
        self._in_flight: _Trainer | None = None
        self._cwd = ""
        self._env: dict = {}
        self._stopping = False

    def trainer_config(self) -> dict:
        """The config the trainer gets in READY."""
        return self.client_config()

    def initialize(self, fl_ctx: FLContext) -> None:
        """Prepare the launch; with ``launch_once`` start the script now."""
        self.bind(fl_ctx)
        workspace = fl_ctx.get_workspace()
        try:
            self._cwd = workspace.get_app_dir()
            custom = workspace.get_app_custom_dir()
        except (AttributeError, RuntimeError) as exc:
            raise ValueError(f"the site has no app folder to run the training script in: {exc}") from exc
        argv = self.executor.argv
        scripts = [a for a in argv[1:] if a.endswith(".py")]
        self.script_label = script_name(scripts[0]) if scripts else script_name(argv[0])
        env = dict(os.environ)
        env.pop(CLIENT_API_TYPE_ENV, None)
        env["PYTHONPATH"] = os.pathsep.join([custom, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        self._env = env
        if self.executor.launch_once:
            self.trainer = self._launch()

    def _launch(self) -> _Trainer:
        trainer = _Trainer(self, self.script_label)
        trainer.start(site_interpreter(self.executor.argv), self._cwd, self._env, self.executor.launch_timeout)
        return trainer

    def trainer_gone(self, trainer: _Trainer) -> None:
        """A trainer ended: a task in flight sees it; a failed launch, or a crash between tasks, ends the run."""
        if not self.executor.launch_once:
            return  # one process per task: execute() reports what happened to it
        ctx = self.new_context()
        if trainer.crashed and trainer.channel is None and not trainer.stopping:  # the launch failed: the run ends
            trainer.reported = True
            self.executor.system_panic(str(trainer.gone), ctx)
        elif trainer.crashed and not trainer.reported and self._in_flight is not trainer and not trainer.stopping:
            trainer.reported = True
            self.executor.system_panic(str(trainer.gone), ctx)
        elif not trainer.crashed and not trainer.stopping and not trainer.shut_down:
            self.executor.log_warning(ctx, f"{trainer.gone}; later tasks fail", fire_event=False)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Send the task to the trainer (launching it first unless ``launch_once``) and wait for the result."""
        with self._exec_lock:
            if self.executor.launch_once:
                trainer = self.trainer
            else:
                try:
                    trainer = self._launch()
                except (OSError, RuntimeError) as exc:
                    return self.fail(ReturnCode.EXECUTION_EXCEPTION, str(exc), fl_ctx)
            if trainer is None:
                return self.fail(ReturnCode.EXECUTION_EXCEPTION, "the training script was never started", fl_ctx)
            self._in_flight = trainer
            try:
                result = self._run_task(trainer, task_name, shareable, fl_ctx, abort_signal)
            finally:
                self._in_flight = None
            if not self.executor.launch_once:
                shutdown = self.executor.shutdown_timeout
                wait = DEFAULT_SHUTDOWN_TIMEOUT if shutdown is None else shutdown
                trainer.stop("task done", wait, self.executor.stop_grace_period)
                if trainer.crashed and not trainer.reported and result.get_return_code(ReturnCode.OK) == ReturnCode.OK:
                    trainer.reported = True
                    return self.fail(ReturnCode.EXECUTION_EXCEPTION, f"task {task_name!r}: {trainer.gone}", fl_ctx)
            return result

    def _run_task(
        self, trainer: _Trainer, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        def gone_reply() -> Shareable:
            trainer.reported = True
            return self.fail(ReturnCode.EXECUTION_EXCEPTION, f"task {task_name!r} failed: {trainer.gone}", fl_ctx)

        with trainer.cond:  # wait for the handshake (bounded by launch_timeout: the handshake fails then)
            while not trainer.ready and trainer.gone is None and not abort_signal.triggered:
                trainer.cond.wait(POLL_INTERVAL)
        if trainer.gone is not None:
            return gone_reply()
        if abort_signal.triggered:
            return self.fail(ReturnCode.TASK_ABORTED, f"task {task_name!r} was aborted", fl_ctx, error=False)
        task = self.task_message(task_name, shareable, fl_ctx)
        try:
            sent = trainer.send_task(task.task_id, task_name, shareable)
        except CodecError as exc:
            message = f"task {task_name!r} cannot be sent to the script: {exc}"
            return self.fail(ReturnCode.EXECUTION_EXCEPTION, message, fl_ctx)
        try:
            if not sent:
                with trainer.cond:
                    trainer.cond.wait_for(lambda: trainer.gone is not None, timeout=5.0)
                if trainer.gone is not None:
                    return gone_reply()
                message = f"task {task_name!r} could not be sent to the script"
                return self.fail(ReturnCode.EXECUTION_EXCEPTION, message, fl_ctx)
            clock = TaskClock(self.executor, task_name)
            while True:
                with trainer.cond:
                    if task.task_id not in trainer.results and trainer.gone is None:
                        trainer.cond.wait(POLL_INTERVAL)
                    result = trainer.results.pop(task.task_id, None)
                    accepted = task.task_id in trainer.accepted
                if result is not None:
                    return self.finish_result(result, shareable)
                if trainer.gone is not None:
                    return gone_reply()
                if abort_signal.triggered:
                    trainer.send(Msg.ABORT, {"task_id": task.task_id, "reason": "the task was aborted"})
                    return self.fail(ReturnCode.TASK_ABORTED, clock.aborted(accepted), fl_ctx, error=False)
                overdue = clock.overdue(accepted)
                if overdue is not None:
                    reason = "result_wait_timeout" if accepted else "task_wait_timeout"
                    trainer.send(Msg.ABORT, {"task_id": task.task_id, "reason": reason})
                    return self.fail(ReturnCode.EXECUTION_EXCEPTION, overdue, fl_ctx)
        finally:
            trainer.settle(task.task_id)

    def abort_task(self, task_id: str | None) -> None:
        """Tell the trainer to drop task ``task_id``."""
        trainer = self._in_flight or self.trainer
        if trainer is not None and task_id:
            trainer.send(Msg.ABORT, {"task_id": task_id, "reason": "the task was aborted by the server"})

    def finalize(self, fl_ctx: FLContext) -> None:
        """Stop the persistent trainer; a non-zero exit that was not reported yet ends the run as failed."""
        trainer, self.trainer = self.trainer, None
        if trainer is None:
            return
        abort = fl_ctx.get_run_abort_signal()
        if abort is not None and abort.triggered and trainer.ready:
            trainer.send(Msg.ABORT, {"task_id": None, "reason": str(abort.value or "the run was aborted")})
        shutdown = self.executor.shutdown_timeout
        trainer.stop(
            "END_RUN received",
            DEFAULT_SHUTDOWN_TIMEOUT if shutdown is None else shutdown,
            self.executor.stop_grace_period,
        )
        code = trainer.exit_code
        if code not in (None, 0) and not trainer.killed and not trainer.reported:
            trainer.reported = True
            reason = f"the training script {trainer.label} exited with {trainer._status(code)}{trainer.stderr_text()}"
            self.executor.system_panic(reason, fl_ctx)
