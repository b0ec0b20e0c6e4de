"""The simulator's processes mode: the server and every client site as separate processes over gRPC."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..apis.fl_constant import SiteType
from ..errors import ConfigError, RunFailedError, RunInterrupted
from ..launch import RESULT_FILE
from ..progress import PROGRESS_ENV, Live, piped_text
from ..progress import choice as progress_choice
from ..stopping import signal_name

_log = logging.getLogger("flarelite.simulator")
SITE_LOST_TIMEOUT = 3.0  # one machine: a site whose connection dropped is back within a second, or gone
SERVER_LOST_TIMEOUT = 5.0


def server_address(protocol: str, workspace: str) -> tuple[str, str | None]:
    """Where the server listens: a Unix socket in a private temp folder (mode 0700, removed after the run; the
    sites' direct_p2p sockets go there too), or a free loopback port."""
    if protocol == "unix":
        tmp = tempfile.mkdtemp(prefix="flarelite-")  # 0700 whatever the umask, and short enough for sun_path
        return f"unix://{os.path.join(tmp, 'server.sock')}", tmp
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}", None


def provision_certs(workspace: str, names: list[str]) -> str:
    """Make a CA and certificates for the server and ``names`` in ``workspace/certs``; return the folder."""
    from ..certs import init_ca, issue

    folder = os.path.join(workspace, "certs")
    init_ca(folder, project="flarelite-simulator", force=True)
    issue(folder, SiteType.SERVER, kind="server", force=True)
    for name in names:
        issue(folder, name, kind="client", force=True)
    return folder


class _Repeats:
    """A long warning that every site gives alike (the same text but for the site's own name, such as the clear
    mode's) is shown once on the console: the first; each site's log.txt keeps its own."""

    LONG = 120

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def first(self, line: str, site: str) -> bool:
        if len(line) < self.LONG or "WARNING" not in line[:80]:
            return True
        key = line.split(" ", 2)[-1].replace(site, "<site>", 1)  # without the date and time; its own name
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True


def _pump(proc: Any, sink: object, quiet: threading.Event, repeats: _Repeats, site: str) -> None:
    """Copy a site's console lines to ``sink``; on a live progress line (``sink`` is a ``progress.Live``), the
    server's progress lines update it."""
    assert proc.stdout is not None
    live = sink if isinstance(sink, Live) else None
    for line in iter(proc.stdout.readline, ""):
        piped = piped_text(line) if live is not None else None
        if piped is not None:
            if not quiet.is_set():
                live.show(*piped)  # type: ignore[union-attr]
        elif not quiet.is_set() and repeats.first(line, site):
            sink.write(line)  # type: ignore[attr-defined]
    proc.stdout.close()


