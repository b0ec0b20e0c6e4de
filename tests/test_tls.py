"""flarelite.communication.grpc.tls: option checks, and real gRPC calls over 127.0.0.1 and Unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from concurrent import futures

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flarelite.communication.grpc import tls
from flarelite.communication.grpc.tls import TLSConfig
from flarelite.errors import ConfigError

TIMEOUT = 5.0
METHOD = "/t.Echo/Call"


# ----------------------------------------------------------------------------------------------- fixtures


def _handler(seen: list):
    def call(request: bytes, context) -> bytes:
        who = tls.peer_identity(context)
        seen.append(who)
        return (who or "-").encode()

    return grpc.method_handlers_generic_handler("t.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)})


@contextlib.contextmanager
def serve(cfg: TLSConfig, address: str = "127.0.0.1:0"):
    """A real gRPC server answering /t.Echo/Call with the caller's verified identity; yields (target, seen)."""
    seen: list = []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_handler(seen),))
    creds = tls.server_credentials(cfg)
    port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    assert port, f"could not bind {address}"
    server.start()
    try:
        yield (f"127.0.0.1:{port}" if address.endswith(":0") else address), seen
    finally:
        server.stop(grace=None).wait(TIMEOUT)


def call(target: str, cfg: TLSConfig) -> str:
    creds = tls.channel_credentials(cfg)
    options = tls.channel_options(cfg)
    channel = grpc.secure_channel(target, creds, options=options) if creds else grpc.insecure_channel(target)
    with channel:
        return channel.unary_unary(METHOD)(b"hi", timeout=TIMEOUT).decode()


def refused(target: str, cfg: TLSConfig) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(target, cfg)
    return info.value.code()


def server_cfg(pki, mode: str, project: str = "main") -> TLSConfig:
    return TLSConfig.from_dir(mode, pki / project, "server")


def client_cfg(pki, mode: str, name: str | None = "site-1", project: str = "main", **kw) -> TLSConfig:
    return TLSConfig.from_dir(mode, pki / project, name, **kw)


# ----------------------------------------------------------------------------------------------- option checks


def test_modes_and_structural_checks():
    assert TLSConfig("clear").server_name is None
    assert TLSConfig("tls", ca_cert="ca.crt").server_name == "server"
    assert TLSConfig("tls", ca_cert="ca.crt", server_name="fl.lan").server_name == "fl.lan"
    with pytest.raises(ConfigError, match="unknown TLS mode 'ssl': choose one of clear, tls, mtls"):
        TLSConfig("ssl")
    with pytest.raises(
        ConfigError, match="mode 'clear' takes no certificates .*drop ca_cert/cert/key or choose tls/mtls"
    ):
        TLSConfig("clear", ca_cert="ca.crt")
    with pytest.raises(ConfigError, match="mode 'clear' takes no certificates"):
        tls.from_options("clear", cert="a.crt", key="a.key")
    with pytest.raises(ConfigError, match="mode 'clear' verifies no server"):
        TLSConfig("clear", server_name="server")
    with pytest.raises(ConfigError, match="cert given without key"):
        TLSConfig("tls", cert="server.crt")
    with pytest.raises(ConfigError, match="key given without cert"):
        TLSConfig("mtls", ca_cert="ca.crt", key="site-1.key")
    with pytest.raises(ConfigError, match="server_name"):
        TLSConfig("tls", ca_cert="ca.crt", server_name="")
    with pytest.raises(TypeError):
        TLSConfig("tls", "ca.crt")  # options are keyword-only
    clear = TLSConfig("clear")
    assert tls.server_credentials(clear) is None and tls.channel_credentials(clear) is None
    assert tls.channel_options(clear) == []
    clear.check_server()
    clear.check_client()


