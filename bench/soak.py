"""Soak: N client sites over real gRPC connections, all-to-all aux requests with sequence numbers for some minutes.

A server process (``python -m flarelite.launch server``, as deployed) and ``--procs`` site processes, each running
its share of the sites on threads of its own through ``flarelite.launch.run_client`` (a ClientRuntime and its own
GrpcCommunicationProtocol, so one gRPC connection per site), over a Unix socket (default) or TCP on 127.0.0.1
(``--tcp``). Frames between sites are relayed by the server, or go direct with ``--direct-p2p``. The job is a job
folder whose custom/ holds _soak_components.py; every site loads it from there.

Each site sends aux requests to its peers, visiting them in a fresh random order every cycle, until the deadline
(``--fanout`` peers per send_aux_request call, from ``--inflight`` threads; with the defaults, 1 and 1, a site
waits for each reply). A request carries (sender, seq per pair, send time, a small int64 array); the handler
checks and records it. Then every site reports what it received, and this script totals it per pair:

- sent, received, lost and duplicated: both must be 0, else the exit status is 1 (as for corrupt payloads,
  seqs that were never sent, OK replies that name the wrong peer or seq, non-OK replies, a pair that got nothing,
  and a run that did not end well);
- out-of-order arrivals (a seq lower than one already seen from that sender): only with ``--inflight`` > 1 may
  a pair's requests overtake each other;
- round-trip latency (per send_aux_request call) and one-way latency (sender's stamp to the handler), messages/s;
- per process, sampled from /proc once a second: RSS, threads and open files when the traffic started, after the
  warm-up and at its end, and the RSS growth since the thread count settled (aux worker pools start threads on
  demand, up to 16 per site): flat is the target.

Run: python bench/soak.py [--sites 60] [--minutes 3] [--procs 4] [--tcp] [--direct-p2p] [--keep]
Linux only (/proc, PR_SET_PDEATHSIG). Ctrl-C or SIGTERM stops every process and removes the temporary folder;
the site processes die with this one even when it is killed (its folder is then removed by the next run).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
COMPONENTS = os.path.join(HERE, "_soak_components.py")
JOB_ID = "soak"
_LOG_LEVEL = re.compile(r" - (WARNING|ERROR|CRITICAL) - (.*)$")


# the job -----------------------------------------------------------------------------------------------
def write_job(root: str, out: str, args: argparse.Namespace) -> str:
    """A job folder with one app for all sites; _soak_components.py goes in its custom/ folder."""
    folder = os.path.join(root, "job")
    config = os.path.join(folder, "app", "config")
    os.makedirs(config)
    os.makedirs(os.path.join(folder, "app", "custom"))
    shutil.copy(COMPONENTS, os.path.join(folder, "app", "custom"))
    controller = {"path": "_soak_components.SoakController", "args": {"minutes": args.minutes, "out": out}}
    executor = {
        "path": "_soak_components.SoakExecutor",
        "args": {
            "fanout": args.fanout,
            "inflight": args.inflight,
            "timeout": args.timeout,
            "payload": args.payload,
            "pause": args.pause,
        },
    }
    with open(os.path.join(config, "config_fed_server.json"), "w") as f:
        json.dump({"format_version": 2, "workflows": [dict(controller, id="controller")], "components": []}, f)
    with open(os.path.join(config, "config_fed_client.json"), "w") as f:
        json.dump({"format_version": 2, "executors": [{"tasks": ["*"], "executor": executor}], "components": []}, f)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"name": JOB_ID, "resource_spec": {}, "min_clients": 1, "deploy_map": {"app": ["@ALL"]}}, f)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a site process ----------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> int:
    """Run the sites ``args.names`` of this process, each on its own thread, as ``flarelite client`` would."""
    import logging

    from flarelite.launch import run_client, tls_config

    # the components come from the job's custom/ folder, as at a real site, not from bench/ next to this script
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

    console = logging.StreamHandler()
    console.setLevel(args.console_level)  # the site log files (WS/<site>/log.txt) still get INFO
    console.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logging.getLogger().addHandler(console)
    if args.console_level == "DEBUG":
        logging.getLogger().setLevel(logging.DEBUG)
    codes: dict[str, int] = {}

    def site(name: str) -> None:
        try:
            codes[name] = run_client(
                args.job,
                args.workspace,
                name=name,
                server=args.server,
                tls=tls_config("clear", None, name),
                job_id=JOB_ID,
                connect_timeout=120.0,
                direct_p2p=args.direct_p2p,
            )
        except BaseException as exc:
            print(f"soak worker: {name} raised {exc!r}", file=sys.stderr)
            codes[name] = 1

    threads = [threading.Thread(target=site, args=(n,), name=n) for n in args.names.split(",")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(codes.values(), default=1)


def _die_with_parent(parent: int):
    """A preexec_fn: the child gets SIGKILL when this process dies (Linux), even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def arm() -> None:
        if libc is not None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return arm


