"""Raw socket baseline between two processes: the same bytes over a plain Unix or TCP socket, no framing.

    python bench/_raw_socket.py serve ADDR      # prints "READY <addr>"; receives one payload (8-byte size, then
                                                # the bytes, recv_into one array), answers with its checksums,
                                                # then on stdin EOF prints {"idle_mib", "peak_mib"}
    python bench/_raw_socket.py send ADDR MIB   # prints {"seconds", "idle_mib", "peak_mib"}
    python bench/_raw_socket.py echo ADDR      # prints "READY <addr>"; echoes what one connection sends, until EOF
                                                # (the ping-pong baseline: see ``round_trips``)

ADDR is ``127.0.0.1:0`` (a free port; READY says which) or ``unix:///path.sock``. With ``FLARELITE_RAW_TLS=DIR``
(a folder with ca.crt, server.crt/.key, site-1.crt/.key) the TCP socket is TLS (``ssl.SSLSocket``, mutual: the
best use of Python's ssl, each side only writing or only reading).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time

from _raw_grpc import checks, peak_mib


def _socket(address: str) -> tuple[socket.socket, object]:
    if address.startswith("unix://"):
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), address[len("unix://") :]
    host, port = address.rsplit(":", 1)
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM), (host, int(port))


def _tls(sock: socket.socket, server_side: bool) -> socket.socket:
    folder = os.environ.get("FLARELITE_RAW_TLS")
    if not folder:
        return sock
    if server_side:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(folder, "server.crt"), os.path.join(folder, "server.key"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(os.path.join(folder, "site-1.crt"), os.path.join(folder, "site-1.key"))
    ctx.load_verify_locations(os.path.join(folder, "ca.crt"))
    return ctx.wrap_socket(sock, server_side=server_side, **({} if server_side else {"server_hostname": "server"}))


def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:  # 4 MiB a call: the steadiest of the ways tried here (whole view, MSG_WAITALL)
        n = conn.recv_into(view[got : got + (4 << 20)])
        if n == 0:
            raise ConnectionError("closed early")
        got += n


def serve(address: str) -> None:
    import numpy as np

    sock, where = _socket(address)
    sock.bind(where)
    sock.listen(1)
    shown = address if address.startswith("unix:") else f"127.0.0.1:{sock.getsockname()[1]}"
    idle = peak_mib()
    print("READY", shown, flush=True)
    conn, _ = sock.accept()
    conn = _tls(conn, server_side=True)
    size = bytearray(8)
    _recv_exact(conn, memoryview(size))
    buffer = np.empty(int.from_bytes(size, "little"), dtype=np.uint8)
    _recv_exact(conn, memoryview(buffer))
    conn.sendall(json.dumps(checks(buffer.view(np.float32))).encode() + b"\n")
    conn.close()
    sys.stdin.read()
    print(json.dumps({"idle_mib": idle, "peak_mib": peak_mib()}), flush=True)


def send(address: str, mib: int) -> dict:
    import numpy as np

    sock, where = _socket(address)
    sock.connect(where)
    sock = _tls(sock, server_side=False)
    idle = peak_mib()
    array = np.arange(mib << 18, dtype=np.float32)
    expected = checks(array)
    view = memoryview(array).cast("B")
    t0 = time.perf_counter()
    sock.sendall(view.nbytes.to_bytes(8, "little"))
    sock.sendall(view)
    reply = sock.makefile("rb").readline()
    seconds = time.perf_counter() - t0
    sock.close()
    assert json.loads(reply) == expected, "raw socket: the receiver's checksums differ"
    return {"seconds": seconds, "idle_mib": idle, "peak_mib": peak_mib()}


def echo(address: str) -> None:
    sock, where = _socket(address)
    sock.bind(where)
    sock.listen(1)
    shown = address if address.startswith("unix:") else f"127.0.0.1:{sock.getsockname()[1]}"
    print("READY", shown, flush=True)
    conn, _ = sock.accept()
    if not address.startswith("unix:"):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray(1 << 16)
    while True:
        n = conn.recv_into(buffer)
        if n == 0:
            return
        conn.sendall(memoryview(buffer)[:n])


def round_trips(address: str, n: int, size: int = 64) -> list[float]:
    """``n`` round trips of ``size`` bytes to an ``echo`` process at ``address`` (its READY address)."""
    sock, where = _socket(address)
    sock.connect(where)
    if not address.startswith("unix:"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message, back = b"x" * size, memoryview(bytearray(size))
    rtts = []
    for _ in range(n):
        t0 = time.perf_counter()
        sock.sendall(message)
        _recv_exact(sock, back)
        rtts.append(time.perf_counter() - t0)
    sock.close()
    return rtts


if __name__ == "__main__":
    command, target = sys.argv[1], sys.argv[2]
    if command == "serve":
        serve(target)
    elif command == "echo":
        echo(target)
    elif command == "send":
        print(json.dumps(send(target, int(sys.argv[3]))))
    else:
        raise SystemExit(f"unknown command {command!r}")
