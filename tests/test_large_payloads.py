"""Large payloads: over 2 GiB through the gRPC transport's relay, and hundreds of MiB of numpy and torch end to end.

The transport-level transfer runs in a process of its own (tests/wire_fixtures/big_transfer.py) so that its
peak memory can be read and the test process does not keep gigabytes mapped. The end-to-end run uses the
simulator's processes mode, with the components copied into the job's app/custom/ folder.
test_grpc_transport.py covers the basic size limits; the limit cases here are the ones it does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from wire_fixtures.inbox import endpoint_maker

from flarelite.communication.protocol import Frame
from flarelite.errors import ProtocolError
from flarelite.simulator.runner import run_simulation

TESTS = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(TESTS, "wire_fixtures")
REPO = os.path.dirname(TESTS)
GiB = 1 << 30
MiB = 1 << 20


def available_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ----------------------------------------------------------------------------------------------- over 2 GiB


@pytest.mark.timeout(300)
def test_a_message_over_2_gib_is_relayed_bit_exact_over_a_unix_socket(short_dir):
    nbytes = int(2.1 * GiB)
    if available_memory() < 8 * GiB:
        pytest.skip(f"needs 8 GiB of free memory for a {nbytes}-byte transfer; {available_memory() / GiB:.1f} free")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, os.path.join(FIXTURES, "big_transfer.py"), str(nbytes), short_dir],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] == "", result
    assert (result["kind"], result["sender"], result["meta"], result["n_buffers"]) == ("big", "site-1", "m", 1)
    assert result["received"] == nbytes
    assert result["first_difference"] is None, f"the buffer differs from byte {result['first_difference']} on"
    # both ends live in that one process: the sender's buffer and the receiver's copy, plus what is in flight.
    # Three copies would mean a side (or the relay) held the whole message once more.
    grown = result["peak_rss"] - result["baseline_rss"]
    assert grown < 2 * nbytes + GiB, f"peak memory grew by {grown / GiB:.2f} GiB for two {nbytes / GiB:.2f} GiB copies"


# ----------------------------------------------------------------------------------------------- end to end


def write_job(root: str, **executor_args) -> str:
    """A two-client job whose components live in app/custom/ (a copy of wire_fixtures/large_payload_components)."""
    folder = os.path.join(root, "large_job")
    app = os.path.join(folder, "app")
    os.makedirs(os.path.join(app, "config"))
    os.makedirs(os.path.join(app, "custom"))
    shutil.copy(os.path.join(FIXTURES, "large_payload_components.py"), os.path.join(app, "custom"))
    server = {
        "format_version": 2,
        "workflows": [{"id": "large", "path": "large_payload_components.LargePayloadController", "args": {}}],
        "components": [],
    }
    client = {
        "format_version": 2,
        "executors": [
            {
                "tasks": ["*"],
                "executor": {"path": "large_payload_components.LargePayloadExecutor", "args": executor_args},
            }
        ],
        "components": [],
    }
    meta = {"name": "large_job", "resource_spec": {}, "min_clients": 2, "deploy_map": {"app": ["@ALL"]}}
    for path, content in [
        (os.path.join(app, "config", "config_fed_server.json"), server),
        (os.path.join(app, "config", "config_fed_client.json"), client),
        (os.path.join(folder, "meta.json"), meta),
    ]:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f)
    return folder


@pytest.mark.timeout(240)
def test_numpy_and_torch_payload_end_to_end_in_processes(tmp_path):
    pytest.importorskip("torch")
    if available_memory() < 3 * GiB:
        pytest.skip(f"needs 3 GiB of free memory; {available_memory() / GiB:.1f} free")
    job = write_job(str(tmp_path / "jobs"), array_bytes=300 * MiB, with_torch=True, aux_timeout=150)
    workspace = tmp_path / "ws"
    assert run_simulation(job, str(workspace), n_clients=2, protocol="unix", ready_timeout=60, end_timeout=30) == 0
    result_file = workspace / "site-1" / "large_payload_replies.json"
    assert result_file.exists(), f"site-1 wrote no results; see {workspace / 'site-1' / 'log.txt'}"
    result = json.loads(result_file.read_text())
    assert "error" not in result, result["error"]
    assert result["unchanged_after_send"] is True
    reply = result["replies"]["site-2"]
    assert reply == {
        "rc": "OK",
        "checksum": result["expected_checksum"],
        "problems": [],
        "sender_seen": "site-1",
        "echo_problems": [],
    }, reply
    assert list(result["replies"]) == ["site-2"]


# ----------------------------------------------------------------------------------------------- size limits


@pytest.fixture
def net(short_dir):
    """Start a server (``net("server", ...)``) then clients; every endpoint is stopped at the end."""
    make = endpoint_maker(f"unix://{short_dir}/s.sock")
    yield make
    make.stop_all()


def test_a_frame_of_exactly_the_announced_limit_passes_one_byte_more_does_not(net):
    server, s_in = net("server", max_message_size=2 * MiB)
    c1, _ = net("site-1", chunk_size=256 << 10)
    c1.send("server", Frame(kind="fits", meta=b"12", buffers=[bytes(MiB), bytes(MiB - 2)]))
    got = s_in.get(timeout=30)
    assert (got.kind, got.error, got.meta, [len(b) for b in got.buffers]) == ("fits", "", b"12", [MiB, MiB - 2])
    with pytest.raises(ProtocolError, match="over the limit of 2097152 bytes"):
        c1.send("server", Frame(kind="too big", meta=b"123", buffers=[bytes(MiB), bytes(MiB - 2)]))
    c1.send("server", Frame(kind="after"))
    assert s_in.get().kind == "after"


def test_frame_from_the_server_over_a_client_limit_arrives_as_a_header_with_an_error(net):
    server, _ = net("server")
    c1, in1 = net("site-1", max_message_size=MiB)  # the server does not know this limit: it sends anyway
    server.send("site-1", Frame(kind="aux_req", msg_id="7", topic="t", meta=b"x" * (2 * MiB)))  # chunked meta
    got = in1.get(timeout=30)
    assert (got.kind, got.msg_id, got.topic, got.sender) == ("aux_req", "7", "t", "server")
    assert "exceeds the limit" in got.error and got.meta == b"" and got.buffers == []
    server.send("site-1", Frame(kind="after", meta=b"ok"))
    got = in1.get()
    assert (got.kind, got.meta, got.error) == ("after", b"ok", "")


def test_relay_refuses_a_frame_over_its_limit_from_a_client_that_ignores_it(net):
    """A client that does not keep to the server's announced limit (old or hostile) cannot make it relay more."""
    net("server", max_message_size=MiB)
    c1, in1 = net("site-1")
    c2, in2 = net("site-2")
    in1.wait_peer("site-2", True)
    c1._remote_max = c1.max_message_size  # forget the limit the server announced in its welcome
    c1.send("site-2", Frame(kind="aux_req", msg_id="8", meta=b"m", buffers=[bytes(3 * MiB)]))
    got = in2.get(timeout=30)
    assert (got.kind, got.msg_id, got.sender) == ("aux_req", "8", "site-1")
    assert "relay's limit" in got.error and got.meta == b"" and got.buffers == []
    c1.send("site-2", Frame(kind="after", buffers=[bytes(2 * MiB // 3)]))  # the refused chunks were all dropped
    got = in2.get(timeout=30)
    assert (got.kind, got.error, len(got.buffers[0])) == ("after", "", 2 * MiB // 3)


# ----------------------------------------------------------------------------------------------- framing edge cases


@pytest.mark.parametrize("to", ["server", "site-2"])
def test_a_frame_whose_buffers_are_all_empty_is_delivered(net, to):
    server, s_in = net("server")
    c1, in1 = net("site-1")
    c2, in2 = net("site-2")
    in1.wait_peer("site-2", True)
    c1.send(to, Frame(kind="empty", meta=b"m", buffers=[b"", bytearray()]))
    c1.send(to, Frame(kind="after"))
    inbox = s_in if to == "server" else in2
    first = inbox.get(timeout=5)
    assert (first.kind, first.meta, [bytes(b) for b in first.buffers]) == ("empty", b"m", [b"", b""])
    assert inbox.get(timeout=5).kind == "after"


def test_empty_buffers_among_others_keep_their_places(net):
    server, s_in = net("server")
    c1, _ = net("site-1", chunk_size=64 << 10)
    buffers = [b"", bytes(range(256)) * 1000, b"", b"x", bytearray(), bytes(200 << 10), b""]
    c1.send("server", Frame(kind="mixed", meta=b"y" * (100 << 10), buffers=buffers))  # meta chunked too
    got = s_in.get(timeout=30)
    assert got.meta == b"y" * (100 << 10)
    assert [bytes(b) for b in got.buffers] == [bytes(b) for b in buffers]