# sampling ----------------------------------------------------------------------------------------------
def sample(pid: int) -> tuple[float, int, int] | None:
    """(RSS MiB, threads, open fds) of process ``pid`` now, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"]), fds


class Run:
    """The processes of one soak run and what was sampled from them; ``stop()`` ends them all."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.samples: dict[str, list[tuple[float, tuple[float, int, int]]]] = {}
        self.consoles: dict[str, str] = {}

    def spawn(self, label: str, cmd: list[str]) -> None:
        path = os.path.join(self.tmp, f"{label.replace(' ', '_')}.console.txt")
        self.consoles[label] = path
        with open(path, "w") as out:
            self.procs[label] = subprocess.Popen(
                cmd,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                start_new_session=True,  # Ctrl-C reaches only this script, which then stops them in order
                preexec_fn=_die_with_parent(os.getpid()),
            )
        self.samples[label] = []

    def poll(self) -> None:
        now = time.time()
        for label, proc in self.procs.items():
            s = sample(proc.pid) if proc.poll() is None else None
            if s is not None:
                self.samples[label].append((now, s))

    def stop(self, grace: float = 3.0) -> int:
        """Terminate what still runs (SIGKILL after ``grace`` s); return how many had to be stopped."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for p in alive:
            p.terminate()
        deadline = time.monotonic() + grace
        for p in alive:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return len(alive)

    def at(self, label: str, t: float, after: bool = False) -> tuple[float, int, int] | None:
        """The last sample of ``label`` taken at or before ``t`` (``after``: the first one at or after it)."""
        rows = self.samples[label]
        if after:
            return next((s for when, s in rows if when >= t), rows[-1][1] if rows else None)
        before = [s for when, s in rows if when <= t]
        return before[-1] if before else (rows[0][1] if rows else None)


# the parent --------------------------------------------------------------------------------------------
def _terminate(signum, frame):
    raise KeyboardInterrupt


def remove_stale(prefix: str) -> None:
    """Remove the temporary folders of earlier soak runs whose script was killed (SIGKILL leaves them)."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        folder = os.path.join(root, name)
        try:
            with open(os.path.join(folder, "owner.pid")) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            continue
        if name.startswith(prefix) and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(folder, ignore_errors=True)


