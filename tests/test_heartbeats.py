"""A site that goes silent without closing its connection (frozen, or cut off by the network) is detected
by heartbeats within seconds."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from flarelite.communication.grpc import GrpcCommunicationProtocol

CLIENT = textwrap.dedent(
    """
    import sys, time
    from flarelite.communication.grpc import GrpcCommunicationProtocol
    ep = GrpcCommunicationProtocol("site-1", server=sys.argv[1], heartbeat_interval=0.2, heartbeat_timeout=2)
    ep.start(lambda frame: None)
    print("connected", flush=True)
    time.sleep(60)
    """
)


def test_frozen_site_is_dropped_by_heartbeats():
    folder = tempfile.mkdtemp(prefix="flhb")
    listen = f"unix://{folder}/s.sock"
    events: queue.Queue = queue.Queue()
    server = GrpcCommunicationProtocol("server", listen=listen, heartbeat_interval=0.2, heartbeat_timeout=2)
    server.start(lambda frame: None, lambda name, up: events.put((name, up)))
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, listen], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        assert events.get(timeout=10) == ("site-1", True)
        os.kill(proc.pid, signal.SIGSTOP)  # frozen: the socket stays open, nothing is sent
        frozen_at = time.monotonic()
        assert events.get(timeout=10) == ("site-1", False)
        assert time.monotonic() - frozen_at < 5
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
