"""Where the time of a small aux round trip goes: site-1 -> site-2 direct (direct_p2p) between processes, on the
data channel (a Unix socket by default; --protocol grpc --data-plane tcp for TCP), traced step by step.

Each site process records a timestamp (``time.perf_counter_ns``: CLOCK_MONOTONIC, one clock for every process of
the machine) on entering and leaving the functions a round trip passes through: the aux runtime's ``send``,
``on_request``, ``_handle_request``, ``_process``, ``on_reply`` and ``_reply_from_frame``, the endpoint's ``send``,
the site's ``on_frame``, the data channel's socket writes, record reads and envelope handling. The wrappers are
installed by a ``sitecustomize`` module this script writes to a temporary folder and puts on PYTHONPATH for the
run (the forkserver and the sites import it at start; tracing costs about 1 us a step). Round trips are lined up
by time; those whose steps came in the most common order are kept (after a warm-up), and every step's median is
printed, with the thread it ran on (A: site-1, B: site-2, the number tells threads apart), then the medians summed
by kind of work. The medians of steps do not add up exactly to the median round trip.

On a Unix socket it then times, in the same run, the same design with no work in it (two processes; a reader
thread handing each request to a handler thread, the reply waking the caller through a lock) and a raw socket
ping-pong: what the design itself costs, and what the work in it does.

Run: python bench/aux_breakdown.py [--n 5000] [--protocol unix|grpc] [--data-plane auto|tcp]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import logging
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from aux_latency import aux_round_trips, raw_socket_round_trips, summarize  # noqa: E402

TRACER = """
import os
if os.environ.get("FLARELITE_TRACE_DIR"):
    import functools, json, threading, time
    _events, _lock = [], threading.Lock()
    _out = os.path.join(os.environ["FLARELITE_TRACE_DIR"], "trace-%d.jsonl")

    def _flush():
        with _lock:
            data, _events[:] = list(_events), []
        if data:
            with open(_out % os.getpid(), "a") as f:
                f.write(json.dumps(data) + "\\n")

    def _mark(tag):
        _events.append((tag, time.perf_counter_ns(), threading.get_ident()))
        if len(_events) >= 4000:
            _flush()

    def _wrap(cls, name, tag):
        original = getattr(cls, name)

        @functools.wraps(original)
        def traced(*args, **kwargs):
            _mark(tag + ">")
            try:
                return original(*args, **kwargs)
            finally:
                _mark(tag + "<")

        setattr(cls, name, traced)

    import atexit
    from flarelite.runtime import aux, site
    from flarelite.communication.dataplane import channel
    from flarelite.communication.grpc import endpoint

    atexit.register(_flush)
    for cls, name, tag in [
        (aux.AuxRunner, "send", "send"),
        (aux.AuxRunner, "on_request", "on_request"),
        (aux.AuxRunner, "_handle_request", "handle"),
        (aux.AuxRunner, "_process", "process"),
        (aux.AuxRunner, "on_reply", "on_reply"),
        (aux.AuxRunner, "_reply_from_frame", "decode_reply"),
        (endpoint.GrpcCommunicationProtocol, "send", "endpoint_send"),
        (site.SiteRuntime, "on_frame", "on_frame"),
        (channel.DataChannel, "_write", "socket_write"),
        (channel.DataChannel, "_on_envelope", "envelope"),
        (channel.DataChannel, "_pass", "deliver"),
    ]:
        _wrap(cls, name, tag)
    _recv_into = channel.DataChannel._recv_into

    def _traced_recv_into(self, *args, **kwargs):
        got = _recv_into(self, *args, **kwargs)
        _mark("socket_read")
        return got

    channel.DataChannel._recv_into = _traced_recv_into
"""


def kind_of(before: tuple[str, str], after: tuple[str, str]) -> str:
    """What a step between two traced events is spent on."""
    (who_a, tag_a), (who_b, tag_b) = before, after
    a, b = tag_a.rstrip("<>"), tag_b.rstrip("<>")
    if who_a != who_b:
        return "wake-ups (the peer's reader by the socket, a handler or caller by a reader)"
    if a == b == "socket_write":
        return "socket writes"
    if ("endpoint_send" in (a, b) and "socket_write" in (a, b)) or tag_b == "endpoint_send<":
        return "endpoint send path (checks, route, protobuf header)"
    if a in ("socket_read", "envelope", "deliver", "on_frame") and b in ("envelope", "deliver", "on_frame"):
        return "channel reader (record and header parse, admission)"
    return "aux runtime (props, codec, waiter, handler pool, context, handler)"


def bare_design_round_trips(n: int) -> list[float]:
    """The runtime's design with no work in it, between two processes over a Unix socket pair: the caller writes
    64 bytes itself; the peer's reader thread hands them to a handler thread (a SimpleQueue), which writes the
    reply; the caller's reader thread wakes the caller through a lock."""
    import queue
    import socket
    import threading
    import time

    ours, theirs = socket.socketpair()
    message = b"x" * 64
    pid = os.fork()
    if pid == 0:  # the peer
        ours.close()
        work: queue.SimpleQueue = queue.SimpleQueue()

        def handler() -> None:
            while work.get() is not None:
                theirs.sendall(message)

        thread = threading.Thread(target=handler)
        thread.start()
        while True:
            data = theirs.recv(1 << 16)
            work.put(data or None)
            if not data:
                break
        thread.join()
        os._exit(0)
    theirs.close()
    waiting: list = [None]

    def reader() -> None:
        while ours.recv(1 << 16):
            waiting[0].release()

    threading.Thread(target=reader, daemon=True).start()
    rtts = []
    for _ in range(n):
        lock = threading.Lock()
        lock.acquire()
        waiting[0] = lock
        t0 = time.perf_counter()
        ours.sendall(message)
        lock.acquire()
        rtts.append(time.perf_counter() - t0)
    ours.shutdown(socket.SHUT_WR)
    os.waitpid(pid, 0)
    ours.close()
    return rtts