def soak(args: argparse.Namespace, tmp: str, run: Run) -> int:
    """Start the server and the site processes, sample them until the run ends, then report."""
    from _soak_components import STARTED_FILE

    names = [f"site-{i}" for i in range(1, args.sites + 1)]
    ws, out = os.path.join(tmp, "ws"), os.path.join(tmp, "out")
    os.makedirs(out)
    job = write_job(tmp, out, args)
    address = f"127.0.0.1:{free_port()}" if args.tcp else f"unix://{tmp}/server.sock"
    server = [sys.executable, "-m", "flarelite.launch", "server", job, "-w", ws, "--listen", address]
    server += ["--clients", ",".join(names), "--job-id", JOB_ID, "--ready-timeout", str(args.ready_timeout)]
    run.spawn("server", server)
    procs = max(1, min(args.procs, args.sites))
    groups = [names[i::procs] for i in range(procs)]
    for i, group in enumerate(groups):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--names", ",".join(group)]
        cmd += ["--server", address, "--job", job, "--workspace", ws, "--console-level", args.console_level]
        cmd += ["--direct-p2p"] if args.direct_p2p else []
        run.spawn(f"sites {i + 1}", cmd)
    transport = "TCP 127.0.0.1" if args.tcp else "Unix socket"
    mode = "direct (direct_p2p)" if args.direct_p2p else "relayed via the server"
    print(
        f"soak: {args.sites} sites in {procs} processes + server, {transport}, {mode}, {args.minutes:g} min of "
        f"traffic (fanout {args.fanout}, {args.inflight} in flight per site); workspace {tmp}",
        file=sys.stderr,
    )
    started_file = os.path.join(out, STARTED_FILE)
    limit = time.monotonic() + args.ready_timeout + args.minutes * 60 + args.timeout + 120
    started: dict | None = None
    last_note = time.monotonic()
    while run.procs["server"].poll() is None:
        run.poll()
        if started is None and os.path.exists(started_file):
            with open(started_file) as f:
                started = json.load(f)
            print(f"soak: all sites ready after {time.time() - run.samples['server'][0][0]:.1f} s", file=sys.stderr)
        if time.monotonic() - last_note > 30 and started is not None:
            last_note = time.monotonic()
            done = min(time.time() - started["start"], args.minutes * 60)
            rss = ", ".join(f"{label} {run.samples[label][-1][1][0]:.0f}" for label in run.procs if run.samples[label])
            print(f"soak: {done:.0f}/{args.minutes * 60:.0f} s of traffic; RSS MiB {rss}", file=sys.stderr)
        if time.monotonic() > limit:
            print("soak: the run did not end in time; stopping it", file=sys.stderr)
            break
        dead = [label for label, p in run.procs.items() if label != "server" and p.poll() not in (None, 0)]
        if dead and started is None:
            print(f"soak: {dead} exited early", file=sys.stderr)
            break
        time.sleep(1.0)
    hung = run.procs["server"].poll() is None
    # after a good run the sites end at once; after a failed one a site may still be waiting for the server
    end = time.monotonic() + (60 if run.procs["server"].returncode == 0 else 5)
    for p in run.procs.values():
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    stopped = run.stop()
    codes = {label: p.returncode for label, p in run.procs.items()}
    outcome = {"started": started, "codes": codes, "hung": hung, "stopped": stopped}
    with open(os.path.join(tmp, "samples.json"), "w") as f:  # (time, (RSS MiB, threads, fds)) per process
        json.dump(run.samples, f)
    return report(args, ws, out, names, run, outcome)


def _fates(ws: str, names: list[str]) -> dict[str, str]:
    """Each site's failure from its run_result.json ("" when ok)."""
    fates = {}
    for name in ["server", *names]:
        try:
            with open(os.path.join(ws, name, "run_result.json")) as f:
                result = json.load(f)
            fates[name] = "" if result.get("ok") else str(result.get("failure"))
        except (OSError, ValueError):
            fates[name] = "no run_result.json"
    return fates


def _log_lines(ws: str, consoles: dict[str, str]) -> tuple[int, dict[str, int]]:
    """WARNING-or-worse lines in the site logs and the site processes' consoles; the distinct messages."""
    paths = [os.path.join(ws, d, "log.txt") for d in sorted(os.listdir(ws))] if os.path.isdir(ws) else []
    paths += [p for label, p in consoles.items() if label != "server"]  # the server's console repeats its log
    total, distinct = 0, {}
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    m = _LOG_LEVEL.search(line.rstrip())
                    if (m or "Traceback" in line) and "security mode" not in line:  # not the clear-mode notice
                        total += 1
                        key = re.sub(r"site-\d+", "site-N", m.group(0) if m else line.strip())[:160]
                        distinct[key] = distinct.get(key, 0) + 1
        except OSError:
            pass
    return total, distinct


