"""TLS and mutual TLS for the gRPC transport: the one place that turns certificate options into gRPC credentials.

Modes::

    clear   no encryption, no certificates (one machine, or a network you trust)
    tls     the server proves who it is: server needs cert + key; client needs ca_cert
    mtls    both sides prove who they are: server and client each need ca_cert + cert + key;
            the server learns each client's name from its verified certificate (``peer_identity``)

``ca_cert`` is the project CA (``flarelite cert init``); ``cert``/``key`` are this endpoint's own certificate and
key (``flarelite cert site NAME``). A client verifies the server's certificate against ``server_name``
(default ``"server"``, the name ``flarelite provision`` gives the server), not against the address it dials, so
one certificate serves 127.0.0.1, a LAN address and a Unix socket alike.

Use: ``cfg = TLSConfig.from_dir("mtls", "certs", "site-1")``; then ``server_credentials(cfg)`` or
``channel_credentials(cfg)`` plus ``channel_options(cfg)``. Each checks the files this side needs and raises
``ConfigError`` naming the file and what to do when one is missing, unreadable, or does not fit.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

import grpc

from ...certs import CA_CERT, DEFAULT_SERVER_NAME, check_name
from ...errors import ConfigError

if TYPE_CHECKING:  # cryptography is imported where certificates are checked: clear mode never loads it
    from cryptography import x509

__all__ = [
    "DEFAULT_SERVER_NAME",
    "MODES",
    "TLSConfig",
    "channel_credentials",
    "channel_options",
    "from_options",
    "peer_identity",
    "server_credentials",
]

MODES = ("clear", "tls", "mtls")
AUTH_COMMON_NAME = "x509_common_name"  # the auth_context key holding the verified peer certificate's CN

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Material:
    """The PEM bytes one side hands to gRPC (read once, after checking)."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def recorded_server_name(folder: str) -> str | None:
    """The server's name that ``flarelite provision`` recorded in ``folder/project.json`` (None if none).

    Raises:
        ConfigError: the record is there but not readable JSON with a valid ``server`` name.
    """
    import json

    path = os.path.join(folder, "project.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            server = json.load(f).get("server")
        check_name(server, "server name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} (written by `flarelite provision`) cannot be read: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return server


@dataclass(frozen=True)
class TLSConfig:
    """How one endpoint secures its gRPC connections: ``mode`` plus the PEM files that mode needs.

    Parameters:
        mode: ``"clear"``, ``"tls"`` or ``"mtls"``.
        ca_cert: the project CA certificate (PEM); clients verify the server with it, an mtls server its clients.
        cert: this endpoint's certificate (PEM, may hold a chain); with ``key``.
        key: this endpoint's private key (PEM, unencrypted).
        server_name: the name the client checks the server's certificate against (default ``"server"`` in
            tls/mtls). Set it to the server certificate's name when the server was issued another one.

    In tls mode a server does not use ``ca_cert`` and a client does not use ``cert``/``key`` (it presents no
    certificate), so one config made by ``from_dir`` for a site serves either side.

    Raises:
        ConfigError: an unknown mode, certificates or a server name given in clear mode, ``cert`` without
            ``key`` (or the reverse). Files are checked by ``check_server``/``check_client``, since what a
            side needs depends on the side.
    """

    mode: str
    _: KW_ONLY
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown TLS mode {self.mode!r}: choose one of {', '.join(MODES)}")
        for field in ("ca_cert", "cert", "key"):
            value = getattr(self, field)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                    raise ConfigError(f"{field} must be the path of a PEM file, got {value!r}")
                object.__setattr__(self, field, os.fspath(value))
        if self.mode == "clear":
            given = [f for f in ("ca_cert", "cert", "key") if getattr(self, f) is not None]
            if given:
                raise ConfigError(
                    f"mode 'clear' takes no certificates ({', '.join(given)} given): "
                    "drop ca_cert/cert/key or choose tls/mtls"
                )
            if self.server_name is not None:
                raise ConfigError("mode 'clear' verifies no server: drop server_name or choose tls/mtls")
            return
        if (self.cert is None) != (self.key is None):
            have, lack = ("cert", "key") if self.key is None else ("key", "cert")
            raise ConfigError(
                f"{have} given without {lack}: an endpoint's certificate and private key go together "
                f"(e.g. site-1.crt and site-1.key made by `flarelite cert site site-1`)"
            )
        if self.server_name is None:
            object.__setattr__(self, "server_name", DEFAULT_SERVER_NAME)
        elif not isinstance(self.server_name, str) or not self.server_name.strip():
            raise ConfigError(f"server_name must be the name in the server's certificate, got {self.server_name!r}")

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_dir(
        cls, mode: str, certs_dir: str | os.PathLike, name: str | None = None, *, server_name: str | None = None
    ) -> TLSConfig:
        """Pick ``ca.crt``, ``<name>.crt`` and ``<name>.key`` from a folder made by ``flarelite cert``/``provision``.

        ``name`` is this endpoint's certificate name (e.g. ``"server"`` or ``"site-1"``); a tls client may leave
        it out (it needs only ``ca.crt``). Files are checked when credentials are built. Without ``server_name``,
        the server name ``flarelite provision`` recorded in the folder (``project.json``) is the one checked.
        """
        if mode == "clear":
            raise ConfigError(
                f"mode 'clear' takes no certificates: drop the certificates folder {os.fspath(certs_dir)} "
                "or choose tls/mtls"
            )
        folder = os.fspath(certs_dir)
        if not os.path.isdir(folder):
            raise ConfigError(
                f"certificates folder {folder} does not exist; make it with `flarelite provision` or `flarelite cert`"
            )
        if server_name is None:
            server_name = recorded_server_name(folder)
        if name is not None:
            check_name(name, "certificate name")
        cert = os.path.join(folder, f"{name}.crt") if name else None
        key = os.path.join(folder, f"{name}.key") if name else None
        return cls(mode, ca_cert=os.path.join(folder, CA_CERT), cert=cert, key=key, server_name=server_name)

    # ------------------------------------------------------------------------------------------ checks

    def check_server(self) -> None:
        """Check that a server can run with this config: the files it needs exist, parse and fit together.

        Raises:
            ConfigError: naming the missing option or the file at fault, and what to do.
        """
        self._server_material()

    def check_client(self) -> None:
        """Check that a client can connect with this config: the files it needs exist, parse and fit together.

        Raises:
            ConfigError: naming the missing option or the file at fault, and what to do.
        """
        self._client_material()

    def _server_material(self) -> _Material | None:
        from cryptography.x509.oid import ExtendedKeyUsageOID

        if self.mode == "clear":
            return None
        if self.cert is None or self.key is None:
            need = "cert and key" if self.mode == "tls" else "ca_cert, cert and key"
            raise ConfigError(
                f"{_a(self.mode)} server needs {need}: give the server's certificate and key "
                "(e.g. server.crt and server.key made by `flarelite provision` "
                "or `flarelite cert site server --server`)"
            )
        if self.mode == "mtls" and self.ca_cert is None:
            raise ConfigError(
                "an mtls server needs ca_cert, the project CA that signed the clients' certificates (ca.crt); "
                "give it, or choose mode 'tls' to accept clients without certificates"
            )
        cert, key = self._own_pair(ExtendedKeyUsageOID.SERVER_AUTH, "server")
        ca = _read_ca(self.ca_cert) if self.mode == "mtls" else None
        return _Material(ca=ca, cert=cert, key=key)

    def _client_material(self) -> _Material | None:
        from cryptography.x509.oid import ExtendedKeyUsageOID

        if self.mode == "clear":
            return None
        if self.ca_cert is None:
            raise ConfigError(
                f"{_a(self.mode)} client needs ca_cert, the project CA (ca.crt) that signed the server's certificate"
            )
        if self.mode == "mtls" and (self.cert is None or self.key is None):
            raise ConfigError(
                "an mtls client needs its own cert and key as well as ca_cert "
                "(e.g. site-1.crt and site-1.key made by `flarelite cert site site-1`); "
                "or choose mode 'tls' if the server does not ask clients for certificates"
            )
        ca = _read_ca(self.ca_cert)
        if self.mode == "tls":  # a tls client presents no certificate; cert/key, if given, are not used
            return _Material(ca=ca, cert=None, key=None)
        cert, key = self._own_pair(ExtendedKeyUsageOID.CLIENT_AUTH, "client")
        return _Material(ca=ca, cert=cert, key=key)

    def _own_pair(self, usage: x509.ObjectIdentifier, side: str) -> tuple[bytes, bytes]:
        """Read and check this endpoint's certificate and key; return their PEM bytes."""
        from cryptography import x509
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        assert self.cert is not None and self.key is not None
        cert_pem, key_pem = _read(self.cert, "cert"), _read(self.key, "key")
        try:
            leaf = x509.load_pem_x509_certificates(cert_pem)[0]
        except ValueError as exc:
            raise ConfigError(f"cert file {self.cert} holds no readable PEM certificate ({exc})") from exc
        try:
            private_key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError as exc:  # encrypted
            raise ConfigError(
                f"key file {self.key} is encrypted with a password; flarelite needs an unencrypted key file (mode 0600)"
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"key file {self.key} holds no readable PEM private key ({exc})") from exc
        except UnsupportedAlgorithm as exc:
            raise ConfigError(f"key file {self.key} holds a private key flarelite cannot use ({exc})") from exc
        if _spki(private_key.public_key()) != _spki(leaf.public_key()):
            raise ConfigError(
                f"key file {self.key} does not match cert file {self.cert} (their public keys differ): "
                "give the key that was made with this certificate"
            )
        _check_dates(leaf, self.cert, "cert")
        try:
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = None
        if usages is not None and usage not in usages:
            hint = (
                "issue one with `flarelite cert site NAME --server`"
                if side == "server"
                else "issue one with `flarelite cert site NAME` (without --server)"
            )
            raise ConfigError(
                f"cert file {self.cert} is not a {side} certificate (its extended key usage lacks "
                f"{'serverAuth' if side == 'server' else 'clientAuth'}), so the peer would refuse it; {hint}"
            )
        mode_bits = _mode_bits(self.key)
        if mode_bits is not None and mode_bits & (stat.S_IRWXG | stat.S_IRWXO):
            _log.warning(
                "key file %s can be read by other users (mode %o); make it private: chmod 600", self.key, mode_bits
            )
        return cert_pem, key_pem


# ---------------------------------------------------------------------------------------------- files


def _a(mode: str) -> str:
    return f"an {mode}" if mode == "mtls" else f"a {mode}"


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{field} file {path} does not exist; "
            "check the path, or make it with `flarelite provision`/`flarelite cert`"
        ) from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{field} file {path} is a folder; give the path of a PEM file") from exc
    except OSError as exc:
        raise ConfigError(f"{field} file {path} cannot be read: {exc.strerror or exc}") from exc


def _read_ca(path: str | None) -> bytes:
    from cryptography import x509

    assert path is not None
    pem = _read(path, "ca_cert")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"ca_cert file {path} holds no readable PEM certificate ({exc})") from exc
    for cert in certs:
        _check_dates(cert, path, "ca_cert")
    return pem