def load(folder: str) -> list[tuple[int, str, int, str]]:
    events = []
    for path in glob.glob(os.path.join(folder, "trace-*.jsonl")):
        pid = path.rsplit("-", 1)[1].split(".")[0]
        with open(path) as f:
            for line in f:
                events += [(t, pid, thread, tag) for tag, t, thread in json.loads(line)]
    events.sort()
    return events


def round_trips(events: list) -> list[list[tuple[int, str, str]]]:
    """The events of each round trip, from the caller's send> to its send<, named (A|B)<thread number>."""
    caller = next(pid for _, pid, _, tag in events if tag == "send>")
    threads: dict = {}
    trips, current = [], None
    for t, pid, thread, tag in events:
        who = ("A" if pid == caller else "B") + str(threads.setdefault((pid, thread), len(threads)))
        if tag == "socket_read" and current is not None and current[-1][2] == "socket_read":
            continue  # (a record read in several calls: its last read counts)
        if tag == "send>" and pid == caller:
            current = [(t, who, tag)]
        elif current is not None:
            current.append((t, who, tag))
            if tag == "send<" and pid == caller:
                trips.append(current)
                current = None
    return trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="round trips traced")
    parser.add_argument("--protocol", default="unix", choices=["unix", "grpc"])
    parser.add_argument("--data-plane", default="auto", choices=["auto", "tcp"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "sitecustomize.py"), "w") as f:
            f.write(TRACER)
        saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "FLARELITE_TRACE_DIR")}
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tmp, saved["PYTHONPATH"]) if p)
        os.environ["FLARELITE_TRACE_DIR"] = tmp
        try:
            rtts = aux_round_trips(args.n, args.protocol, direct_p2p=True, data_plane=args.data_plane)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        trips = round_trips(load(tmp))
    if not trips:
        sys.exit("no round trip was traced: did the sites take the sitecustomize module? (PYTHONPATH, -S, -I)")
    trips = trips[len(trips) // 5 :]  # drop warm-up
    orders = collections.Counter(tuple((who, tag) for _, who, tag in trip) for trip in trips)
    order, count = orders.most_common(1)[0]
    kept = [trip for trip in trips if tuple((who, tag) for _, who, tag in trip) == order]
    total = statistics.median(trip[-1][0] - trip[0][0] for trip in kept) / 1e3
    print(f"{'step (A: site-1, B: site-2; threads numbered)':<58}{'median us':>10}  kind")
    kinds: collections.Counter = collections.Counter()
    for i in range(1, len(order)):
        step = statistics.median(trip[i][0] - trip[i - 1][0] for trip in kept) / 1e3
        kind = kind_of(order[i - 1], order[i])
        kinds[kind] += step
        what = f"{order[i - 1][0]} {order[i - 1][1]} -> {order[i][0]} {order[i][1]}"
        print(f"{what:<58}{step:>10.1f}  {kind.split(' (')[0]}")
    print(f"{'round trip traced (median)':<58}{total:>10.1f}")
    print(f"{'round trip as timed by the caller (median)':<58}{summarize(rtts)[0]:>10.1f}")
    for kind, spent in kinds.most_common():
        print(f"by kind: {spent:7.1f} us {spent / total:4.0%}  {kind}")
    print(f"({count} of {len(trips)} round trips came in this order; {len(orders)} orders in all)")
    if args.protocol == "unix":
        bare = summarize(bare_design_round_trips(args.n))[0]
        sock = summarize(raw_socket_round_trips(args.n, "unix"))[0]
        print(f"the same design with no work (reader -> handler thread, reply -> caller by a lock): {bare:.1f} us")
        print(f"raw socket ping-pong, Unix socket (baseline): {sock:.1f} us")


if __name__ == "__main__":
    main()
