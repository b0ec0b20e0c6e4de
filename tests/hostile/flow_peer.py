"""A gRPC endpoint in a process of its own, for tests/hostile/test_hostile_flow.py (its memory is then its own, and
it can be killed)::

    python flow_peer.py NAME ADDRESS [OPTIONS_JSON]

NAME ``server`` listens on ADDRESS; any other name is a site that connects to the server at ADDRESS. OPTIONS_JSON
holds keyword arguments for GrpcCommunicationProtocol (heartbeat_interval, direct_p2p...). Prints ``ready`` and,
for every frame received, ``frame KIND SENDER NBYTES``; runs until its stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading

from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.protocol import Frame

_lock = threading.Lock()


def say(line: str) -> None:
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(name: str, address: str, options: dict) -> None:
    if name == "server":
        endpoint = GrpcCommunicationProtocol("server", listen=address, **options)
    else:
        endpoint = GrpcCommunicationProtocol(name, server=address, **options)

    def on_frame(frame: Frame) -> None:
        say(f"frame {frame.kind} {frame.sender} {frame.nbytes}")

    endpoint.start(on_frame, lambda peer, connected: say(f"peer {peer} {connected}"))
    say(f"ready {endpoint.bound or ''}")
    sys.stdin.read()
    endpoint.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
