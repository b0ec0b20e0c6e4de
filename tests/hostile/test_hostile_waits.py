"""An operator is told what is happening: while a site or the server waits, which mode is unsafe, how to wait longer."""

from __future__ import annotations

import logging
import time

import pytest

from flarelite import cli, launch
from flarelite.communication.grpc import GrpcCommunicationProtocol, dialing
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.errors import ConfigError, ConnectError
from flarelite.runtime import server as server_module
from flarelite.runtime.server import ServerRuntime

UNAUTHENTICATED = "site identities are not authenticated"


def messages(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def test_a_site_that_cannot_reach_the_server_says_so_while_it_waits(short_dir, caplog, monkeypatch):
    monkeypatch.setattr(dialing, "WAIT_NOTE_INTERVAL", 0.5)
    address = f"unix://{short_dir}/nobody.sock"
    site = GrpcCommunicationProtocol("site-1", server=address, connect_timeout=3.5)
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="flarelite.grpc"), pytest.raises(ConnectError) as info:
        site.start(lambda frame: None)
    site.stop()
    assert time.monotonic() - began < 3.5 + 6
    notes = messages(caplog, "waiting for the server")
    assert 2 <= len(notes) <= 6, notes
    assert all(f"site-1: waiting for the server at {address}: no socket file" in n for n in notes), notes
    assert "giving up in" in notes[0]
    assert "no socket file" in str(info.value) and "3.5s" in str(info.value)


def test_the_server_says_which_sites_it_still_waits_for(short_dir, caplog, monkeypatch):
    monkeypatch.setattr(server_module, "WAIT_NOTE_INTERVAL", 0.4)
    protocol = GrpcCommunicationProtocol("server", listen=f"unix://{short_dir}/s.sock")
    runtime = ServerRuntime(
        job_id="job",
        protocol=protocol,
        run_dir=short_dir,
        workspace_root=short_dir,
        app_config={},
        clients=["site-1", "site-2"],
        ready_timeout=1.5,
    )
    with caplog.at_level(logging.INFO):
        assert runtime._wait_ready() is False
    notes = messages(caplog, "waiting for sites ['site-1', 'site-2']")
    assert 2 <= len(notes) <= 5, notes
    assert "giving up in" in notes[0]
    assert "were not ready within 1.5s" in (runtime.failure or "")


@pytest.mark.parametrize("mode", ["clear", "tls", "mtls"])
def test_one_warning_at_start_when_site_identities_are_not_authenticated(tmp_path, short_dir, caplog, mode):
    from flarelite import certs

    if mode != "clear":
        certs.init_ca(tmp_path, "p")
        certs.issue(tmp_path, "server", "server")
        certs.issue(tmp_path, "site-1")
    server_tls = TLSConfig(mode) if mode == "clear" else TLSConfig.from_dir(mode, tmp_path, "server")
    site_tls = TLSConfig(mode) if mode == "clear" else TLSConfig.from_dir(mode, tmp_path, "site-1")
    with caplog.at_level(logging.WARNING, logger="flarelite.grpc"):
        server = GrpcCommunicationProtocol("server", listen="127.0.0.1:0", tls=server_tls)
        server.start(lambda frame: None)
        site = GrpcCommunicationProtocol("site-1", server=server.bound, tls=site_tls, connect_timeout=10)
        site.start(lambda frame: None)
        site.stop()
        server.stop()
    warnings = messages(caplog, UNAUTHENTICATED)
    if mode == "mtls":
        assert warnings == []
        return
    assert [w.split(":")[0] for w in warnings] == ["server", "site-1"], warnings
    assert all("mtls" in w and "can claim a site name" in w for w in warnings)


def test_the_connect_timeout_is_an_option_of_every_entry_point():
    parser = cli.build_parser()
    client = parser.parse_args(["client", "--name", "s-1", "--server", "x:1", "--connect-timeout", "7"])
    assert client.connect_timeout == 7
    assert parser.parse_args(["server", "job", "--listen", "x:1", "--connect-timeout", "9"]).ready_timeout == 9
    assert parser.parse_args(["simulator", "job", "--connect-timeout", "5"]).connect_timeout == 5
    assert parser.parse_args(["poc", "job", "--connect-timeout", "4"]).connect_timeout == 4
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role")
    launch.add_site_arguments(sub.add_parser("client"), "client", deploy=False)
    args = p.parse_args(["client", "-w", "ws", "--name", "site-1", "--server", "x:1", "--connect-timeout", "3"])
    assert args.connect_timeout == 3


@pytest.mark.parametrize("name", ["evil\x1b[2J", "server", "@ALL", "x" * 65])
def test_a_site_name_that_cannot_be_one_is_refused_before_anything_starts(tmp_path, name):
    with pytest.raises(ConfigError, match="cannot be a site's name"):
        launch.run_client(None, str(tmp_path), name=name, server="127.0.0.1:1", tls=TLSConfig("clear"))
