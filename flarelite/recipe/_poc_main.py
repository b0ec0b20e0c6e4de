"""The process PocEnv starts: runs one job as a POC deployment (``flarelite.simulator.processes.run_processes``).

``python -m flarelite.recipe._poc_main JOB_DIR WORKSPACE --clients site-1,site-2 --parent-pid PID ...``. It ends
(stopping the site processes it started) on SIGTERM and when the process that started it is gone. Exit status:
0 when the run succeeded, 1 when it failed (the reason is on stderr and in ``WORKSPACE/server/run_result.json``),
128 + the signal's number when a signal stopped it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_CHECK_INTERVAL = 0.5


def _end_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when ``parent_pid`` is no longer its parent (prctl on Linux, and a watcher thread)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_INTERVAL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="poc-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Run the POC deployment of one exported job; return the exit status."""
    parser = argparse.ArgumentParser(prog="flarelite.recipe._poc_main")
    parser.add_argument("job_dir")
    parser.add_argument("workspace")
    parser.add_argument("--clients", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--protocol", choices=["unix", "grpc"], default="grpc")
    parser.add_argument("--mode", choices=["clear", "tls", "mtls"], default="clear")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--allow-class", dest="allowed_classes", action="append", default=[])
    args = parser.parse_args(argv)
    _end_with_parent(args.parent_pid)

    from ..errors import FlareliteError
    from ..job_config.models import load_job
    from ..simulator.processes import run_processes

    try:
        job = load_job(args.job_dir)
        run_processes(
            job.folder,
            args.workspace,
            [c for c in args.clients.split(",") if c],
            protocol=args.protocol,
            tls=args.mode,
            job_id=job.meta.name,
            ready_timeout=max(120.0, args.connect_timeout),
            end_timeout=30.0,
            connect_timeout=args.connect_timeout,
            allowed_classes=args.allowed_classes,
        )
    except FlareliteError as exc:
        print(f"flarelite poc: job {os.path.basename(args.job_dir)} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
