"""Addresses are checked before anything listens or dials: no silent port 443, no port out of range."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flarelite.communication.addresses import check_address
from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.errors import ConfigError


@pytest.mark.parametrize(
    "address, listening",
    [("127.0.0.1:8002", False), ("127.0.0.1:0", True), ("[::1]:8002", False), ("localhost:1", False)]
    + [("unix:///tmp/x.sock", True), ("unix:rel.sock", False), ("0.0.0.0:65535", True)],
)
def test_good_addresses_pass(address, listening):
    assert check_address(address, "the address", listening=listening) == address


@pytest.mark.parametrize(
    "address, listening, message",
    [
        ("127.0.0.1", True, "has no port"),
        ("::1", False, "has no port"),
        ("127.0.0.1:0", False, r"port 0 is out of range \(1-65535\)"),
        ("127.0.0.1:65536", True, "port 65536 is out of range"),
        ("host:http", False, "is not a number"),
        ("[::1:80", False, "in brackets"),
        ("unix://", True, "names no socket file"),
        ("", True, "must be host:port"),
    ],
)
def test_bad_addresses_are_refused_with_the_form_wanted(address, listening, message):
    with pytest.raises(ConfigError, match=message):
        check_address(address, "the address", listening=listening)


def test_the_endpoint_checks_its_addresses_before_starting():
    with pytest.raises(ConfigError, match="server: the address to listen on '127.0.0.1' has no port"):
        GrpcCommunicationProtocol("server", listen="127.0.0.1")
    with pytest.raises(ConfigError, match="site-1: the server address '127.0.0.1:70000': port 70000"):
        GrpcCommunicationProtocol("site-1", server="127.0.0.1:70000")


def test_the_cli_says_it_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flarelite.cli",
            "client",
            "--name",
            "site-1",
            "--server",
            "127.0.0.1",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "the server address '127.0.0.1' has no port" in proc.stderr
    assert "Traceback" not in proc.stderr
