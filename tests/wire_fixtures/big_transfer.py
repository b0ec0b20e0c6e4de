"""Send one buffer of N bytes from site-1 to site-2 through a server, all in this process, over a Unix socket.

Run as a script by tests/test_large_payloads.py (a process of its own, so that its peak memory is the
transfer's and the test process does not keep gigabytes mapped)::

    python big_transfer.py NBYTES SOCKET_DIR

Byte i of the buffer is ``i % 251``. Prints one JSON line: the size that arrived, the first chunk that differs
from the pattern (None when bit-exact), the seconds taken and the peak resident memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np

from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.protocol import Frame

PATTERN = (np.arange(251 * 4096) % 251).astype(np.uint8)  # 1 MiB-ish, a whole number of periods


def fill(buf: np.ndarray) -> None:
    for start in range(0, buf.size, PATTERN.size):
        buf[start : start + PATTERN.size] = PATTERN[: buf.size - start]


def first_difference(buf: np.ndarray) -> int | None:
    """The offset of the first pattern-sized chunk that differs from the pattern, or None."""
    for start in range(0, buf.size, PATTERN.size):
        if not np.array_equal(buf[start : start + PATTERN.size], PATTERN[: buf.size - start]):
            return start
    return None


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main(nbytes: int, socket_dir: str) -> dict:
    from inbox import Inbox

    baseline = peak_rss()
    s_in, in1, in2 = Inbox(), Inbox(), Inbox()
    limit = {"max_message_size": 4 << 30}  # over the default of 2 GiB
    server = GrpcCommunicationProtocol("server", listen=f"unix://{socket_dir}/s.sock", **limit)
    server.start(s_in.on_frame, s_in.on_peer)
    c1 = GrpcCommunicationProtocol("site-1", server=server.bound, connect_timeout=20, **limit)
    c2 = GrpcCommunicationProtocol("site-2", server=server.bound, connect_timeout=20, **limit)
    try:
        c2.start(in2.on_frame, in2.on_peer)
        c1.start(in1.on_frame, in1.on_peer)
        buf = np.empty(nbytes, dtype=np.uint8)
        fill(buf)
        began = time.monotonic()
        c1.send("site-2", Frame(kind="big", msg_id="1", meta=b"m", buffers=[buf]))
        sent = time.monotonic()
        got = in2.get(timeout=float(os.environ.get("BIG_TRANSFER_TIMEOUT", "240")))
        arrived = time.monotonic()
        del buf  # the sender may reuse or free its buffer once send() returned
        received = np.frombuffer(got.buffers[0], dtype=np.uint8) if got.buffers else np.empty(0, np.uint8)
        return {
            "kind": got.kind,
            "sender": got.sender,
            "meta": got.meta.decode(),
            "error": got.error,
            "n_buffers": len(got.buffers),
            "received": int(received.size),
            "first_difference": first_difference(received),
            "send_s": round(sent - began, 2),
            "arrive_s": round(arrived - began, 2),
            "baseline_rss": baseline,
            "peak_rss": peak_rss(),
        }
    finally:
        c1.stop()
        c2.stop()
        server.stop()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2])), flush=True)
