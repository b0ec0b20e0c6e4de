"""Raw grpcio baselines between two processes: a bidirectional-stream ping-pong and a client-streaming sink,
with grpc.aio and with the sync API (its best use for bulk: a thread pool server, a request generator).

No flarelite and no generated stubs: generic handlers and identity (bytes) serializers.

    python bench/_raw_grpc.py serve ADDR        # prints "READY <addr>"; on stdin EOF {"idle_mib", "peak_mib"}
    python bench/_raw_grpc.py serve-sync ADDR   # the same server with the sync API
    python bench/_raw_grpc.py ping ADDR N       # prints a JSON list of N round trips (seconds)
    python bench/_raw_grpc.py send ADDR MIB     # prints {"seconds", "idle_mib", "peak_mib"}
    python bench/_raw_grpc.py send-sync ADDR MIB

ADDR is ``127.0.0.1:0`` (a free port; READY says which) or ``unix:///path.sock``. The helpers below start the
server and run a client from the benchmark's process.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time

CHUNK = 1 << 20
OPTIONS = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checks(array) -> list[float]:
    import numpy as np

    step = max(1, len(array) // 8)
    return [float(array[i : i + 4096].sum(dtype=np.float64)) for i in range(0, len(array), step)]


async def serve(address: str) -> None:
    import grpc
    import numpy as np

    async def ping(requests, context):
        async for message in requests:
            yield message

    async def sink(requests, context):
        buffer, filled = None, 0
        async for message in requests:
            if buffer is None:  # the first message is the total size
                buffer = bytearray(int.from_bytes(message, "little"))
                continue
            buffer[filled : filled + len(message)] = message
            filled += len(message)
        return json.dumps(checks(np.frombuffer(buffer, dtype=np.float32))).encode()

    server = grpc.aio.server(options=OPTIONS)
    handlers = {
        "Ping": grpc.stream_stream_rpc_method_handler(ping),
        "Sink": grpc.stream_unary_rpc_method_handler(sink),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Raw", handlers),))
    port = server.add_insecure_port(address)
    await server.start()
    idle = peak_mib()
    print("READY", address if address.startswith("unix:") else f"127.0.0.1:{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(0)
    print(json.dumps({"idle_mib": idle, "peak_mib": peak_mib()}), flush=True)


def serve_sync(address: str) -> None:
    """The sink with the sync API; the receiver copies each message into one array, allocated (lazily, as
    numpy does for large arrays) when the size arrives."""
    from concurrent import futures

    import grpc
    import numpy as np

    def sink(requests, context):
        buffer, filled = None, 0
        for message in requests:
            if buffer is None:
                buffer = np.empty(int.from_bytes(message, "little"), dtype=np.uint8)
                continue
            buffer[filled : filled + len(message)] = np.frombuffer(message, dtype=np.uint8)
            filled += len(message)
        return json.dumps(checks(buffer.view(np.float32))).encode()

    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    handlers = {"Sink": grpc.stream_unary_rpc_method_handler(sink)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Raw", handlers),))
    port = server.add_insecure_port(address)
    server.start()
    idle = peak_mib()
    print("READY", address if address.startswith("unix:") else f"127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    server.stop(0)
    print(json.dumps({"idle_mib": idle, "peak_mib": peak_mib()}), flush=True)


def send_sync(address: str, mib: int) -> dict:
    """Stream ``mib`` MiB with the sync API: a generator of 1 MiB bytes messages."""
    import grpc
    import numpy as np

    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        idle = peak_mib()
        array = np.arange(mib << 18, dtype=np.float32)
        expected = checks(array)
        view = memoryview(array).cast("B")

        def messages():
            yield view.nbytes.to_bytes(8, "little")
            for offset in range(0, view.nbytes, CHUNK):
                yield bytes(view[offset : offset + CHUNK])

        t0 = time.perf_counter()
        reply = channel.stream_unary("/bench.Raw/Sink")(messages())
        seconds = time.perf_counter() - t0
    assert json.loads(reply) == expected, "raw grpc (sync): the receiver's checksums differ"
    return {"seconds": seconds, "idle_mib": idle, "peak_mib": peak_mib()}


async def ping(address: str, n: int) -> list[float]:
    import grpc

    async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.stream_stream("/bench.Raw/Ping")()
        rtts = []
        for _ in range(n):
            t0 = time.perf_counter()
            await call.write(b"ping")
            await call.read()
            rtts.append(time.perf_counter() - t0)
        await call.done_writing()
    return rtts


async def send(address: str, mib: int) -> dict:
    import grpc
    import numpy as np

    async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
        await channel.channel_ready()
        idle = peak_mib()
        array = np.arange(mib << 18, dtype=np.float32)
        expected = checks(array)
        view = memoryview(array).cast("B")
        t0 = time.perf_counter()
        call = channel.stream_unary("/bench.Raw/Sink")()
        await call.write(view.nbytes.to_bytes(8, "little"))
        for offset in range(0, view.nbytes, CHUNK):
            await call.write(bytes(view[offset : offset + CHUNK]))
        await call.done_writing()
        reply = await call
        seconds = time.perf_counter() - t0
    assert json.loads(reply) == expected, "raw grpc: the receiver's checksums differ"
    return {"seconds": seconds, "idle_mib": idle, "peak_mib": peak_mib()}


class RawServer:
    """A baseline's serve process, as a context manager: ``address`` once it is ready; ``rss`` (idle_mib,
    peak_mib) after."""

    def __init__(self, address: str, command: str = "serve", script: str = __file__) -> None:
        self.script = script  # this module, or another baseline with the same commands (_raw_socket.py)
        self.proc = subprocess.Popen(
            [sys.executable, script, command, address], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["READY"]:
            self.proc.kill()
            raise RuntimeError(f"raw grpc server did not start: {line}")
        self.address = line[1]
        self.rss: dict = {}

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate(input="", timeout=30)
        self.rss = json.loads(out.strip().splitlines()[-1])

    def client(self, *args: object) -> object:
        """Run a client command (``ping N`` or ``send MIB``) in its own process; its JSON output."""
        out = subprocess.run(
            [sys.executable, self.script, str(args[0]), self.address, *map(str, args[1:])],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return json.loads(out.stdout)


def main() -> None:
    command, address = sys.argv[1], sys.argv[2]
    if command == "serve":
        asyncio.run(serve(address))
    elif command == "serve-sync":
        serve_sync(address)
    elif command == "send-sync":
        print(json.dumps(send_sync(address, int(sys.argv[3]))))
    elif command == "ping":
        print(json.dumps(asyncio.run(ping(address, int(sys.argv[3])))))
    elif command == "send":
        print(json.dumps(asyncio.run(send(address, int(sys.argv[3])))))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