def totals(results: dict, names: list[str]) -> dict:
    """Add up the sites' task results: per pair, what the sender sent against what the receiver got."""
    from _soak_components import BUCKETS  # only here: a site process must load it from the job's custom/

    t = dict.fromkeys(
        ("sent", "received", "lost", "dup", "ooo", "ooo_pairs", "corrupt", "phantom", "covered", "mismatched", "calls"),
        0,
    )
    t.update(codes={}, rtt=np.zeros(BUCKETS, dtype=np.int64), one_way=np.zeros(BUCKETS, dtype=np.int64))
    t.update(rtt_max=0.0, one_way_max=0.0)
    for name in names:
        s, r = results.get(name, {}).get("soak"), results.get(name, {}).get("report")
        if s:
            t["calls"] += s["calls"]
            t["mismatched"] += s["mismatched"]
            for code, n in s["codes"].items():
                t["codes"][code] = t["codes"].get(code, 0) + n
            t["rtt"] += np.asarray(s["rtt"], dtype=np.int64)
            t["rtt_max"] = max(t["rtt_max"], s["rtt_max"])
            t["sent"] += sum(s["sent"].values())
        if r:
            t["one_way"] += np.asarray(r["one_way"], dtype=np.int64)
            t["one_way_max"] = max(t["one_way_max"], r["one_way_max"])
            for n, d, o, c, _ in r["from"].values():
                t["received"] += n
                t["dup"] += d
                t["ooo"] += o
                t["ooo_pairs"] += o > 0
                t["corrupt"] += c
    for a in names:
        s = results.get(a, {}).get("soak")
        for b in names:
            r = results.get(b, {}).get("report")
            if a == b or not s or not r:
                continue
            n_sent, unique = s["sent"].get(b, 0), r["unique"].get(a, 0)
            t["covered"] += unique > 0
            t["lost"] += max(0, n_sent - unique)
            t["phantom"] += max(0, r["from"].get(a, [0] * 5)[4] - n_sent)  # seqs beyond what was sent
    return t


def _since_threads_settled(rows: list[tuple[float, tuple[float, int, int]]], end: float) -> str:
    """RSS growth since the thread count last changed (aux worker pools start threads on demand), if long enough."""
    if not rows:
        return "no samples"
    settled = 0
    for i in range(1, len(rows)):
        if rows[i][1][1] != rows[i - 1][1][1]:
            settled = i
    seconds = end - rows[settled][0]
    if seconds < 10:
        return "threads still rising"
    return f"{rows[-1][1][0] - rows[settled][1][0]:+.1f} MiB in the last {seconds:.0f} s (threads settled)"


def process_rows(run: Run, started: dict) -> list[tuple[str, str]]:
    """Per process: RSS, threads and open fds when the traffic started, after the warm-up and at its end."""
    t0, t_end = started["start"], started["deadline"]
    t_warm = t0 + min(30.0, 0.25 * (t_end - t0))
    head = f"process: RSS MiB start / +{t_warm - t0:.0f} s / end (growth after warm-up)"
    rows = [(head, "threads, fds (same times); RSS growth once the thread count settled")]
    for label in run.procs:
        a, w, e = run.at(label, t0, after=True), run.at(label, t_warm), run.at(label, t_end)
        if a is None or w is None or e is None:
            rows.append((f"  {label}", "no samples"))
            continue
        per_min = (e[0] - w[0]) / max(1e-9, (t_end - t_warm) / 60)
        during = [(when, s) for when, s in run.samples[label] if t0 <= when <= t_end]
        rows.append(
            (
                f"  {label}: {a[0]:.0f} / {w[0]:.0f} / {e[0]:.0f} ({e[0] - w[0]:+.1f}, {per_min:+.1f}/min)",
                f"{a[1]} / {w[1]} / {e[1]}, {a[2]} / {w[2]} / {e[2]}; {_since_threads_settled(during, t_end)}",
            )
        )
    return rows


