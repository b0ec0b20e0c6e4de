"""The victim of tests/hostile/test_hostile_memory.py: a server endpoint and a site (site-1) in one process.

Run as a script (a process of its own, so that its resident memory is what the attacks cost)::

    python memory_victim.py SOCKET_DIR MODE [PKI_DIR] [OPTIONS_JSON]

MODE is clear or mtls (then PKI_DIR holds the project made with flarelite.certs). OPTIONS_JSON holds keyword
arguments for the server's endpoint (max_message_size, max_open_frames...). Prints one JSON line
``{"ready": ...}``, then one per frame received (where, kind, msg_id, sender, error, buffer sizes and a
checksum). Like the runtime, it answers a frame that arrived with ``error`` set: a ``refused`` frame back to its
sender whose meta is the error. It runs until its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import zlib

from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.communication.protocol import Frame

_lock = threading.Lock()


def say(record: dict) -> None:
    with _lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def tls_for(mode: str, pki: str, name: str) -> TLSConfig:
    if mode == "clear":
        return TLSConfig("clear")
    return TLSConfig.from_dir("mtls", pki, name)


def main(socket_dir: str, mode: str, pki: str, options: dict) -> None:
    endpoints: dict[str, GrpcCommunicationProtocol] = {}

    def handler(where: str):
        def on_frame(frame: Frame) -> None:
            crc = 0
            for b in frame.buffers:
                crc = zlib.crc32(b, crc)
            say(
                {
                    "at": where,
                    "kind": frame.kind,
                    "msg_id": frame.msg_id,
                    "sender": frame.sender,
                    "error": frame.error,
                    "sizes": [memoryview(b).nbytes for b in frame.buffers],
                    "crc": crc,
                }
            )
            if frame.error and frame.kind != "refused":
                reply = Frame(kind="refused", ref_id=frame.msg_id, meta=frame.error.encode())
                threading.Thread(target=endpoints[where].send, args=(frame.sender, reply), daemon=True).start()

        return on_frame

    server = GrpcCommunicationProtocol(
        "server", listen=f"unix://{socket_dir}/s.sock", tls=tls_for(mode, pki, "server"), **options
    )
    endpoints["server"] = server
    server.start(handler("server"))
    site = GrpcCommunicationProtocol("site-1", server=server.bound, tls=tls_for(mode, pki, "site-1"))
    endpoints["site-1"] = site
    site.start(handler("site-1"))
    say({"ready": server.bound, "pid": os.getpid()})
    sys.stdin.read()
    site.stop()
    server.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], args[2] if len(args) > 2 else "", json.loads(args[3]) if len(args) > 3 else {})
