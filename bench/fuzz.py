"""Fuzz the codec (loads/decode) and chunked frame reassembly (wire.Assembly) with many hostile inputs.

Inputs: mutations and truncations of valid containers, byte and tree mutations of valid metas (huge ints, shapes,
dtypes, tags, buffer indices), random JSON metas with random buffer lists, random bytes, and random chunk
sequences for Assembly (valid splits, checked to reassemble exactly, and out-of-order/overflowing ones).
A crash is an exception other than DecodeError (codec) or ValueError (Assembly), or a wrong reassembly.

Each input is made from (seed, index) alone, so any one can be replayed: --replay INDEX. Workers (one
process each) run contiguous ranges; a watchdog in this process kills a worker whose current input has
run longer than --hang-s, records a hang and starts a new worker after it.

Run: python bench/fuzz.py [--count 100000] [--workers 2] [--seed 1] [--hang-s 5]
Prints one table: inputs, rejected/accepted, crashes and hangs per kind, the slowest input, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

KINDS = {  # kind -> share of the inputs
    "container mutation": 24,
    "container truncation": 8,
    "meta byte mutation": 16,
    "meta tree mutation": 18,
    "random JSON meta": 10,
    "random bytes": 6,
    "assembly, valid chunks": 8,
    "assembly, random chunks": 10,
    "amplification": 4,  # small floods of costly nodes, colliding keys, deep nesting, buffer counts
}
_KIND_LIST = list(KINDS)
_WEIGHTS = list(KINDS.values())
_BAD = object()  # outcome: the input was accepted but gave a wrong result (a crash too)


# ----------------------------------------------------------------------------------------------- seeds


def _seed_values() -> list[Any]:
    """Valid values covering every type the codec carries."""
    import numpy as np

    from flarelite.apis.dxo import DXO, DataKind
    from flarelite.apis.shareable import Shareable

    values: list[Any] = [
        None, True, 0, -1, 2**63, -(2**100), 1.5, float("nan"), "", "héllo", b"", b"raw\x00", bytearray(b"ba"),
        [], (), {}, [1, "a", None, [2.5, (3, b"x")]], {"a": {"b": [1, {"c": None}]}, 1: "int", 2**70: "big"},
        np.arange(6, dtype="<f4").reshape(2, 3), np.asfortranarray(np.ones((2, 2), ">i8")), np.zeros(0, "|b1"),
        np.array(["ab", "c"], "U2"), np.array([1, 2], "M8[ns]"), np.float16(1.5), np.complex128(1 - 2j),
        np.uint64(2**64 - 1), np.bool_(True),
        DXO(DataKind.WEIGHTS, {"w": np.arange(4.0), "b": np.int32(7)}, {"round": 1}),
        DXO(DataKind.METRICS, {"acc": 0.9}).to_shareable(),
        Shareable({"x": [1, 2], "y": DXO("custom", {"z": b"1"})}),
        {f"k{i}": [i, float(i), str(i)] for i in range(40)},
        {i: i * 2 for i in range(80)},
    ]  # fmt: skip
    try:
        import torch

        values += [
            torch.arange(6, dtype=torch.float32).reshape(2, 3),
            {"t": torch.ones(3, dtype=torch.bfloat16), "i": torch.tensor(5)},
            torch.zeros(0, dtype=torch.bool),
        ]
    except ImportError:
        pass
    return values


_SEEDS: list[tuple[bytes, list[bytes], bytes]] = []


def seeds() -> list[tuple[bytes, list[bytes], bytes]]:
    """(meta, buffers, container) for each seed value; built once per process."""
    if not _SEEDS:
        from flarelite.serialization import dumps, encode

        for v in _seed_values():
            enc = encode(v)
            _SEEDS.append((bytes(enc.meta), [bytes(b) for b in enc.buffers], dumps(v)))
    return _SEEDS


# ----------------------------------------------------------------------------------------------- inputs


INTERESTING_INTS = [0, 1, -1, 7, 63, 64, 255, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30]
INTERESTING_STRS = list("ltdSXbBanTIDCF") + [
    "<f4", ">f8", "|b1", "<c16", "|S999999999", "<U999999999", "|O8", "O", "V8", "f4,i4", "(2,)f4", "<M8[ns]",
    "<M8[bogus]", "float32", "bfloat16", "qint8", "os.system", "builtins.eval", "WEIGHTS", "", "\x00", "\ud800",
]  # fmt: skip


def _mutate_bytes(rng: random.Random, blob: bytearray, n: int) -> bytearray:
    for _ in range(n):
        op = rng.randrange(6)
        i = rng.randrange(len(blob)) if blob else 0
        if op == 0 and blob:
            blob[i] = rng.randrange(256)
        elif op == 1 and blob:
            blob[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            blob[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            del blob[i : i + rng.randint(1, 8)]
        elif op == 4 and blob:
            j = rng.randrange(len(blob))
            blob[i:i] = blob[j : j + rng.randint(1, 16)]  # duplicate a slice
        elif op == 5 and len(blob) >= 24:
            at = rng.choice((8, 16, 24 + 8 * rng.randrange(4)))
            blob[at : at + 8] = struct.pack("<Q", rng.choice(INTERESTING_INTS) % 2**64)
    return blob


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 6 or r < 0.45:
        return rng.choice(
            [None, True, False, rng.choice(INTERESTING_INTS), rng.uniform(-1e9, 1e9), rng.choice(INTERESTING_STRS),
             float("nan"), -0.0, "x" * rng.randint(0, 9)]
        )  # fmt: skip
    if r < 0.9:
        return [rng.choice(INTERESTING_STRS[:14])] + [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if r < 0.95:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {str(rng.randrange(9)): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _nodes(tree: Any, out: list[tuple[list, int]]) -> list[tuple[list, int]]:
    """Every (list, index) slot in a parsed meta, to replace one."""
    if type(tree) is list:
        for i, x in enumerate(tree):
            out.append((tree, i))
            _nodes(x, out)
    return out


def _mutate_tree(rng: random.Random, meta: bytes) -> bytes:
    top = json.loads(meta)
    for _ in range(rng.randint(1, 4)):
        slots = _nodes(top, [])
        parent, i = rng.choice(slots)
        r = rng.random()
        if r < 0.25:
            parent[i] = rng.choice(INTERESTING_INTS) * rng.choice((1, -1))
        elif r < 0.45:
            parent[i] = rng.choice(INTERESTING_STRS)
        elif r < 0.6:
            parent[i] = rng.choice([[0, 2**62, 2**62], [2**40, 2**40], [-1], [1] * 65, [0, 2**64], [], [3]])
        elif r < 0.75:
            parent[i] = _random_json(rng)
        elif r < 0.85:
            parent.insert(i, parent[i])  # duplicate: a key, a buffer reference, a field
        elif r < 0.95 and len(parent) > 1:
            del parent[i]
        else:
            x = parent[i]
            for _ in range(rng.randint(1, 300)):
                x = ["l", x]
            parent[i] = x
    return json.dumps(top, allow_nan=True).encode("ascii", "backslashreplace")


def _random_buffers(rng: random.Random, buffers: list[bytes]) -> list[bytes]:
    r = rng.random()
    if r < 0.5:
        return buffers
    out = list(buffers)
    if r < 0.7 and out:
        j = rng.randrange(len(out))
        out[j] = out[j][: rng.randint(0, len(out[j]))] + bytes(rng.randint(0, 3))
    elif r < 0.85:
        out.append(bytes(rng.randint(0, 16)))
    elif out:
        rng.shuffle(out)
    return out


FLOOD_ITEMS = [b'["S"]', b'["X","W",["d"],["d"]]', b'["a",%d,"<f8",[0],"C"]', b'["T",%d,"bool",[0]]', b'["l"]',
               b'["d"]', b'["n","|b1","01"]', b'["b",%d]', b'["I","%x"]', b'[]', b'["t",["t",["t"]]]']  # fmt: skip


def _amplification(rng: random.Random) -> tuple[bytes, list[bytes]] | bytes:
    """A small input shaped to cost much more than its size, were it not for the codec's limits."""
    r = rng.random()
    n = rng.randint(100, 5000)
    if r < 0.5:
        item = rng.choice(FLOOD_ITEMS)
        buffered = b"%d" in item
        body = b",".join((item % i) if buffered or b"%x" in item else item for i in range(n))
        return b'[1,["l",' + body + b"]]", [b""] * n if buffered else []
    if r < 0.65:
        p = 2**61 - 1
        return b'[1,["d",' + b",".join(b'%d,["l"]' % (k * p) for k in range(1, n + 1)) + b"]]", []
    if r < 0.8:
        depth = rng.randint(200, 3000)
        tag = rng.choice((b'["l",', b'["S","k",', b'["d","k",', b'["X","W",["d","k",', b"["))
        return b"[1," + tag * depth + b"1" + b"]" * depth * (2 if b"X" in tag else 1) + b"]", []
    count = rng.randint(1000, 50000)
    fifty = b'[1,["l",' + b",".join(b'["b",%d]' % i for i in range(50)) + b"]]"
    meta = rng.choice((b"[1,null]", b'[1,["b",0]]', fifty))
    head = struct.pack("<4sHHQQ", b"FLRC", 1, 0, len(meta), count) + bytes(8 * count) + meta
    if rng.random() < 0.5:
        return head + bytes(-len(head) % 64)  # a container announcing ``count`` empty buffers
    return meta, [b""] * count  # decode handed ``count`` buffers