def test_what_each_side_needs(pki):
    main = pki / "main"
    ca, crt, key = str(main / "ca.crt"), str(main / "server.crt"), str(main / "server.key")
    with pytest.raises(ConfigError, match="a tls server needs cert and key"):
        TLSConfig("tls", ca_cert=ca).check_server()
    with pytest.raises(ConfigError, match="a tls client needs ca_cert"):
        TLSConfig("tls", cert=crt, key=key).check_client()
    with pytest.raises(ConfigError, match="an mtls server needs ca_cert"):
        TLSConfig("mtls", cert=crt, key=key).check_server()
    with pytest.raises(ConfigError, match="an mtls server needs ca_cert, cert and key"):
        TLSConfig("mtls", ca_cert=ca).check_server()
    with pytest.raises(ConfigError, match="an mtls client needs its own cert and key"):
        TLSConfig("mtls", ca_cert=ca).check_client()
    with pytest.raises(ConfigError, match="a tls server needs cert and key"):
        tls.server_credentials(TLSConfig("tls", ca_cert=ca))  # the builders check too
    TLSConfig("tls", cert=crt, key=key).check_server()
    TLSConfig("tls", ca_cert=ca).check_client()
    assert isinstance(tls.server_credentials(server_cfg(pki, "mtls")), grpc.ServerCredentials)
    assert isinstance(tls.channel_credentials(client_cfg(pki, "mtls")), grpc.ChannelCredentials)
    assert isinstance(tls.channel_credentials(client_cfg(pki, "tls", name=None)), grpc.ChannelCredentials)


def test_bad_files_are_named(pki, tmp_path):
    main = pki / "main"
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(ConfigError, match=f"ca_cert file {missing} does not exist"):
        TLSConfig("tls", ca_cert=missing).check_client()
    with pytest.raises(ConfigError, match=f"cert file {missing} does not exist"):
        TLSConfig("tls", cert=missing, key=str(main / "server.key")).check_server()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"ca_cert file {garbage} holds no readable PEM certificate"):
        TLSConfig("tls", ca_cert=str(garbage)).check_client()
    with pytest.raises(ConfigError, match=f"key file {garbage} holds no readable PEM private key"):
        TLSConfig("tls", cert=str(main / "server.crt"), key=str(garbage)).check_server()
    with pytest.raises(ConfigError, match=f"ca_cert file {tmp_path} is a folder"):
        TLSConfig("tls", ca_cert=str(tmp_path)).check_client()


def test_key_that_does_not_match_the_cert(pki):
    main = pki / "main"
    cfg = TLSConfig("mtls", ca_cert=main / "ca.crt", cert=main / "site-1.crt", key=main / "site-2.key")
    with pytest.raises(ConfigError, match=r"key file .*site-2\.key does not match cert file .*site-1\.crt"):
        cfg.check_client()
    with pytest.raises(ConfigError, match="does not match"):
        tls.channel_credentials(cfg)


def test_certificate_used_on_the_wrong_side(pki):
    main = pki / "main"
    as_client = TLSConfig("mtls", ca_cert=main / "ca.crt", cert=main / "server.crt", key=main / "server.key")
    with pytest.raises(ConfigError, match=r"server\.crt is not a client certificate .*clientAuth"):
        as_client.check_client()
    # a site's certificate serves both sides: its own connection and the listener peers dial (direct_p2p)
    TLSConfig("tls", cert=main / "site-1.crt", key=main / "site-1.key").check_server()


