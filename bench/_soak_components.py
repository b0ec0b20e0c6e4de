"""The soak benchmark's job (bench/soak.py): all-to-all aux requests carrying (sender, seq, a small numpy array).

The server's SoakController sends two tasks to every site: ``soak`` (send aux requests to peers until a deadline;
the result holds what was sent and what the replies said) and, once every site has stopped sending, ``report``
(what this site's handler received, per sender). It writes both, per site, to ``out``/soak.json for soak.py to
total. Memory stays flat on purpose: latencies go into fixed log-bucket histograms, and a receiver remembers
which sequence numbers it saw in one bytearray per sender (a byte per message).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import zlib

import numpy as np

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import make_reply

TOPIC = "soak"
STARTED_FILE = "started.json"  # written by the controller when the traffic starts: {"start": t, "deadline": t}
RESULT_FILE = "soak.json"
_RATIO = 1.02  # histogram buckets are 2% wide: [1 us * 1.02**i, 1 us * 1.02**(i+1))
BUCKETS = 1000  # up to 1 us * 1.02**1000, about 400 s
_LOG_RATIO = math.log(_RATIO)


class Histogram:
    """Durations in fixed log buckets (2% wide, 1 us to ~400 s): constant memory however long the run."""

    def __init__(self) -> None:
        self.counts = np.zeros(BUCKETS, dtype=np.int64)
        self.max = 0.0

    def add(self, seconds: float) -> None:
        """Count one duration."""
        i = int(math.log(max(seconds, 1e-6) / 1e-6) / _LOG_RATIO)
        self.counts[min(max(i, 0), BUCKETS - 1)] += 1
        if seconds > self.max:
            self.max = seconds


def percentile(counts: np.ndarray, q: float) -> float:
    """The ``q``-quantile (0..1) of a histogram's counts, in seconds (the middle of its bucket); nan if empty."""
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    i = int(np.searchsorted(np.cumsum(counts), max(1, math.ceil(q * total))))
    return 1e-6 * _RATIO ** (i + 0.5)