def make_input(seed: int, index: int) -> tuple[str, Any]:
    """The input ``index`` of run ``seed``: (kind, payload); the same every time."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = rng.choices(_KIND_LIST, _WEIGHTS)[0]
    meta, buffers, blob = rng.choice(seeds())
    if kind == "container mutation":
        return kind, bytes(_mutate_bytes(rng, bytearray(blob), rng.randint(1, 8)))
    if kind == "container truncation":
        cut = rng.randrange(len(blob) + 1)
        return kind, blob[:cut] if rng.random() < 0.8 else blob + bytes(rng.randint(1, 70))
    if kind == "meta byte mutation":
        return kind, (bytes(_mutate_bytes(rng, bytearray(meta), rng.randint(1, 6))), _random_buffers(rng, buffers))
    if kind == "meta tree mutation":
        return kind, (_mutate_tree(rng, meta), _random_buffers(rng, buffers))
    if kind == "random JSON meta":
        text = json.dumps([1, _random_json(rng)], allow_nan=True).encode("ascii", "backslashreplace")
        return kind, (text, [bytes(rng.randint(0, 24)) for _ in range(rng.randint(0, 4))])
    if kind == "random bytes":
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        return kind, (b"FLRC\x01\x00\x00\x00" + raw) if rng.random() < 0.5 else raw
    if kind == "amplification":
        return kind, _amplification(rng)
    sizes = [rng.choice((0, 1, rng.randint(0, 300), rng.randint(0, 3000))) for _ in range(rng.randint(0, 5))]
    meta_size = rng.choice((0, 0, rng.randint(1, 500)))
    if kind == "assembly, valid chunks":
        datas = [bytes(rng.randrange(256) for _ in range(n)) for n in sizes + ([meta_size] if meta_size else [])]
        chunks = []
        for b, data in enumerate(datas):
            if data and rng.random() < 0.1:
                chunks.append((b, b""))  # an empty chunk for the buffer being filled is harmless
            at = 0
            while at < len(data):
                n = rng.randint(1, max(1, len(data) // rng.randint(1, 4)))
                chunks.append((b, data[at : at + n]))
                at += n
        return kind, (sizes, meta_size, chunks, datas)
    chunks = [(rng.randint(0, 6), bytes(rng.randint(0, 400))) for _ in range(rng.randint(0, 30))]
    if rng.random() < 0.1:
        sizes = [rng.choice((1 << 20, 1 << 26))] + sizes  # big announced buffer: memory must follow received bytes
    return kind, (sizes, meta_size, chunks, None)


# ----------------------------------------------------------------------------------------------- running


def run_input(kind: str, payload: Any) -> Any:
    """Run one input; returns 'rejected', 'accepted' or _BAD; unexpected exceptions propagate."""
    from flarelite.errors import DecodeError
    from flarelite.serialization import decode, loads

    if kind.startswith("assembly"):
        return _run_assembly(payload)
    try:
        if isinstance(payload, tuple):
            decode(payload[0], payload[1])
        else:
            loads(payload)
    except DecodeError:
        return "rejected"
    return "accepted"


def _run_assembly(payload: Any) -> Any:
    from flarelite.communication.grpc import flarelite_pb2 as pb
    from flarelite.communication.grpc import wire

    sizes, meta_size, chunks, datas = payload
    assembly = wire.Assembly(pb.Header(kind="aux_req", buffer_sizes=sizes, meta_size=meta_size))
    rejected = False
    for buffer, data in chunks:
        try:
            assembly.add(pb.Chunk(stream=1, buffer=buffer, data=data))
        except ValueError:
            rejected = True
            if datas is not None:
                return _BAD  # a valid sequence must be accepted
    if datas is not None:
        if not assembly.complete:
            return _BAD
        frame = assembly.finish()
        got = [bytes(b) for b in frame.buffers] + ([bytes(frame.meta)] if meta_size else [])
        return "accepted" if got == datas else _BAD
    if assembly.complete:
        frame = assembly.finish()
        if [len(b) for b in frame.buffers] != sizes or (meta_size and len(frame.meta) != meta_size):
            return _BAD
    return "rejected" if rejected else "accepted"


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def worker(seed: int, start: int, stop: int, progress: Any, results: Any) -> None:
    """Run inputs [start, stop); ``progress`` holds (current index, its start time) for the watchdog.

    Reports go to ``results`` every 1000 inputs (so a worker killed for a hang loses at most those).
    """
    seeds()
    run_input("random bytes", b"")  # imports done before the clock starts
    run_input("assembly, random chunks", ([1], 0, [(0, b"x")], None))
    rss_start = _rss_kib() if os.path.exists("/proc/self/statm") else 0
    report: dict[str, Any] = {}

    def flush() -> None:
        if report:
            report["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            results.put(dict(report))
        report.clear()
        report.update(stats={k: [0, 0, 0] for k in KINDS}, crashes={}, crash_count=0, slowest=(0.0, -1, ""))
        report["rss_start_kib"] = rss_start

    flush()
    for i in range(start, stop):
        kind, payload = make_input(seed, i)
        progress[0], progress[1] = i, time.monotonic()
        t0 = time.perf_counter()
        try:
            outcome = run_input(kind, payload)
        except Exception as exc:  # a crash: anything but the codec's and the reassembly's own errors
            outcome = None
            report["crashes"].setdefault(f"{type(exc).__name__} ({kind})", (kind, i, str(exc)[:100]))
        dt = time.perf_counter() - t0
        row = report["stats"][kind]  # inputs, rejected, accepted
        row[0] += 1
        if outcome is _BAD:
            outcome = None
            report["crashes"].setdefault(f"wrong result ({kind})", (kind, i, "the reassembled frame differs"))
        if outcome is None:
            report["crash_count"] += 1
        else:
            row[1 if outcome == "rejected" else 2] += 1
        if dt > report["slowest"][0]:
            report["slowest"] = (dt, i, kind)
        if (i - start) % 1000 == 999:
            flush()
    flush()
    progress[0] = stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to run (default 100000)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-s", type=float, default=5.0, help="an input running longer than this is a hang")
    parser.add_argument("--replay", type=int, default=None, help="run input INDEX here, with its traceback")
    args = parser.parse_args()
    if args.replay is not None:
        kind, payload = make_input(args.seed, args.replay)
        print(f"input {args.replay} ({kind}): {payload!r:.300}")
        print("outcome:", run_input(kind, payload))
        return

    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    results = ctx.Queue()
    bounds = [args.count * w // args.workers for w in range(args.workers + 1)]
    running: list[tuple[Any, Any, int]] = []  # (process, progress, stop)

    def launch(start: int, stop: int) -> None:
        if start >= stop:
            return
        progress = ctx.Array("d", [start, time.monotonic() + 60.0], lock=False)  # 60 s to start up
        proc = ctx.Process(target=worker, args=(args.seed, start, stop, progress, results), daemon=True)
        proc.start()
        running.append((proc, progress, stop))

    t0 = time.monotonic()
    for w in range(args.workers):
        launch(bounds[w], bounds[w + 1])
    reports: list[dict] = []
    hangs: list[tuple[int, str]] = []
    dead: list[tuple[int, str]] = []
    while running:
        while not results.empty():
            reports.append(results.get())
        for entry in list(running):
            proc, progress, stop = entry
            current = int(progress[0])
            if not proc.is_alive():
                proc.join()
                running.remove(entry)
                if proc.exitcode != 0:  # killed by the kernel (memory?) or a crash in C: count it, go on
                    dead.append((current, f"worker exited with {proc.exitcode}"))
                    launch(current + 1, stop)
            elif current < stop and time.monotonic() - progress[1] > args.hang_s:
                proc.kill()
                proc.join()
                running.remove(entry)
                hangs.append((current, make_input(args.seed, current)[0]))
                launch(current + 1, stop)
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the last reports of workers that just exited
        try:
            reports.append(results.get(timeout=0.2))
        except Exception:  # queue.Empty
            if sum(sum(row[0] for row in r["stats"].values()) for r in reports) + len(hangs) + len(dead) >= args.count:
                break
    elapsed = time.monotonic() - t0
    print_table(args, reports, hangs, dead, elapsed)


def print_table(args: Any, reports: list[dict], hangs: list, dead: list, elapsed: float) -> None:
    stats = {k: [0, 0, 0] for k in KINDS}
    crashes: dict[str, tuple[str, int, str]] = {}
    crash_count = 0
    slowest = (0.0, -1, "")
    for r in reports:
        for k, row in r["stats"].items():
            stats[k] = [a + b for a, b in zip(stats[k], row)]
        for name, example in r["crashes"].items():
            crashes.setdefault(name, tuple(example))
        crash_count += r["crash_count"]
        slowest = max(slowest, tuple(r["slowest"]))
    hang_kinds = [k for _, k in hangs]
    total = sum(row[0] for row in stats.values()) + len(hangs) + len(dead)
    print(
        f"fuzz: {total} inputs in {elapsed:.1f} s, {args.workers} workers, seed {args.seed}, "
        f"hang = over {args.hang_s:g} s"
    )
    print(f"{'kind':<26}{'inputs':>9}{'rejected':>10}{'accepted':>10}{'crashes':>9}{'hangs':>7}")
    for k, (n, rej, acc) in stats.items():
        n_hangs = hang_kinds.count(k)
        print(f"{k:<26}{n + n_hangs:>9}{rej:>10}{acc:>10}{n - rej - acc:>9}{n_hangs:>7}")
    print(f"{'total':<26}{total:>9}{sum(r[1] for r in stats.values()):>10}{sum(r[2] for r in stats.values()):>10}"
          f"{crash_count:>9}{len(hangs):>7}")  # fmt: skip
    print(f"slowest input: #{slowest[1]} ({slowest[2]}), {slowest[0] * 1000:.1f} ms (replay: --replay {slowest[1]})")
    peak = max((r["peak_kib"] for r in reports), default=0)
    start = min((r["rss_start_kib"] for r in reports), default=0)
    print(f"peak RSS of a worker: {peak / 1024:.0f} MiB (a worker holds {start / 1024:.0f} MiB when it starts)")
    for name, (kind, i, text) in sorted(crashes.items()):
        print(f"crash {name}: input #{i}: {text}")
    for i, kind in hangs:
        print(f"hang: input #{i} ({kind})")
    for i, why in dead:
        print(f"lost: input #{i}: {why}")
    lost = args.count - total
    if lost > 0:
        print(f"not counted: {lost} inputs run by workers killed for a hang before their last report")
    if not crashes and not hangs and not dead:
        print("no crashes, no hangs")


if __name__ == "__main__":
    main()
