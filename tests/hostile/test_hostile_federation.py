"""The long-lived server's control calls against hostile callers: archives that would write outside their folder
or fill the disk, uploads out of order or over their limits, garbage requests, a site claiming another's name,
results for a job the site never ran. Each gets a clear refusal and the server keeps serving."""

from __future__ import annotations

import io
import os
import tarfile
import time

import grpc
import pytest

from flarelite.communication.grpc.tls import TLSConfig
from flarelite.federation.archive import ArchiveError, pack, unpack
from flarelite.federation.control import (
    CHUNK,
    METHOD,
    Caller,
    ControlClient,
    ControlError,
    ControlServer,
    identify,
    is_local_peer,
)
from flarelite.federation.server import FederationServer
from flarelite.federation.transfers import MAX_OPEN, Staging
from flarelite.serialization.container import loads


def tar_with(path: str, entries: list[tarfile.TarInfo], data: bytes = b"x") -> str:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


@pytest.mark.parametrize(
    "entry, why",
    [
        (tarfile.TarInfo("../outside.txt"), "outside"),
        (
            (lambda i: (setattr(i, "type", tarfile.SYMTYPE), setattr(i, "linkname", "/etc/passwd"), i)[-1])(
                tarfile.TarInfo("link")
            ),
            "not a regular file",
        ),
        ((lambda i: (setattr(i, "type", tarfile.FIFOTYPE), i)[-1])(tarfile.TarInfo("fifo")), "not a regular file"),
    ],
    ids=["dot-dot", "symlink", "fifo"],
)
def test_an_archive_cannot_write_outside_its_folder(tmp_path, entry, why):
    archive = tar_with(str(tmp_path / "evil.tar.gz"), [entry])
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match=why):
        unpack(archive, str(dest))
    assert not (tmp_path / "outside.txt").exists()


def test_an_absolute_path_lands_inside_the_folder(tmp_path):
    archive = tar_with(str(tmp_path / "abs.tar.gz"), [tarfile.TarInfo("/etc/flarelite-test")])
    unpack(archive, str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "etc" / "flarelite-test").read_bytes() == b"x"
    assert not os.path.exists("/etc/flarelite-test")


def test_an_archive_is_bounded_in_bytes_and_entries(tmp_path):
    many = tar_with(str(tmp_path / "many.tar.gz"), [tarfile.TarInfo(f"f{i}") for i in range(20)])
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        unpack(many, str(tmp_path / "a"), max_files=10)
    with pytest.raises(ArchiveError, match="more than 5 bytes"):
        unpack(many, str(tmp_path / "b"), max_bytes=5)
    (tmp_path / "not.tar.gz").write_bytes(b"garbage" * 100)
    with pytest.raises(ArchiveError, match="not a readable gzipped tar"):
        unpack(str(tmp_path / "not.tar.gz"), str(tmp_path / "c"))


def test_pack_leaves_links_behind_and_round_trips(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("hello")
    (src / "link").symlink_to("/etc/passwd")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"0")
    pack(str(src), str(tmp_path / "out.tar.gz"), skip=("__pycache__",))
    unpack(str(tmp_path / "out.tar.gz"), str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "sub" / "a.txt").read_text() == "hello"
    assert not (tmp_path / "dest" / "link").exists() and not (tmp_path / "dest" / "__pycache__").exists()
    with pytest.raises(ArchiveError, match="more than 3 bytes"):
        pack(str(src), str(tmp_path / "big.tar.gz"), max_bytes=3)


