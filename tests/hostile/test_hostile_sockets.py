"""Unix sockets are private to the user whatever the umask, and a start never steals or follows what is there.

Real endpoints on Unix sockets in short temp folders; another user is simulated by what the file modes allow.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat

import pytest
from rogue import Rogue
from wire_fixtures.inbox import Inbox

from flarelite.communication.grpc import GrpcCommunicationProtocol
from flarelite.communication.protocol import Frame
from flarelite.errors import ConnectError
from flarelite.simulator.processes import server_address


@pytest.fixture
def open_umask():
    """Run the test with umask 0 (the worst case: files born world-writable)."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def start_server(listen: str) -> GrpcCommunicationProtocol:
    ep = GrpcCommunicationProtocol("server", listen=listen)
    ep.start(lambda frame: None)
    return ep


def test_server_and_site_sockets_are_private_whatever_the_umask(short_dir, open_umask):
    folder = os.path.join(short_dir, "run")  # does not exist yet: the server makes it
    server = start_server(f"unix://{folder}/server.sock")
    site = GrpcCommunicationProtocol("site-1", server=server.bound, direct_p2p=True, connect_timeout=10)
    try:
        site.start(lambda frame: None)
        assert mode(folder) == 0o700
        assert mode(os.path.join(folder, "server.sock")) == 0o600
        assert site.bound == f"unix://{folder}/site-1.sock"
        assert mode(os.path.join(folder, "site-1.sock")) == 0o600
    finally:
        site.stop()
        server.stop()


def test_the_simulator_puts_its_sockets_in_a_private_folder(short_dir, open_umask):
    address, tmp = server_address("unix", short_dir)
    try:
        assert tmp is not None and address == f"unix://{tmp}/server.sock"
        assert mode(tmp) == 0o700
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_stale_socket_from_a_killed_run_is_replaced(short_dir):
    path = os.path.join(short_dir, "server.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # the file stays when the process dies without unlinking it
    dead.close()
    server = start_server(f"unix://{path}")
    inbox = Inbox()
    site = GrpcCommunicationProtocol("site-1", server=server.bound, connect_timeout=10)
    try:
        site.start(inbox.on_frame)
        server.send("site-1", Frame(kind="hello-again"))
        assert inbox.get().kind == "hello-again"
        assert mode(path) == 0o600
    finally:
        site.stop()
        server.stop()


def test_a_live_listener_is_an_address_in_use_error_and_keeps_its_socket(short_dir):
    path = os.path.join(short_dir, "server.sock")
    first = start_server(f"unix://{path}")
    try:
        with pytest.raises(ConnectError, match="address in use"):
            start_server(f"unix://{path}")
        r = Rogue(first.bound, timeout=10)  # the first server still serves on its socket
        assert r.hello("site-1").WhichOneof("body") == "welcome"
        r.close()
    finally:
        first.stop()


@pytest.mark.parametrize("what", ["symlink", "file"])
def test_a_symlink_or_a_plain_file_at_the_socket_path_is_never_touched(short_dir, what):
    path = os.path.join(short_dir, "server.sock")
    precious = os.path.join(short_dir, "precious.txt")
    with open(precious, "w") as f:
        f.write("keep me")
    if what == "symlink":
        os.symlink(precious, path)
    else:
        shutil.copy(precious, path)
    with pytest.raises(ConnectError, match="symbolic link" if what == "symlink" else "not a socket"):
        start_server(f"unix://{path}")
    assert os.path.islink(path) == (what == "symlink")
    with open(path) as f:
        assert f.read() == "keep me"
