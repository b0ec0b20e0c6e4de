"""Large aux payloads site-1 -> site-2 (a numpy float32 array) over a Unix socket and TCP, relayed by the server
and direct (direct_p2p; on a Unix socket, and over TCP under mtls or with --data-plane tcp, its bytes take the
data channel), next to the same bytes between two processes over a raw socket (plain, and TLS for the TLS rows),
raw grpcio client streaming with the sync API (its best use: a generator of 1 MiB messages, the receiver copying
into one array) and with grpc.aio, all in the same run.

Targets (from the issues):
  - throughput: "direct at least 70% and relayed at least 50% of raw grpcio's throughput" (against the sync
    figure, the better one); the data channel (direct) at least 50% of the raw Unix socket on one machine, at
    least 60% of the raw TCP socket over TCP (plain: --data-plane tcp in clear mode) and of the raw TLS socket
    under mtls;
  - memory: "peak RSS of sender and receiver each at most payload + 300 MiB above their idle size, the relay
    under 300 MiB" (above its idle size; in the direct runs the server relays nothing); on the data plane
    (direct, not --data-plane grpc) payload + 64 MiB.
On a Unix socket the data channel hands large buffers over in sealed shared memory (memfd); the row marked
FLARELITE_SHARED_MEMORY=0 sends them through the channel's socket instead.
The transfer is timed inside the sending executor, from send_aux_request until the reply arrived; the receiver's
handler checks sums of a few slices of the array before it replies OK. Each process reports its peak RSS
(ru_maxrss) and its idle RSS (the same, just before the transfer) through a file in its site folder.

Run: python bench/aux_throughput.py [--sizes 256,1024] [--transports unix,grpc] [--rounds 3]
Each round measures every row once, its baselines included. Prints one table: GB/s (1e9 bytes/s) and the ratio
to raw sync grpcio on the same transport, each the median over the rounds of what was measured in one round, and
the peak/idle RSS in MiB of the round whose RSS grew most; the targets' ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _jobs import write_job  # noqa: E402
from _raw_grpc import RawServer  # noqa: E402

from flarelite.communication.dataplane import shared_memory  # noqa: E402
from flarelite.simulator.runner import run_simulation  # noqa: E402

SHM_OFF = f"{shared_memory.ENV}=0"  # the Unix data channel's buffers through the socket, not in shared memory
TRANSPORTS = {"unix": "Unix", "grpc": "TCP"}  # run_simulation's protocol -> its name here
ROLES = ("sender", "receiver", "server")


def transfer(mib: int, protocol: str, direct_p2p: bool = False, data_plane: str = "auto", tls: str = "clear") -> dict:
    """site-1 sends ``mib`` MiB to site-2 once: seconds and each process's rss {role: (idle, peak)}."""
    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(
            tmp,
            {"path": "bench_components.BlobController", "args": {"size_mib": mib}},
            {"path": "bench_components.BlobExecutor", "args": {}},
            "aux_throughput",
        )
        ws = os.path.join(tmp, "ws")
        run_simulation(job, ws, n_clients=2, protocol=protocol, direct_p2p=direct_p2p, data_plane=data_plane, tls=tls)
        reports = {}
        for role, site in zip(ROLES, ("site-1", "site-2", "server")):
            with open(os.path.join(ws, site, "bench.json")) as f:
                reports[role] = json.load(f)
    rss = {role: (r["idle_mib"], r["peak_mib"]) for role, r in reports.items()}
    return {"seconds": reports["sender"]["seconds"], "rss": rss}


def raw(mib: int, protocol: str, kind: str = "aio") -> dict:
    """A baseline, once: a client process sends ``mib`` MiB to a server process (``kind``: grpcio ``aio`` or ``sync``
    streaming in 1 MiB messages, a raw ``socket``, or a raw ``tls`` socket)."""
    if kind != "tls":
        return _raw_once(mib, protocol, kind)
    from flarelite import certs

    with tempfile.TemporaryDirectory() as folder:
        certs.init_ca(folder, "bench")
        certs.issue(folder, "server", "server")
        certs.issue(folder, "site-1")
        os.environ["FLARELITE_RAW_TLS"] = folder
        try:
            return _raw_once(mib, protocol, "socket")
        finally:
            del os.environ["FLARELITE_RAW_TLS"]


def _raw_once(mib: int, protocol: str, kind: str) -> dict:
    serve, send, script = {
        "aio": ("serve", "send", None),
        "sync": ("serve-sync", "send-sync", None),
        "socket": ("serve", "send", os.path.join(HERE, "_raw_socket.py")),
    }[kind]
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix://{tmp}/raw.sock" if protocol == "unix" else "127.0.0.1:0"
        with RawServer(address, serve, **({"script": script} if script else {})) as server:
            sent: dict = server.client(send, mib)  # type: ignore[assignment]
    rss = {"sender": (sent["idle_mib"], sent["peak_mib"]), "receiver": (server.rss["idle_mib"], server.rss["peak_mib"])}
    return {"seconds": sent["seconds"], "rss": rss}