def test_encrypted_and_expired_files(pki, tmp_path):
    main = pki / "main"
    key = serialization.load_pem_private_key((main / "site-1.key").read_bytes(), password=None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cfg = TLSConfig("mtls", ca_cert=main / "ca.crt", cert=main / "site-1.crt", key=encrypted)
    with pytest.raises(ConfigError, match="is encrypted with a password"):
        cfg.check_client()

    ca_cert = x509.load_pem_x509_certificate((main / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((main / "ca.key").read_bytes(), password=None)
    own = ec.generate_private_key(ec.SECP256R1())
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .issuer_name(ca_cert.subject)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(long_ago)
        .not_valid_after(long_ago + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "old.crt").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(
        own.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(ConfigError, match=r"cert file .*old\.crt expired on 2020-01-02"):
        TLSConfig("tls", cert=tmp_path / "old.crt", key=tmp_path / "old.key").check_server()


def test_from_dir_and_options(pki, tmp_path):
    main = pki / "main"
    cfg = TLSConfig.from_dir("mtls", main, "site-1")
    assert (cfg.ca_cert, cfg.cert, cfg.key) == (
        str(main / "ca.crt"),
        str(main / "site-1.crt"),
        str(main / "site-1.key"),
    )
    assert tls.channel_options(cfg) == [("grpc.ssl_target_name_override", "server")]
    named = TLSConfig.from_dir("tls", main, None, server_name="fl.example.org")
    assert named.cert is None and tls.channel_options(named) == [("grpc.ssl_target_name_override", "fl.example.org")]
    assert tls.from_options("tls", ca_cert=str(main / "ca.crt")) == TLSConfig("tls", ca_cert=str(main / "ca.crt"))
    with pytest.raises(ConfigError, match="mode 'clear' takes no certificates"):
        TLSConfig.from_dir("clear", main, "site-1")
    with pytest.raises(ConfigError, match=r"certificates folder .*nowhere does not exist"):
        TLSConfig.from_dir("tls", tmp_path / "nowhere", "site-1")
    with pytest.raises(ConfigError, match="path separator"):
        TLSConfig.from_dir("tls", main, "../site-1")
    with pytest.raises(ConfigError, match=r"cert file .*site-9\.crt does not exist"):
        TLSConfig.from_dir("mtls", main, "site-9").check_client()


# ----------------------------------------------------------------------------------------------- real calls


def test_clear_round_trip_has_no_identity(pki):
    with serve(TLSConfig("clear")) as (target, seen):
        assert call(target, TLSConfig("clear")) == "-"
    assert seen == [None]


def test_tls_server_is_verified_with_the_project_ca(pki):
    with serve(server_cfg(pki, "tls")) as (target, seen):
        assert call(target, client_cfg(pki, "tls", name=None)) == "-"  # no client certificate under tls
        assert refused(target, client_cfg(pki, "tls", name=None, project="other")) == grpc.StatusCode.UNAVAILABLE
        wrong_name = client_cfg(pki, "tls", name=None, server_name="site-1")
        assert refused(target, wrong_name) == grpc.StatusCode.UNAVAILABLE
    assert seen == [None]


def test_mtls_server_learns_the_client_identity_from_its_certificate(pki):
    with serve(server_cfg(pki, "mtls")) as (target, seen):
        assert call(target, client_cfg(pki, "mtls", "site-1")) == "site-1"
        assert call(target, client_cfg(pki, "mtls", "site-2")) == "site-2"
        # a certificate from another CA, even for the same name, is refused
        assert refused(target, client_cfg(pki, "mtls", "site-1", project="other")) == grpc.StatusCode.UNAVAILABLE
        # so is a client that presents no certificate
        assert refused(target, client_cfg(pki, "tls", name=None)) == grpc.StatusCode.UNAVAILABLE
    assert seen == ["site-1", "site-2"]


def test_mtls_client_refuses_a_server_from_another_ca(pki):
    with serve(server_cfg(pki, "mtls", project="other")) as (target, seen):
        assert refused(target, client_cfg(pki, "mtls", "site-1")) == grpc.StatusCode.UNAVAILABLE
    assert seen == []


def test_tls_and_mtls_over_a_unix_socket(pki, short_dir):
    address = f"unix://{short_dir}/s.sock"
    with serve(server_cfg(pki, "tls"), address) as (target, seen):
        assert call(target, client_cfg(pki, "tls", name=None)) == "-"  # verified as "server", not the socket path
        assert refused(target, client_cfg(pki, "tls", name=None, project="other")) == grpc.StatusCode.UNAVAILABLE
    address = f"unix://{short_dir}/m.sock"
    with serve(server_cfg(pki, "mtls"), address) as (target, seen):
        assert call(target, client_cfg(pki, "mtls", "site-2")) == "site-2"
        assert refused(target, client_cfg(pki, "tls", name=None)) == grpc.StatusCode.UNAVAILABLE
    assert seen == ["site-2"]


def test_peer_identity_with_grpc_aio(pki):
    async def main() -> tuple[str, list]:
        seen: list = []
        server = grpc.aio.server()

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen.append(tls.peer_identity(context))
            return (seen[-1] or "-").encode()

        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Echo", {"Call": grpc.unary_unary_rpc_method_handler(handle)}),)
        )
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(server_cfg(pki, "mtls")))
        await server.start()
        try:
            cfg = client_cfg(pki, "mtls", "site-1")
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}", tls.channel_credentials(cfg), options=tls.channel_options(cfg)
            ) as channel:
                reply = await channel.unary_unary(METHOD)(b"hi", timeout=TIMEOUT)
        finally:
            await server.stop(None)
        return reply.decode(), seen

    reply, seen = asyncio.run(asyncio.wait_for(main(), 3 * TIMEOUT))
    assert reply == "site-1" and seen == ["site-1"]
