"""The simulator's fork server: one process imports what a site process needs, once, and forks every site from
itself, so that no site pays for its imports (torch alone costs 1.6-2 s of CPU a process; five sites and the
server importing it on two cores took half of a consensus run).

``ForkServer(env, preload)`` starts ``python -m flarelite.simulator.forkserver`` with ``env`` (the sites' common
environment: OMP/MKL thread caps are read when torch loads) and a Unix socketpair. The server imports
``flarelite.launch`` and the ``preload`` modules (torch, where the job may use it), single-threaded, then serves
requests: ``start(args, cwd, env)`` sends the site's arguments, folder and environment (and, by SCM_RIGHTS, the
write end of the pipe its output goes to); the server forks; the child starts a session of its own, takes the
pipe as stdout/stderr and /dev/null as stdin, applies the environment, and runs ``launch.main(args)`` as
``python -m flarelite.launch`` would. The server reaps its children and reports each exit status; ``Forked``
offers what the simulator uses of ``subprocess.Popen`` (``pid``, ``stdout``, ``poll``, ``wait``, ``terminate``,
``kill``, ``returncode``). The sites' parent is the fork server (``--parent-pid`` is its pid): it dies with the
simulator (its control socket closes, and on Linux the kernel signals it), and the sites with it.

Only the simulator's own arguments, folders and environment go over the socketpair, which no other process can
reach. Anything that goes wrong starting it makes the simulator start its sites with ``subprocess`` as before.
"""

from __future__ import annotations

import array
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