def _thread_caps(sites: int, at_once: int | None) -> dict[str, str]:
    """``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` for site processes: each gets its share of the cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    share = str(max(1, cores // max(1, min(sites, at_once or sites))))
    return {var: share for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if var not in os.environ}


def run_processes(
    job_folder: str,
    workspace: str,
    names: list[str],
    *,
    protocol: str,
    tls: str,
    job_id: str,
    ready_timeout: float,
    end_timeout: float,
    direct_p2p: bool = False,
    connect_timeout: float = 60.0,
    allowed_classes: list[str] | tuple[str, ...] = (),
    temp_dirs: list[str] | tuple[str, ...] = (),
    max_message_size: int | str | None = None,
    gpus: dict[str, str] | None = None,
    log_config: str | None = None,
    max_concurrent_tasks: int | None = None,
    data_plane: str = "auto",
) -> int:
    """Start the server and one process per client, stream their console output, and wait for the run's end.

    As in a deployment, each client receives its app (config and custom code) from the server; each site
    process works in ``workspace/<site>``. The sites run the code their own server ships, in every mode
    (``--allow-custom-code``); ``allowed_classes`` is passed to every site as ``--allow-class``, and
    ``max_message_size`` (bytes, or a size like ``"64M"``; default 2 GiB) as ``--max-message-size``.
    ``gpus`` maps a client to its ``CUDA_VISIBLE_DEVICES`` (set in that process's environment only);
    ``log_config`` (checked by ``options.check_log_config``) is applied in every site process;
    ``max_concurrent_tasks`` is how many client tasks the server has out at once (None: no limit);
    ``data_plane`` (``"auto"``, ``"tcp"`` or ``"grpc"``) is passed to every site as ``--data-plane``.
    Site processes share this machine's cores: unless the caller's environment sets them, ``OMP_NUM_THREADS``
    and ``MKL_NUM_THREADS`` give each site its share (cores / sites that run at once, at least 1), so that
    numeric libraries in several processes (torch, numpy) do not each start a thread per core and spin
    against each other (seen: a small torch model trained 200x slower in two site processes on two cores).

    Every site process ends when this process dies (``--parent-pid``); the server process then removes the
    socket files and ``temp_dirs`` (folders the caller made for the run). On SIGTERM or SIGINT this process
    stops the sites, removes the socket files, prints one line and raises RunInterrupted. A run that succeeded
    although some sites died returns 0 and names them in a warning (and in ``server/run_result.json``).

    Raises:
        RunFailedError: the run failed, or a site failed; the message says which and why.
        RunInterrupted: SIGTERM or SIGINT stopped the run (exit status 128 + the signal's number).
    """
    if tls not in ("clear", "tls", "mtls"):
        raise ConfigError(f"tls must be 'clear', 'tls' or 'mtls', got {tls!r}")
    address, tmp = server_address(protocol, workspace)
    certs = provision_certs(workspace, names) if tls != "clear" else None
    common = ["-w", workspace, "--mode", tls, "--job-id", job_id] + (["--certs", certs] if certs else [])
    if max_message_size is not None:
        from ..communication.sizes import max_message_size as message_limit

        common += ["--max-message-size", str(message_limit(max_message_size))]
    if log_config is not None:
        common += ["--log-config", log_config]
    if data_plane != "auto":
        common += ["--data-plane", data_plane]
    if allowed_classes:
        from ..runtime.allowlist import check_entries  # the runtime loads only when there is something to check

        common += [f"--allow-class={entry}" for entry in check_entries(allowed_classes, "allowed_classes")]
    # as in a deployment, the clients get their app from the server (and do not parse the job themselves)
    server_cmd = ["server", job_folder, *common, "--listen", address, "--clients", ",".join(names)]
    server_cmd += ["--ready-timeout", str(ready_timeout), "--client-lost-timeout", str(SITE_LOST_TIMEOUT)]
    if max_concurrent_tasks is not None:
        server_cmd += ["--max-concurrent-tasks", str(max_concurrent_tasks)]
    commands = {SiteType.SERVER: server_cmd + [f"--temp-dir={d}" for d in [*temp_dirs, *([tmp] if tmp else [])]]}
    for name in names:
        commands[name] = ["client", *common, "--name", name, "--server", address]
        commands[name] += ["--connect-timeout", str(connect_timeout), "--allow-custom-code"]
        commands[name] += ["--server-lost-timeout", str(SERVER_LOST_TIMEOUT)]
        if direct_p2p:
            commands[name].append("--direct-p2p")
    from ..runtime.logs import CONSOLE_ENV, short_console

    env = dict(os.environ, PYTHONUNBUFFERED="1", **_thread_caps(len(names), max_concurrent_tasks))
    env[CONSOLE_ENV] = "short" if short_console() else "full"  # its pipes are no terminal: this process decides
    shown = progress_choice()  # a live line here, fed by the server's piped lines; or the server's plain lines
    env[PROGRESS_ENV] = {"live": "piped"}.get(shown, shown)
    sink: Any = Live(sys.stderr) if shown == "live" else sys.stderr
    envs = {name: dict(env, CUDA_VISIBLE_DEVICES=devices) for name, devices in (gpus or {}).items()}
    for name, devices in (gpus or {}).items():
        _log.info("%s: CUDA_VISIBLE_DEVICES=%s", name, devices)
    procs: dict[str, Any] = {}  # subprocess.Popen, or forkserver.Forked
    pumps = []
    quiet = threading.Event()  # set once interrupted: the sites' last words stay in their log.txt
    repeats = _Repeats()
    forks = _fork_server(env, job_folder)
    try:
        with _interrupts() as interrupted:
            try:
                for name, args in commands.items():
                    folder = os.path.join(workspace, name)
                    os.makedirs(folder, exist_ok=True)
                    results = os.path.join(folder, RESULT_FILE)
                    if os.path.exists(results):
                        os.unlink(results)
                    procs[name] = _start_site(forks, args, folder, envs.get(name, env))
                    pump = threading.Thread(target=_pump, args=(procs[name], sink, quiet, repeats, name), daemon=True)
                    pump.start()
                    pumps.append(pump)
                codes = _wait(procs, end_timeout)
            except KeyboardInterrupt as exc:
                quiet.set()
                signum = getattr(exc, "signum", signal.SIGINT)
                stopped = _stop(procs)
                what = f"interrupted ({signal_name(signum)}); stopped {stopped} site processes"
                interrupted.message = f"flarelite: {what}"
                raise
    finally:
        _stop(procs)
        if forks is not None:
            forks.close()
        for pump in pumps:
            pump.join(5)
        if isinstance(sink, Live):
            sink.close()
        if tmp:  # the private socket folder, with every socket in it
            shutil.rmtree(tmp, ignore_errors=True)
    return _outcome(workspace, codes)


def _fork_server(env: dict[str, str], job_folder: str) -> Any:
    """The fork server the sites start from (``forkserver.py``, Linux), preloading torch when the job may use it;
    None when ``FLARELITE_FORKSERVER=0``, on other systems, or when it cannot start (the sites then start with
    subprocess, as before)."""
    from .forkserver import FORKSERVER_ENV, ForkServer

    if os.environ.get(FORKSERVER_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return None  # (elsewhere, macOS's frameworks among them, forking a process that loaded libraries is unsafe)
    try:
        return ForkServer(env, ["torch"] if _may_use_torch(job_folder) else [])
    except OSError as exc:
        _log.info("no fork server (%s): each site process starts on its own", exc)
        return None


_TORCH_P2P = ("DGDExecutor", "GTExecutor", "GTADAMExecutor", "TorchSyncAlgorithmExecutor")  # app_opt.p2p on torch


def _may_use_torch(job_folder: str) -> bool:
    """Whether torch is installed and the job's configs or custom code name it (or flarelite's torch-using
    components: ``app_opt.pt``, the p2p executors on torch models; ``ConsensusExecutor`` writes its ``.pt``
    history without torch)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    for root, _dirs, files in os.walk(job_folder):
        for name in files:
            if not name.endswith((".json", ".py", ".yml", ".yaml", ".conf")):
                continue
            try:
                with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                    text = f.read(1 << 20)
            except OSError:
                continue
            if "torch" in text or "app_opt.pt" in text or any(name in text for name in _TORCH_P2P):
                return True
    return False


def _start_site(forks: Any, args: list[str], folder: str, env: dict[str, str]) -> Any:
    """Start one site process: forked from ``forks`` (its parent then) when there is one, else with subprocess."""
    if forks is not None:
        try:
            return forks.start([*args, "--parent-pid", str(forks.pid)], folder, env)
        except OSError as exc:
            _log.info("the fork server could not start a site (%s): starting it on its own", exc)
    return subprocess.Popen(
        [sys.executable, "-m", "flarelite.launch", *args, "--parent-pid", str(os.getpid())],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # a Ctrl-C reaches this process only, which then stops the sites
    )


def _outcome(workspace: str, codes: dict[str, int]) -> int:
    """0 when the server's run succeeded (sites that died are named in a warning); else RunFailedError."""
    server = _result(os.path.join(workspace, SiteType.SERVER, RESULT_FILE))
    fates: dict[str, str] = dict(server.get("sites") or {})
    problems: list[tuple[str, str]] = []  # (site, what went wrong there), the server's first
    lost: list[str] = []
    for name, code in sorted(codes.items(), key=lambda item: item[0] != SiteType.SERVER):
        if code == 0:
            continue
        reason = _result(os.path.join(workspace, name, RESULT_FILE)).get("failure")
        what = f"process killed by signal {-code}" if code < 0 else None
        if name != SiteType.SERVER and codes[SiteType.SERVER] == 0 and fates.get(name, "").startswith("died"):
            lost.append(f"{name} ({fates[name]}{'; ' + what if what else ''})")
            continue  # the run went on without it
        if what:
            problems.append((name, what))
        elif reason and any(reason in seen or seen in reason for _, seen in problems):
            continue  # the server told every site why the run ended: say it once
        else:
            problems.append((name, reason or f"process exited with status {code} (see {workspace}/{name}/log.txt)"))
    if len(problems) == 1:
        raise RunFailedError(problems[0][1], site=problems[0][0])
    if problems:
        raise RunFailedError("; ".join(f"{name}: {what}" for name, what in problems))
    if lost:
        _log.warning("the run succeeded without %d of its sites: %s", len(lost), ", ".join(lost))
    return 0


class _Signalled(KeyboardInterrupt):
    """Raised by this module's signal handler in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Interrupted:
    """What the interrupt handling learnt: the signal and the one line to print."""

    message: str | None = None


@contextlib.contextmanager
def _interrupts() -> Iterator[_Interrupted]:
    """SIGTERM (and SIGINT, where Python's own handler is in place) interrupt the run; once the sites are
    stopped, one line is printed and RunInterrupted (exit status 128 + the signal's number) is raised.
    """
    state = _Interrupted()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: object) -> None:
            raise _Signalled(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                previous[sig] = signal.signal(sig, handler)
    try:
        yield state
    except KeyboardInterrupt as exc:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal now would cut the cleanup short
            if sig in previous:
                signal.signal(sig, signal.SIG_IGN)
        print(state.message or "flarelite: interrupted", file=sys.stderr, flush=True)
        if isinstance(exc, _Signalled):
            raise RunInterrupted(exc.signum, state.message or "interrupted") from None
        raise  # a KeyboardInterrupt of the caller's own handler (a notebook's): theirs to handle
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop(procs: dict[str, Any], grace: float = 5.0) -> int:
    """SIGTERM every site process still running, SIGKILL what is left after ``grace``; return how many ran."""
    running = [p for p in procs.values() if p.poll() is None]
    for proc in running:
        try:
            proc.terminate()
        except OSError:
            pass
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return len(running)


def _wait(procs: dict[str, Any], end_timeout: float) -> dict[str, int]:
    """Wait for the server; then give the clients time to finish before they are stopped.

    After a successful run the clients get ``end_timeout``; after a failed one only a few seconds, since a
    client that never reached the server would otherwise wait for it in vain.
    """
    server = procs[SiteType.SERVER]
    while server.poll() is None:
        try:
            server.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
    wait = end_timeout if server.returncode == 0 else min(end_timeout, 3.0)
    deadline = time.monotonic() + wait
    late = {}
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            late[name] = proc
    if late:
        _log.error("%s did not end within %ss of the server; stopping them", ", ".join(late), wait)
        _stop(late, grace=2.0)
    return {name: proc.returncode for name, proc in procs.items()}


def _result(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}