def rss_mib() -> float:
    """This process's resident set size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Inbox:
    """What one site's handler received: per sender, which seqs arrived (one byte each) and how."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, bytearray] = {}
        self.stats: dict[str, list[int]] = {}  # sender -> [received, duplicated, out_of_order, corrupt, max_seq]
        self.one_way = Histogram()

    def record(self, sender: str, claimed: str, seq: int, ok: bool, sent_at: float) -> None:
        delay = time.monotonic() - sent_at  # CLOCK_MONOTONIC is one clock for every process of this machine
        with self.lock:
            seen = self.seen.setdefault(sender, bytearray())
            st = self.stats.setdefault(sender, [0, 0, 0, 0, 0])
            st[0] += 1
            if not ok or claimed != sender or seq < 1:
                st[3] += 1
                return
            if seq > len(seen):
                seen.extend(bytes(max(seq - len(seen), len(seen) // 2)))  # grow geometrically
            if seen[seq - 1]:
                st[1] += 1
            seen[seq - 1] = 1
            if seq < st[4]:
                st[2] += 1
            st[4] = max(st[4], seq)
            self.one_way.add(delay)

    def settle(self, quiet: float = 1.0, most: float = 30.0) -> None:
        """Wait (up to ``most`` s) until nothing arrived for ``quiet`` s: requests whose sender timed out may still
        be queued for this site's handlers."""
        deadline = time.monotonic() + most
        count, since = self.total(), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet:
            time.sleep(0.1)
            if self.total() != count:
                count, since = self.total(), time.monotonic()

    def total(self) -> int:
        with self.lock:
            return sum(st[0] for st in self.stats.values())

    def report(self) -> dict:
        with self.lock:
            return {
                "from": {s: list(v) for s, v in self.stats.items()},
                "unique": {s: int(np.count_nonzero(np.frombuffer(b, dtype=np.uint8))) for s, b in self.seen.items()},
                "one_way": self.one_way.counts.copy(),
                "one_way_max": self.one_way.max,
            }


class SoakExecutor(Executor):
    """Task ``soak``: aux requests to peers (``fanout`` per call, from ``inflight`` threads) until the deadline.

    Each request carries the sender's name, a per-(sender, peer) sequence number from 1 up, the send time and an
    int64 array of ``payload`` items (seq + 0, 1, 2...). Peers are visited in a fresh random order every cycle,
    so every pair is covered about evenly. The handler checks the array and answers OK, echoing the seq.
    """

    def __init__(self, fanout: int = 1, inflight: int = 1, timeout: float = 30.0, payload: int = 16, pause: float = 0):
        super().__init__()
        self.fanout, self.inflight, self.timeout, self.payload, self.pause = fanout, inflight, timeout, payload, pause
        self.inbox = _Inbox()

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler(TOPIC, self._receive)

    def _receive(self, topic, request, fl_ctx):
        data = from_shareable(request).data
        seq, x = data.get("seq"), data.get("x")
        sender = request.get_peer_prop(ReservedKey.IDENTITY_NAME, "")
        ok = isinstance(seq, int) and isinstance(x, np.ndarray) and x.shape == (self.payload,)
        ok = ok and bool((x == np.arange(self.payload, dtype=np.int64) + seq).all())
        self.inbox.record(sender, data.get("sender"), seq if isinstance(seq, int) else 0, ok, data.get("t", 0.0))
        return make_reply(ReturnCode.OK, {"soak_seq": seq, "soak_from": sender})

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name == "report":
            self.inbox.settle()
            report = {**self.inbox.report(), "rss_mib": rss_mib(), "pid": os.getpid()}
            return DXO(DataKind.APP_DEFINED, report).to_shareable()
        data = from_shareable(shareable).data
        deadline, engine, me = data["deadline"], fl_ctx.get_engine(), fl_ctx.get_identity_name()
        peers = sorted(set(data["sites"]) - {me})
        state = _Sender(me, peers)
        threads = [
            threading.Thread(target=self._send_loop, args=(engine, state, deadline, abort_signal), daemon=True)
            for _ in range(self.inflight)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return DXO(DataKind.APP_DEFINED, state.report()).to_shareable()

    def _send_loop(self, engine, state: _Sender, deadline: float, abort_signal) -> None:
        fl_ctx = engine.new_context()
        base = np.arange(self.payload, dtype=np.int64)
        while time.time() < deadline and not abort_signal.triggered:
            batch = state.next_batch(self.fanout)
            requests = {
                peer: DXO(
                    DataKind.APP_DEFINED, {"sender": state.me, "seq": seq, "t": time.monotonic(), "x": base + seq}
                ).to_shareable()
                for peer, seq in batch
            }
            t0 = time.perf_counter()
            replies = engine.multicast_aux_requests(TOPIC, requests, self.timeout, fl_ctx)
            state.settle(batch, replies, time.perf_counter() - t0)
            if self.pause:
                time.sleep(self.pause)


class _Sender:
    """One site's sending side: the peer order, the next seq per peer, and what the replies said."""

    def __init__(self, me: str, peers: list[str]) -> None:
        self.me, self.peers = me, peers
        self.lock = threading.Lock()
        self.rng = random.Random(zlib.crc32(me.encode()))
        self.order: list[str] = []
        self.seq = {p: 0 for p in peers}
        self.codes: dict[str, int] = {}  # return code -> count, for replies not OK
        self.mismatched = 0  # OK replies that name the wrong peer or echo the wrong seq
        self.calls = 0
        self.rtt = Histogram()

    def next_batch(self, n: int) -> list[tuple[str, int]]:
        with self.lock:
            batch: list[tuple[str, int]] = []
            while len(batch) < min(n, len(self.peers)):
                if not self.order:
                    self.order = list(self.peers)
                    self.rng.shuffle(self.order)
                peer = self.order.pop()
                if any(p == peer for p, _ in batch):  # a cycle boundary can repeat a peer: put it back for later
                    self.order.insert(0, peer)
                    continue
                self.seq[peer] += 1
                batch.append((peer, self.seq[peer]))
            return batch

    def settle(self, batch: list[tuple[str, int]], replies: dict, seconds: float) -> None:
        with self.lock:
            self.calls += 1
            self.rtt.add(seconds)
            for peer, seq in batch:
                reply = replies.get(peer)
                rc = reply.get_return_code() if reply is not None else "NO_REPLY_ENTRY"
                if rc != ReturnCode.OK:
                    self.codes[rc] = self.codes.get(rc, 0) + 1
                elif (
                    reply.get_header("soak_seq") != seq
                    or reply.get_header("soak_from") != self.me
                    or reply.get_peer_prop(ReservedKey.IDENTITY_NAME, "") != peer
                ):
                    self.mismatched += 1

    def report(self) -> dict:
        with self.lock:
            return {
                "sent": dict(self.seq),
                "codes": dict(self.codes),
                "mismatched": self.mismatched,
                "calls": self.calls,
                "rtt": self.rtt.counts.copy(),
                "rtt_max": self.rtt.max,
            }


class SoakController(Controller):
    """Runs ``soak`` on every site for ``minutes``, then ``report``; writes each site's results to ``out``."""

    def __init__(self, minutes: float = 3.0, out: str = "."):
        super().__init__()
        self.minutes = minutes
        self.out = out

    def control_flow(self, abort_signal, fl_ctx):
        start = time.time()
        deadline = start + self.minutes * 60
        _write_json(os.path.join(self.out, STARTED_FILE), {"start": start, "deadline": deadline})
        results: dict = {}
        sites = [c.name for c in fl_ctx.get_engine().get_clients()]
        for name, data in (("soak", {"deadline": deadline, "sites": sites}), ("report", {})):
            task = Task(name=name, data=DXO(DataKind.APP_DEFINED, data).to_shareable())
            self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
            for ct in task.client_tasks:
                entry = results.setdefault(ct.client.name, {})
                rc = ct.result.get_return_code() if ct.result is not None else "NO_RESULT"
                entry[f"{name}_rc"] = rc
                if rc == ReturnCode.OK:
                    entry[name] = _jsonable(from_shareable(ct.result).data)
            if name == "soak":
                results["_traffic_end"] = time.time()
        _write_json(os.path.join(self.out, RESULT_FILE), results)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