FORKSERVER_ENV = "FLARELITE_FORKSERVER"  # "0": start every site process with subprocess
_LEN = struct.Struct("<I")
_MAX = 16 << 20  # a message's bytes at most


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    data = _LEN.pack(len(body)) + body
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def _recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the descriptors that came with it; (None, []) at the end."""
    head, fds = b"", []
    while len(head) < _LEN.size:
        data, ancdata, _flags, _addr = sock.recvmsg(_LEN.size - len(head), socket.CMSG_SPACE(4 * 4))
        if not data:
            return None, []
        head += data
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(array.array("i", payload[: len(payload) - len(payload) % 4]))
    (size,) = _LEN.unpack(head)
    if size > _MAX:
        raise ConnectionError(f"a fork server message of {size} bytes")
    body = bytearray()
    while len(body) < size:
        part = sock.recv(size - len(body))
        if not part:
            return None, []
        body += part
    return json.loads(body), fds


# the simulator's side ----------------------------------------------------------------------------------
class Forked:
    """A site process the fork server started: what the simulator uses of ``subprocess.Popen``."""

    def __init__(self, pid: int, stdout: Any, server: ForkServer) -> None:
        self.pid = pid
        self.stdout = stdout
        self._server = server

    @property
    def returncode(self) -> int | None:
        """Its exit status as the fork server reported it (None while it runs)."""
        return self._server.returncode_of(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (negative: the signal that ended it), waiting at most ``timeout`` seconds.

        Raises:
            subprocess.TimeoutExpired: it still runs.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._server.exited:
            while self.returncode is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"site process {self.pid}", timeout or 0)
                self._server.exited.wait(left)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Start the fork server (see the module docstring); ``start`` a site process from it, ``close`` it.

    Raises:
        OSError: it could not be started or did not get ready within ``timeout`` seconds.
    """

    def __init__(self, env: dict[str, str], preload: list[str], timeout: float = 60.0) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flarelite.simulator.forkserver", str(theirs.fileno()), str(os.getpid()),
             ",".join(preload)],
            env=env,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        theirs.close()
        self.pid = self.proc.pid
        self.exited = threading.Condition()
        self._codes: dict[int, int] = {}  # exit statuses the fork server reported, by pid
        self._gone = False  # the fork server ended (and its children with it)
        self._started: list[dict] = []
        self._send_lock = threading.Lock()
        self.sock.settimeout(timeout)
        try:
            ready, _ = _recv(self.sock)
        except OSError:
            self.close()
            raise
        if not ready or not ready.get("ready"):
            self.close()
            raise OSError(f"the fork server did not start: {ready}")
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()

    def start(self, args: list[str], cwd: str, env: dict[str, str]) -> Forked:
        """Fork a site process running ``python -m flarelite.launch ARGS`` in ``cwd`` with ``env``.

        Raises:
            OSError: the fork server is gone or could not fork.
        """
        read_fd, write_fd = os.pipe()
        try:
            with self.exited:
                with self._send_lock:
                    _send(self.sock, {"args": args, "cwd": cwd, "env": env}, [write_fd])
                deadline = time.monotonic() + 30
                while not self._started:
                    if not self._reader.is_alive() or time.monotonic() > deadline:
                        raise OSError("the fork server did not start the site process")
                    self.exited.wait(0.5)
                answer = self._started.pop(0)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        if "pid" not in answer:
            os.close(read_fd)
            raise OSError(f"the fork server could not start the site process: {answer.get('error')}")
        return Forked(answer["pid"], os.fdopen(read_fd, "r", buffering=1, errors="replace"), self)

    def returncode_of(self, pid: int) -> int | None:
        """The exit status of child ``pid``; None while it runs (-SIGKILL once the fork server is gone without
        saying)."""
        with self.exited:
            code = self._codes.get(pid)
            return -signal.SIGKILL if code is None and self._gone else code

    def _read(self) -> None:
        while True:
            try:
                message, fds = _recv(self.sock)
            except (OSError, ValueError):
                message, fds = None, []
            for fd in fds:
                os.close(fd)
            with self.exited:
                if message is None:  # the fork server is gone: so are its children
                    self._gone = True
                    self.exited.notify_all()
                    return
                if "exit" in message:
                    self._codes[message["exit"]] = message["code"]
                elif "pid" in message or "error" in message:
                    self._started.append(message)
                self.exited.notify_all()

    def close(self) -> None:
        """Stop the fork server (its running children keep running until their parent-watch notices)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # (a close alone would wait for the reader's blocked recv)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# the fork server's side -----------------------------------------------------------------------------------
def _child(request: dict, out_fd: int, closing: list[int]) -> None:
    """In the forked site process: become ``python -m flarelite.launch ARGS``; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in closing:
            os.close(fd)
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(out_fd, 1)  # sys.stdout and sys.stderr write to fds 1 and 2 (unbuffered: PYTHONUNBUFFERED)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _name(request["args"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [sys.executable, "-m", "flarelite.launch", *request["args"]]
        from flarelite import launch

        try:
            code = launch.main(list(request["args"]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        launch.exit_process(code)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code if isinstance(code, int) else 1)


def _name(args: list[str]) -> None:
    """Linux: name the process after its site (``ps -o comm`` shows "fl site-1"; its command line stays the fork
    server's)."""
    if not sys.platform.startswith("linux"):
        return
    site = args[args.index("--name") + 1] if "--name" in args[:-1] else args[0] if args else "site"
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, f"fl {site}".encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _serve(fd: int, parent_pid: int, preload: list[str]) -> None:
    """Import, then fork a site for each request and report each child's exit; until the simulator is gone."""
    import select

    sock = socket.socket(fileno=fd)
    from flarelite import launch  # noqa: F401  (what every site imports first)
    from flarelite.stopping import _die_with_parent

    _die_with_parent()  # Linux: the kernel ends this process when the simulator dies
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # a site that needs it says why itself
            pass
    wake_r, wake_w = os.pipe()  # SIGCHLD writes here (set_wakeup_fd); the loop below reaps: one thread only
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the simulator, which stops the sites
    _send(sock, {"ready": True})
    while os.getppid() == parent_pid:
        readable, _, _ = select.select([sock, wake_r], [], [], 1.0)
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        _reap(sock)
        if sock not in readable:
            continue
        try:
            request, fds = _recv(sock)
        except (OSError, ValueError):
            return
        if request is None:
            return
        if len(fds) != 1:
            for extra in fds:
                os.close(extra)
            _send(sock, {"error": "a start request without its output pipe"})
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fds[0])
            _send(sock, {"error": str(exc)})
            continue
        if pid == 0:
            _child(request, fds[0], [sock.fileno(), wake_r, wake_w])
        os.close(fds[0])
        _send(sock, {"pid": pid})


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        except OSError:
            return


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), [m for m in sys.argv[3].split(",") if m])
    os._exit(0)  # no teardown of what it preloaded (0.4 s with torch): nothing here needs it
