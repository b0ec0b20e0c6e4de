"""The max message size: one option (``max_message_size=`` / ``--max-message-size``) on every entry point, its
parsing, and a message over it failing clearly in the simulator, in memory and as processes."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from support import comp, write_job

from flarelite import launch
from flarelite.apis.fl_constant import ReturnCode
from flarelite.cli import build_parser
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.memory import InMemoryCommunicationProtocol, InMemoryHub
from flarelite.communication.protocol import Frame
from flarelite.communication.sizes import DEFAULT_MAX_MESSAGE_SIZE, max_message_size, parse_size
from flarelite.errors import ConfigError, ProtocolError
from flarelite.job_config.api import FedJob
from flarelite.simulator.runner import run_simulation

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire_fixtures")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


# ----------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [("1048576", MiB), ("512K", 512 * KiB), ("64M", 64 * MiB), ("4G", 4 * GiB), ("1T", 1 << 40), ("64MiB", 64 * MiB),
     ("2g", 2 * GiB), (" 8 M ", 8 * MiB)],
)  # fmt: skip
def test_sizes_are_bytes_or_binary_units(text, expected):
    assert parse_size(text) == expected
    assert max_message_size(text) == expected


@pytest.mark.parametrize("value", ["", "abc", "-1", "1.5G", "12X", "0", 0, -5, True, 2.5, [1]])
def test_a_bad_size_is_a_clear_config_error(value):
    with pytest.raises(ConfigError, match="max.message.size|is not a size"):
        max_message_size(value)


def test_the_default_is_2_gib_everywhere():
    assert max_message_size(None) == DEFAULT_MAX_MESSAGE_SIZE == 2 * GiB
    assert InMemoryCommunicationProtocol("a", hub=InMemoryHub()).max_message_size == 2 * GiB
    never = "unix:///tmp/never.sock"  # not started: nothing listens
    assert GrpcCommunicationProtocol("server", listen=never).max_message_size == 2 * GiB
    assert GrpcCommunicationProtocol("server", listen=never, max_message_size="1M").max_message_size == MiB
    with pytest.raises(ConfigError):
        GrpcCommunicationProtocol("server", listen=never, max_message_size=0)


# ----------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("command", ["simulator", "server", "client", "poc"])
def test_every_cli_command_that_runs_sites_has_the_option(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert "--max-message-size SIZE" in capsys.readouterr().out


@pytest.mark.parametrize("role", ["server", "client"])
def test_the_launcher_has_the_option(role, capsys):
    with pytest.raises(SystemExit):
        launch.main([role, "--help"])
    assert "--max-message-size SIZE" in capsys.readouterr().out


def test_a_bad_cli_value_is_refused_with_the_reason(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["simulator", "job", "--max-message-size", "12X"])
    assert exc.value.code == 2
    assert "'12X' is not a size" in capsys.readouterr().err
    args = build_parser().parse_args(["poc", "job", "--max-message-size", "64M"])
    assert args.max_message_size == 64 * MiB


class _Built(Exception):
    """Raised by the patched grpc_protocol: the site got as far as building its endpoint."""


@pytest.mark.parametrize("role", ["server", "client"])
def test_the_launcher_passes_the_value_to_the_endpoint(role, tmp_path, monkeypatch):
    seen: dict = {}

    def capture(name, **options):
        seen.update(options, name=name)
        raise _Built

    monkeypatch.setattr(launch, "grpc_protocol", capture)
    common = ["-w", str(tmp_path / "ws"), "--max-message-size", "3M"]
    if role == "server":
        job = write_job(tmp_path / "jobs", [comp("flarelite.apis.impl.controller.Controller")], [])
        argv = ["server", job, "--listen", f"unix://{tmp_path}/s.sock", *common]
    else:
        argv = ["client", "--name", "site-1", "--server", f"unix://{tmp_path}/s.sock", *common]
    with pytest.raises(_Built):
        launch.main(argv)
    assert seen["max_message_size"] == 3 * MiB


# ----------------------------------------------------------------------------------------------- in memory


def test_the_in_memory_transport_keeps_both_limits_like_grpc():
    hub = InMemoryHub()
    got: list[Frame] = []
    small = InMemoryCommunicationProtocol("small", hub=hub, max_message_size=100)
    big = InMemoryCommunicationProtocol("big", hub=hub)
    small.start(got.append)
    big.start(got.append)
    with pytest.raises(ProtocolError, match="over the limit of 100 bytes"):
        small.send("big", Frame(kind="k", meta=b"m", buffers=[bytes(200)]))
    big.send("small", Frame(kind="k", msg_id="7", meta=b"m", buffers=[bytes(200)]))  # the receiver's limit
    assert (got[-1].msg_id, got[-1].meta, got[-1].buffers) == ("7", b"", [])
    assert "exceeds the limit of 100 bytes" in got[-1].error
    big.send("small", Frame(kind="k", meta=b"m", buffers=[bytes(99)]))
    assert got[-1].error == "" and len(got[-1].buffers[0]) == 99


# ----------------------------------------------------------------------------------------------- end to end


def big_aux_job(root, nbytes: int, result_file: str) -> str:
    executor = comp("size_limit_components.BigAuxExecutor", nbytes=nbytes, result_file=result_file)
    folder = write_job(
        root,
        [comp("size_limit_components.SendOnceController")],
        [{"tasks": ["*"], "executor": executor}],
        min_clients=2,
    )
    custom = os.path.join(folder, "app", "custom")
    os.makedirs(custom, exist_ok=True)
    shutil.copy(os.path.join(FIXTURES, "size_limit_components.py"), custom)
    return folder


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["memory", "unix"])
def test_an_aux_message_over_a_small_limit_fails_clearly(protocol, tmp_path):
    result = str(tmp_path / "rc.json")
    job = big_aux_job(tmp_path / "jobs", 512 * KiB, result)
    workspace = tmp_path / "ws"
    rc = run_simulation(
        job, str(workspace), n_clients=2, protocol=protocol, max_message_size="256K", ready_timeout=60, end_timeout=20
    )
    assert rc == 0  # the workflow went on: the sender got an error code, not a hang
    with open(result, encoding="utf-8") as f:
        codes = json.load(f)
    assert codes["site-2"] not in (ReturnCode.OK, ReturnCode.TIMEOUT), codes
    log = (workspace / "site-1" / "log.txt").read_text()
    assert "over the limit of 262144 bytes (max_message_size)" in log


@pytest.mark.timeout(120)
def test_simulator_run_takes_the_option(tmp_path):
    from wire_fixtures.size_limit_components import BigAuxExecutor, SendOnceController

    result = str(tmp_path / "rc.json")
    job = FedJob(name="size_limit")
    job.to_server(SendOnceController())
    job.to_clients(BigAuxExecutor(nbytes=64 * KiB, result_file=result))
    assert job.simulator_run(str(tmp_path / "ws"), n_clients=2, protocol="memory", max_message_size="1M") == 0
    with open(result, encoding="utf-8") as f:
        assert json.load(f) == {"site-2": ReturnCode.OK}
    with pytest.raises(ConfigError, match="is not a size"):
        job.simulator_run(str(tmp_path / "ws2"), n_clients=2, protocol="memory", max_message_size="lots")


@pytest.mark.timeout(120)
def test_a_limit_too_small_for_the_welcome_fails_the_run_at_once_saying_why(tmp_path):
    """The sites are told why they cannot get their app, instead of waiting out their connect timeout."""
    from flarelite.errors import RunFailedError

    job = big_aux_job(tmp_path / "jobs", KiB, str(tmp_path / "rc.json"))
    began = time.monotonic()
    with pytest.raises(RunFailedError) as info:
        run_simulation(
            job, str(tmp_path / "ws"), n_clients=2, protocol="unix", max_message_size=600, connect_timeout=60
        )
    assert time.monotonic() - began < 40
    assert "cannot send site-1 its welcome" in str(info.value) or "cannot send site-2 its welcome" in str(info.value)
    assert "max_message_size" in str(info.value)