def _check_dates(cert: x509.Certificate, path: str, field: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        raise ConfigError(
            f"{field} file {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; issue a new one"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            f"{field} file {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
            "check this machine's clock"
        )


def _spki(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _mode_bits(path: str) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- the helpers


def from_options(
    mode: str,
    ca_cert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    server_name: str | None = None,
) -> TLSConfig:
    """Build a TLSConfig from loose options (e.g. command-line flags); see ``TLSConfig``."""
    return TLSConfig(mode, ca_cert=ca_cert, cert=cert, key=key, server_name=server_name)


def server_credentials(cfg: TLSConfig) -> grpc.ServerCredentials | None:
    """Credentials for ``server.add_secure_port``; None in clear mode (use ``add_insecure_port``).

    tls: the server's key and certificate. mtls: also the CA, and clients must present a certificate it signed.

    Raises:
        ConfigError: see ``TLSConfig.check_server``.
    """
    material = cfg._server_material()
    if material is None:
        return None
    assert material.cert is not None and material.key is not None
    if cfg.mode == "mtls":
        return grpc.ssl_server_credentials(
            [(material.key, material.cert)], root_certificates=material.ca, require_client_auth=True
        )
    return grpc.ssl_server_credentials([(material.key, material.cert)])


def channel_credentials(cfg: TLSConfig) -> grpc.ChannelCredentials | None:
    """Credentials for ``grpc.secure_channel``; None in clear mode (use ``grpc.insecure_channel``).

    tls: the CA to verify the server with. mtls: also this client's key and certificate.

    Raises:
        ConfigError: see ``TLSConfig.check_client``.
    """
    material = cfg._client_material()
    if material is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


def channel_options(cfg: TLSConfig, server_name: str | None = None) -> list[tuple[str, str]]:
    """Channel options to add: the name to verify the other side's certificate against (tls/mtls).

    ``server_name`` overrides the config's (a site dialing a peer directly verifies the peer's own name).
    """
    name = server_name or cfg.server_name
    if cfg.mode == "clear" or not name:
        return []
    return [("grpc.ssl_target_name_override", name)]


def peer_identity(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> str | None:
    """The common name of the client certificate the server verified for this call; None when there is none.

    Under mtls this is the client's identity, proven by the CA's signature; never take it from the request.
    """
    values = context.auth_context().get(AUTH_COMMON_NAME) or []
    for value in values:
        name = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        if name:
            return name
    return None