def test_uploads_come_in_order_within_their_limits(tmp_path):
    staging = Staging(str(tmp_path / "staging"), max_bytes=10)
    token = "a" * 32
    with pytest.raises(ControlError, match="32 hex digits"):
        staging.put("site-1", "../../etc", 0, b"x", True)
    with pytest.raises(ControlError, match="is not open"):
        staging.put("site-1", token, 5, b"x", False)
    staging.put("site-1", token, 0, b"12345", False)
    with pytest.raises(ControlError, match="at offset 3, expected 5"):
        staging.put("site-1", token, 3, b"x", False)
    with pytest.raises(ControlError, match="over the limit of 10"):
        staging.put("site-1", token, 5, b"123456", False)
    with pytest.raises(ControlError, match="no finished upload"):
        staging.take("site-1", token)  # dropped when it went over
    with pytest.raises(ControlError, match=f"at most {CHUNK}"):
        staging.put("site-1", "b" * 32, 0, b"x" * (CHUNK + 1), True)
    for i in range(MAX_OPEN):
        staging.put("site-1", f"{i:032x}", 0, b"x", False)
    with pytest.raises(ControlError, match=f"{MAX_OPEN} uploads open"):
        staging.put("site-1", "c" * 32, 0, b"x", False)
    staging.put("site-2", "c" * 32, 0, b"ok", True)  # one caller's uploads do not block another's
    with pytest.raises(ControlError, match="no finished upload"):
        staging.take("site-1", "c" * 32)  # nor can it take another's
    assert open(staging.take("site-2", "c" * 32), "rb").read() == b"ok"


class _Context:
    def __init__(self, peer: str, pem: bytes | None = None) -> None:
        self._peer, self._pem = peer, pem

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}


def test_who_calls_comes_from_the_connection():
    assert is_local_peer("unix:/tmp/x.sock") and is_local_peer("ipv4:127.0.0.1:5000") and is_local_peer("ipv6:[::1]:1")
    assert not is_local_peer("ipv4:10.0.0.5:5000") and not is_local_peer("ipv6:[2001:db8::1]:1")
    assert identify(_Context("ipv4:127.0.0.1:1"), "anyone", "clear") == Caller("anyone", "admin", False, True)
    assert identify(_Context("ipv4:10.1.2.3:1"), "anyone", "tls").role == "site"  # remote, no mTLS: no admin
    assert identify(_Context("unix:/x"), "admin@x", "mtls") == Caller("", "none", False, True)  # no certificate


@pytest.fixture
def clear_server(short_dir):
    address = f"unix://{short_dir}/fed.sock"
    server = FederationServer(address, os.path.join(short_dir, "ws"), tls=TLSConfig("clear"))
    server.start()
    try:
        yield server, address
    finally:
        server.stop()


def test_garbage_requests_get_an_error_reply_and_the_server_goes_on(clear_server):
    server, address = clear_server
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        for garbage in (b"", b"FLRC" + b"\xff" * 40, os.urandom(1000)):
            reply = loads(call(garbage, timeout=10))
            assert reply["ok"] is False and reply["error"]
    client = ControlClient(address, TLSConfig("clear"), "site-1")
    with pytest.raises(ControlError, match="unknown request 'rm -rf'"):
        client.call("rm -rf")
    with pytest.raises(ControlError, match="cannot be a site"):
        ControlClient(address, TLSConfig("clear"), "../etc").call("poll", wait=0)
    assert client.call("ping")["server"] == "flarelite"


def test_a_site_cannot_upload_results_of_a_job_it_never_ran(clear_server):
    server, address = clear_server
    client = ControlClient(address, TLSConfig("clear"), "site-9")
    with pytest.raises(ControlError, match="ran no job"):
        client.call("results", job_id="0" * 36, token="a" * 32)
    with pytest.raises(ControlError, match="ran no job"):
        client.call("ended", job_id="../../x", status="ok")
    remote_site = Caller("site-9", "site", False, False)  # a site from another machine (clear mode)
    with pytest.raises(ControlError, match="site-9 has no job results to upload here"):  # no disk for strangers
        server._handle(remote_site, "put", {"token": "a" * 32, "offset": 0, "data": b"x" * 1000, "final": False})
    assert os.listdir(server.staging.folder) == []
    start = time.monotonic()
    assert client.call("poll", jobs={"made-up": "running"}, wait=5) == {"start": [], "abort": ["made-up"]}
    assert time.monotonic() - start < 4  # told at once to stop what the server does not run


def test_a_control_server_refuses_a_busy_or_bad_address():
    import socket

    from flarelite.errors import ConfigError, ConnectError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(ConnectError, match="cannot listen"):
            ControlServer(f"127.0.0.1:{busy.getsockname()[1]}", TLSConfig("clear"), lambda *a: None)
    with pytest.raises(ConfigError, match="out of range"):
        ControlServer("127.0.0.1:99999", TLSConfig("clear"), lambda *a: None)  # gRPC would take 34463