def report(args: argparse.Namespace, ws: str, out: str, names: list[str], run: Run, outcome: dict) -> int:
    """Print the table; return 1 when anything was lost, duplicated, corrupt or failed, else 0."""
    from _soak_components import RESULT_FILE, percentile

    failures: list[str] = []
    results: dict = {}
    try:
        with open(os.path.join(out, RESULT_FILE)) as f:
            results = json.load(f)
    except (OSError, ValueError):
        failures.append("the controller wrote no results")
    failures += [f"{name}: {fate}" for name, fate in _fates(ws, names).items() if fate]
    if outcome["hung"]:
        failures.append("the server did not end in time")
    if outcome["stopped"]:
        failures.append(f"{outcome['stopped']} processes had to be stopped")
    failures += [f"process '{label}' exited with {code}" for label, code in outcome["codes"].items() if code != 0]
    for name in names:
        entry = results.get(name, {})
        failures += [
            f"{name}: task {task} ended with {entry.get(f'{task}_rc')}"
            for task in ("soak", "report")
            if results and entry.get(f"{task}_rc") != "OK"
        ]
    t = totals(results, names)
    started = outcome["started"]
    seconds = (started["deadline"] - started["start"]) if started else float("nan")
    pairs = args.sites * (args.sites - 1)

    def ms(counts: np.ndarray, longest: float) -> str:
        return f"{percentile(counts, 0.5) * 1e3:.1f} / {percentile(counts, 0.99) * 1e3:.1f} / {longest * 1e3:.1f}"

    rows: list[tuple[str, str]] = [
        ("sites / processes", f"{args.sites} / {len(run.procs) - 1} + server"),
        ("traffic seconds", f"{seconds:.1f}"),
        ("pairs covered", f"{t['covered']} of {pairs}"),
        ("messages sent", f"{t['sent']}"),
        ("messages received", f"{t['received']}"),
        ("lost", f"{t['lost']}"),
        ("duplicated", f"{t['dup']}"),
        ("out of order (pairs affected)", f"{t['ooo']} ({t['ooo_pairs']})"),
        ("corrupt payloads / seqs never sent", f"{t['corrupt']} / {t['phantom']}"),
        ("replies not OK, by code", ", ".join(f"{c}: {n}" for c, n in sorted(t["codes"].items())) or "none"),
        ("OK replies naming the wrong peer or seq", f"{t['mismatched']}"),
        (f"aux round trip p50 / p99 / max ms (fanout {args.fanout})", ms(t["rtt"], t["rtt_max"])),
        ("one-way delivery p50 / p99 / max ms", ms(t["one_way"], t["one_way_max"])),
        ("messages/s (send_aux_request calls/s)", f"{t['sent'] / seconds:.0f} ({t['calls'] / seconds:.0f})"),
    ]
    rows += process_rows(run, started) if started else []
    total_logs, distinct = _log_lines(ws, run.consoles)
    rows.append(("log lines at WARNING or worse (but the clear-mode notice)", f"{total_logs}"))
    checks = (
        (t["lost"], "messages lost"),
        (t["dup"], "messages duplicated"),
        (t["corrupt"], "corrupt payloads"),
        (t["phantom"], "seqs received that were never sent"),
        (t["mismatched"], "OK replies naming the wrong peer or seq"),
        (sum(t["codes"].values()), "replies not OK"),
        (pairs - t["covered"], "pairs without a message (run longer)"),
    )
    failures += [f"{n} {what}" for n, what in checks if n]
    rows.append(("result", "PASS" if not failures else "FAIL"))
    width = max(len(w) for w, _ in rows) + 2
    print(f"{'soak over gRPC (' + ('TCP' if args.tcp else 'Unix socket') + ')':<{width}}value")
    for what, value in rows:
        print(f"{what:<{width}}{value}")
    for line, n in sorted(distinct.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  log x{n}: {line}")
    for failure in failures[:20]:
        print(f"  failure: {failure}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=60)
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of traffic (after every site is ready)")
    parser.add_argument("--procs", type=int, default=4, help="site processes (the sites are shared out among them)")
    parser.add_argument("--tcp", action="store_true", help="TCP on 127.0.0.1 instead of a Unix socket")
    parser.add_argument("--direct-p2p", action="store_true", help="sites talk to each other directly")
    parser.add_argument("--fanout", type=int, default=1, help="peers per send_aux_request call")
    parser.add_argument("--inflight", type=int, default=1, help="sending threads per site")
    parser.add_argument("--payload", type=int, default=16, help="int64 items in each request's array")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds each sending thread waits between calls")
    parser.add_argument("--timeout", type=float, default=30.0, help="aux timeout, seconds")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="how long the server waits for the sites")
    parser.add_argument(
        "--console-level", default="WARNING", help="log level of the site processes' console files (DEBUG: all)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs) instead of removing it")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.sites < 2:
        parser.error("--sites must be at least 2")
    sys.path.insert(0, HERE)  # for _soak_components (in this process only)
    remove_stale("flsoak")
    tmp = tempfile.mkdtemp(prefix="flsoak")
    with open(os.path.join(tmp, "owner.pid"), "w") as f:
        f.write(str(os.getpid()))
    run = Run(tmp)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (a & job)
    code = 1
    try:
        code = soak(args, tmp, run)
    except KeyboardInterrupt:
        n = run.stop()
        print(f"soak: interrupted; stopped {n} processes" + ("" if args.keep else f", removed {tmp}"), file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.stop()
        if args.keep:
            os.unlink(os.path.join(tmp, "owner.pid"))  # kept on purpose: not a stale folder for later runs
            print(f"soak: workspace kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