def modes(protocol: str) -> list[tuple[str, bool, str, str, float]]:
    """The flarelite rows of ``protocol``: (name, direct_p2p, data_plane, tls mode, share of raw sync grpcio wanted)."""
    rows = [("relayed via server", False, "auto", "clear", 0.5), ("direct (direct_p2p)", True, "auto", "clear", 0.7)]
    if protocol == "unix":
        rows += [
            (f"direct, {SHM_OFF}", True, "auto", "clear", 0.7),
            ("direct, --data-plane grpc", True, "grpc", "clear", 0.7),
        ]
    else:
        rows += [("direct, --data-plane tcp", True, "tcp", "clear", 0.7), ("direct, mtls", True, "auto", "mtls", 0.7)]
    return rows


def measure_round(mib: int, protocol: str) -> dict[str, dict]:
    """Every row of ``mib`` MiB over ``protocol`` once, baselines included: {row: result}."""
    name = TRANSPORTS[protocol]
    out = {f"raw {name} socket (baseline)": raw(mib, protocol, "socket")}
    if protocol == "grpc":
        out[f"raw {name} TLS socket (baseline)"] = raw(mib, protocol, "tls")
    out[f"raw grpcio sync streaming, {name} (baseline)"] = raw(mib, protocol, "sync")
    out[f"raw grpcio aio streaming, {name}"] = raw(mib, protocol, "aio")
    for mode, direct_p2p, plane, tls, _ in modes(protocol):
        if mode.endswith(SHM_OFF):
            os.environ[shared_memory.ENV] = "0"
        try:
            out[f"aux {mode}, {name}"] = transfer(mib, protocol, direct_p2p, plane, tls)
        finally:
            os.environ.pop(shared_memory.ENV, None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024", help="payload sizes in MiB, comma-separated")
    parser.add_argument("--transports", default="unix,grpc", help="unix and/or grpc (TCP), comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement, interleaved")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    protocols = [p for p in TRANSPORTS if p in args.transports.split(",")]
    # each round measures every row once, its baselines included, so that a ratio compares measurements taken
    # minutes apart at most; the table gives medians over the rounds (this machine's speed drifts, and a fresh
    # process's first touch of its memory makes single runs vary up to 3x)
    rounds: dict[tuple[int, str], list[dict[str, dict]]] = {}
    for _ in range(args.rounds):
        for mib in sizes:
            for protocol in protocols:
                rounds.setdefault((mib, protocol), []).append(measure_round(mib, protocol))
    lines, verdicts = [], []
    for (mib, protocol), per_round in rounds.items():
        name = TRANSPORTS[protocol]
        sync_row = f"raw grpcio sync streaming, {name} (baseline)"

        def ratio(what: str, base: str, per_round: list = per_round) -> float:
            """The median over the rounds of base's seconds / what's (what's speed as a share of base's)."""
            return statistics.median(r[base]["seconds"] / r[what]["seconds"] for r in per_round)

        def growth(what: str, role: str, per_round: list = per_round) -> float:
            """The most the role's RSS grew above its idle size in any round."""
            return max(r[what]["rss"][role][1] - r[what]["rss"][role][0] for r in per_round)

        for what in per_round[0]:
            rate = statistics.median((mib << 20) / r[what]["seconds"] / 1e9 for r in per_round)
            worst = max(per_round, key=lambda r: max(p - i for i, p in r[what]["rss"].values()))[what]["rss"]
            rss = "".join(f"{'%.0f/%.0f' % worst[role][::-1]:>20}" if role in worst else f"{'-':>20}" for role in ROLES)
            lines.append(f"{what:<44}{mib:>6}{rate:>8.3f}{ratio(what, sync_row):>7.2f}{rss}")
        for mode, direct_p2p, plane, tls, share in modes(protocol):
            what = f"aux {mode}, {name}"
            above = 64 if direct_p2p and plane != "grpc" else 300  # the data plane's target is tighter
            s_up, r_up, l_up = (growth(what, role) for role in ROLES)
            to_sync = ratio(what, sync_row)
            verdicts += [
                (f"{mib} MiB {name}: {mode} >= {share:.0%} of raw sync grpcio ({to_sync:.0%})", to_sync >= share),
                (
                    f"{mib} MiB {name}, {mode}: sender, receiver <= payload + {above} MiB above idle "
                    f"(+{s_up:.0f}, +{r_up:.0f}), server < 300 MiB (+{l_up:.0f})",
                    max(s_up, r_up) <= mib + above and l_up < 300,
                ),
            ]
            if protocol == "unix" and direct_p2p and plane == "auto":  # (shared memory, and without it)
                to_sock = ratio(what, f"raw {name} socket (baseline)")
                verdicts.append((f"{mib} MiB Unix, {mode}: >= 50% of the raw socket ({to_sock:.0%})", to_sock >= 0.5))
            if protocol == "grpc" and direct_p2p and (plane == "tcp" or tls == "mtls"):
                base = "TLS socket" if tls == "mtls" else "socket"
                to_sock = ratio(what, f"raw {name} {base} (baseline)")
                verdicts.append(
                    (
                        f"{mib} MiB TCP ({tls}): data channel >= 60% of the raw TCP {base} ({to_sock:.0%})",
                        to_sock >= 0.6,
                    )
                )
    rss_head = "".join(f"{role + ' peak/idle':>20}" for role in ROLES)
    print(f"{'site-1 -> site-2':<44}{'MiB':>6}{'GB/s':>8}{'x sync':>7}{rss_head}")
    print("\n".join(lines))
    for target, met in verdicts:
        print(f"target: {target} -> {'met' if met else 'NOT met'} (median of {args.rounds})")


if __name__ == "__main__":
    main()
