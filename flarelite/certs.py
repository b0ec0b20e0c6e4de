"""Certificates for a flarelite project: one project CA signs a certificate for the server and for each site.

The folder a project's certificates live in (made by ``init_ca`` + ``issue``, or by ``provision``)::

    ca.crt  ca.key              the project CA (keep ca.key off the sites: it signs every certificate)
    server.crt  server.key      CN=server; SAN DNS:server, DNS:localhost, IP:127.0.0.1, IP:::1 (+ hosts); serverAuth
    site-1.crt  site-1.key      CN=site-1; SAN DNS:site-1; clientAuth

Keys are EC P-256, signatures SHA-256, key files are written with mode 0600. Under mutual TLS the server
learns a site's identity from the CN of the certificate it presented (``tls.peer_identity``), so a site's
certificate name is its identity. ``TLSConfig.from_dir(mode, folder, name)`` picks the files from here.

Commands (registered on the ``flarelite`` parser by ``add_cert_commands``)::

    flarelite cert init -o DIR [--project P] [--days N] [--force]
    flarelite cert site NAME -o DIR [--server] [--host H ...] [--days N] [--force]
    flarelite provision PROJECT.yml [-o DIR | -w WS] [--days N] [--force]   (YAML or JSON; ours or NVFlare's layout)
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import ConfigError

if TYPE_CHECKING:  # cryptography is imported where it is used: `import flarelite` stays light
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEFAULT_PROJECT = "flarelite"
DEFAULT_SERVER_NAME = "server"  # the name TLSConfig verifies the server's certificate against by default
DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
SERVER_DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")  # "@": admins are named like admin@org.com
_RESERVED_NAMES = {"ca"}  # ca.crt / ca.key are the project CA's files
_CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid from a little before now


@dataclass(frozen=True)
class CertPaths:
    """Where one certificate and its private key were written."""

    cert: str
    key: str


# ------------------------------------------------------------------------------------------------- checks


def check_name(name: str, what: str = "site name") -> str:
    """Return ``name`` if it can be a certificate (and file) name; else raise ConfigError saying why."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must be a non-empty string, got {name!r}")
    if "/" in name or "\\" in name or os.sep in name:
        raise ConfigError(f"{what} {name!r} contains a path separator; use a plain name such as 'site-1'")
    if name.startswith("@"):
        raise ConfigError(f"{what} {name!r} is a deploy-map keyword, not a site; use a plain name such as 'site-1'")
    if name.lower() in _RESERVED_NAMES:
        raise ConfigError(f"{what} {name!r} is reserved for the project CA's files (ca.crt, ca.key); choose another")
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{what} {name!r} is not allowed: "
            "use 1-64 letters, digits, '.', '_', '-' or '@' (admins), starting with a letter or digit"
        )
    return name


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Key usage: signing for every certificate; signing certificates and CRLs for the CA only."""
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _host_entry(host: str) -> x509.GeneralName:
    """A SAN entry for ``host``: an IP address when it parses as one, else a DNS name."""
    from cryptography import x509

    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host.strip()):
        raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name")
    host = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.match(r"^[A-Za-z0-9*_]([A-Za-z0-9._-]*[A-Za-z0-9])?$", host):
        raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def _check_days(days: int) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise ConfigError(f"validity must be a whole number of days >= 1, got {days!r}")
    return days


# ------------------------------------------------------------------------------------------------- files


def _write(path: str, data: bytes, *, secret: bool) -> None:
    """Write ``data`` to ``path`` atomically (a temp file renamed over it); mode 0600 when ``secret``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600 if secret else 0o644)  # the umask may have narrowed it; make it exact
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _refuse_overwrite(paths: list[str], force: bool, what: str, hint: str) -> None:
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        raise ConfigError(f"{what} already exists ({', '.join(existing)}); refusing to overwrite it. {hint}")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(out_dir: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_path, key_path = os.path.join(out_dir, CA_CERT), os.path.join(out_dir, CA_KEY)
    missing = [p for p in (cert_path, key_path) if not os.path.isfile(p)]
    if missing:
        raise ConfigError(
            f"no project CA in {out_dir} ({', '.join(missing)} missing); run `flarelite cert init -o {out_dir}` first"
        )
    try:
        with open(cert_path, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the project CA from {out_dir}: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC private key; make the CA with `flarelite cert init`")
    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise ConfigError(f"{key_path} is not the private key of {cert_path}; the CA files do not belong together")
    return ca_cert, ca_key


def _spki(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ------------------------------------------------------------------------------------------------- CA and sites


def init_ca(
    out_dir: str | os.PathLike, project: str = DEFAULT_PROJECT, *, days: int = DEFAULT_CA_DAYS, force: bool = False
) -> CertPaths:
    """Create the project CA: ``ca.crt`` and ``ca.key`` (0600) in ``out_dir`` (made if missing).

    Parameters:
        out_dir: the project's certificates folder.
        project: the project name, written as the CA's CN and O.
        days: how long the CA is valid.
        force: replace an existing CA (every certificate it signed stops verifying).

    Raises:
        ConfigError: a CA already exists there and ``force`` is False; a bad project name or ``days``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out_dir = os.fspath(out_dir)
    check_name(project, "project name")
    days = _check_days(days)
    cert_path, key_path = os.path.join(out_dir, CA_CERT), os.path.join(out_dir, CA_KEY)
    _refuse_overwrite(
        [cert_path, key_path],
        force,
        f"a CA in {out_dir}",
        "Use another folder, or pass force=True (--force) to replace it; certificates it signed then stop verifying",
    )
    os.makedirs(out_dir, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, project), x509.NameAttribute(NameOID.ORGANIZATION_NAME, project)]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return CertPaths(cert=cert_path, key=key_path)


def issue(
    out_dir: str | os.PathLike,
    name: str,
    kind: str = "client",
    hosts: list[str] | tuple[str, ...] | None = None,
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> CertPaths:
    """Sign a certificate for ``name`` with the CA in ``out_dir``; write ``<name>.crt`` and ``<name>.key`` (0600).

    Parameters:
        out_dir: the folder holding ``ca.crt`` and ``ca.key`` (made by ``init_ca``); the new files go there too.
        name: the site (or server) name; the certificate's CN, and the identity the server sees under mTLS.
        kind: ``"client"`` (SAN DNS:name, ExtendedKeyUsage clientAuth and serverAuth, so that the site can also
            accept direct connections from its peers), ``"server"`` (SAN DNS:name,
            DNS:localhost, IP:127.0.0.1, IP:::1 and ``hosts``; ExtendedKeyUsage serverAuth) or ``"admin"`` (a
            person who submits jobs to a long-lived server: OU ``admin``, ExtendedKeyUsage clientAuth only).
        hosts: extra DNS names or IP addresses clients dial the server by (servers only).
        days: how long the certificate is valid (never past the CA's own expiry).
        force: replace an existing certificate of that name.

    Raises:
        ConfigError: a bad name, kind, host or ``days``; no CA in ``out_dir``; the files exist and not ``force``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out_dir = os.fspath(out_dir)
    check_name(name)
    if kind not in ("client", "server", "admin"):
        raise ConfigError(f"certificate kind must be 'client', 'server' or 'admin', got {kind!r}")
    if hosts and kind != "server":
        raise ConfigError(
            f"hosts {list(hosts)} are for server certificates; issue {name!r} with kind='server' (--server)"
        )
    days = _check_days(days)
    ca_cert, ca_key = _load_ca(out_dir)
    cert_path, key_path = os.path.join(out_dir, f"{name}.crt"), os.path.join(out_dir, f"{name}.key")
    _refuse_overwrite(
        [cert_path, key_path], force, f"a certificate for {name!r}", "Pass force=True (--force) to reissue it"
    )

    san: list[x509.GeneralName] = [x509.RFC822Name(name) if "@" in name else x509.DNSName(name)]
    if kind == "server":
        for host in [*SERVER_DEFAULT_HOSTS, *(hosts or [])]:
            entry = _host_entry(host)
            if entry not in san:
                san.append(entry)
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if org:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(org[0].value)))
    if kind == "admin":  # the role a long-lived server reads (flarelite/federation/control.py)
        subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"))
    # a site's certificate also serves its listener when peers connect to it directly (direct_p2p)
    usages = {
        "server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "admin": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
    }[kind]

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return CertPaths(cert=cert_path, key=key_path)


def provision(
    project_file: str | os.PathLike, out_dir: str | os.PathLike, *, days: int = DEFAULT_DAYS, force: bool = False
) -> dict[str, CertPaths]:
    """Make a whole project's certificates from a project file: the CA, the server and every client.

    The file is YAML or JSON (JSON is YAML), in flarelite's layout (every key but ``clients`` may be left out)::

        name: proj                      # project name (the CA's CN and O); default "flarelite"
        server: {name: server, hosts: [10.0.0.5, fl.example.org]}     # default name "server"
        clients: [site-1, site-2]

    (``admins: [admin@org.com]`` adds admin certificates: OU ``admin``, for ``flarelite job ...`` against a
    long-lived server under mTLS), or in the layout of NVFlare's ``project.yml``: ``name`` and ``participants``,
    of which one has ``type: server`` (its ``host_names`` become extra hosts), ``type: client`` ones are sites and
    ``type: admin`` ones admins; participants of other types (relay, overseer) and ``builders`` are ignored with
    one line each on stderr, keys such as ``api_version`` or ``description`` silently.

    Returns ``{"ca": ..., "<server>": ..., "<client>": ...}`` (``"ca"`` is never a site name).

    Raises:
        ConfigError: the file is missing or not valid YAML/JSON of either layout (the message names the file and
            the field), names repeat or are not allowed, or a CA already exists in ``out_dir`` and not ``force``.
    """
    project_file, out_dir = os.fspath(project_file), os.fspath(out_dir)
    spec = _read_project(project_file)

    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(
            f"project file {project_file}: {field} {why} (see `flarelite provision --help` for the format)"
        )

    if not isinstance(spec, dict):
        raise bad("the top level", "must be a mapping (name, server, clients; or NVFlare's name and participants)")
    if "participants" in spec:
        spec = _from_nvflare_project(spec, bad)
    unknown = sorted(set(spec) - {"name", "server", "clients", "admins"})
    if unknown:
        raise bad(f"keys {unknown}", "are not known; use 'name', 'server', 'clients' and 'admins'")
    project = spec.get("name", DEFAULT_PROJECT)
    if not isinstance(project, str):
        raise bad("'name'", "must be a string")
    server = spec.get("server", {})
    if isinstance(server, str):
        server = {"name": server}
    if not isinstance(server, dict) or set(server) - {"name", "hosts"}:
        raise bad("'server'", 'must be an object like {"name": "server", "hosts": ["10.0.0.5"]}')
    server_name = server.get("name", DEFAULT_SERVER_NAME)
    hosts = server.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise bad("'server.hosts'", "must be a list of DNS names or IP addresses")
    clients = spec.get("clients")
    if not isinstance(clients, list) or not clients or not all(isinstance(c, str) for c in clients):
        raise bad("'clients'", 'must be a non-empty list of site names, e.g. ["site-1", "site-2"]')
    admins = spec.get("admins", [])
    if not isinstance(admins, list) or not all(isinstance(a, str) for a in admins):
        raise bad("'admins'", 'must be a list of admin names, e.g. ["admin@example.org"]')
    names = [server_name, *clients, *admins]
    for n in names:
        check_name(n, f"project file {project_file}: name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise bad("names", f"{duplicates} appear more than once (the server and each client need their own name)")
    for h in hosts:
        _host_entry(h)
    check_name(project, f"project file {project_file}: project name")
    files = [os.path.join(out_dir, f) for n in ["ca", *names] for f in (f"{n}.crt", f"{n}.key")]
    _refuse_overwrite(
        files, force, f"a project in {out_dir}", "Use another folder, or pass force=True (--force) to replace it"
    )

    made = {"ca": init_ca(out_dir, project, force=force)}
    made[server_name] = issue(out_dir, server_name, "server", hosts, days=days, force=force)
    for c in clients:
        made[c] = issue(out_dir, c, "client", days=days, force=force)
    for a in admins:
        made[a] = issue(out_dir, a, "admin", days=days, force=force)
    _write_record(out_dir, project, server_name, clients, admins)
    return made


PROJECT_RECORD = "project.json"  # what provision made: the server's name, read by TLSConfig.from_dir and launch


def _write_record(out_dir: str, project: str, server: str, clients: list[str], admins: list[str] = ()) -> None:
    """Write PROJECT_RECORD, so that the server's name in the project file is the one used everywhere."""
    import json

    record = {"project": project, "server": server, "clients": clients, "admins": list(admins)}
    tmp = os.path.join(out_dir, PROJECT_RECORD + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, PROJECT_RECORD))


def _from_nvflare_project(spec: dict, bad: Callable[[str, str], ConfigError]) -> dict:
    """flarelite's layout of an NVFlare ``project.yml`` (name and participants)."""
    participants = spec["participants"]
    if not isinstance(participants, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in participants
    ):
        raise bad("'participants'", "must be a list of mappings, each with a 'name' and a 'type'")
    servers = [p for p in participants if p.get("type") == "server"]
    if len(servers) != 1:
        raise bad("'participants'", f"must hold exactly one participant of type server, found {len(servers)}")
    hosts = servers[0].get("host_names") or []
    if not isinstance(hosts, list):
        raise bad(f"'host_names' of {servers[0]['name']!r}", "must be a list of DNS names or IP addresses")
    converted: dict = {
        "server": {"name": servers[0]["name"], "hosts": hosts},
        "clients": [p["name"] for p in participants if p.get("type") == "client"],
        "admins": [p["name"] for p in participants if p.get("type") == "admin"],
    }
    for p in participants:
        if p.get("type") not in ("server", "client", "admin"):
            print(
                f"flarelite provision: participant {p['name']!r} of type {p.get('type')!r} is ignored", file=sys.stderr
            )
    for builder in spec.get("builders") or []:
        path = builder.get("path") if isinstance(builder, dict) else builder
        print(
            f"flarelite provision: builder {path!r} is ignored (flarelite makes the certificates itself)",
            file=sys.stderr,
        )
    if "name" in spec:
        converted["name"] = spec["name"]
    return converted


# ------------------------------------------------------------------------------------------------- commands


def _cmd_init(args: argparse.Namespace) -> int:
    paths = init_ca(args.output, args.project, days=args.days, force=args.force)
    print(f"flarelite: wrote the CA of project {args.project!r}: {paths.cert}, {paths.key}")
    print(f"flarelite: keep {paths.key} private; sites get only {CA_CERT} and their own certificate and key")
    return 0


def _cmd_site(args: argparse.Namespace) -> int:
    kind = "server" if args.server else "client"
    paths = issue(args.output, args.name, kind, args.host or None, days=args.days, force=args.force)
    print(f"flarelite: wrote the {kind} certificate of {args.name!r}: {paths.cert}, {paths.key}")
    return 0


def _read_project(project_file: str) -> object:
    """The parsed project file (YAML or JSON).

    Raises:
        ConfigError: it cannot be read or parsed (naming the file).
    """
    import yaml  # only provisioning reads YAML

    try:
        with open(project_file, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read project file {project_file}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"project file {project_file} is not valid YAML or JSON: {exc}") from exc


def _project_name(project_file: str) -> str:
    """The project's name in its file, for the default output folder (a file that cannot be read: provision says
    why); a name that is no plain folder name falls back to the default."""
    try:
        spec = _read_project(project_file)
    except ConfigError:
        return DEFAULT_PROJECT
    name = spec.get("name") if isinstance(spec, dict) else None
    ok = isinstance(name, str) and name not in ("", ".", "..") and os.sep not in name and "\0" not in name
    return name if ok else DEFAULT_PROJECT


def _cmd_provision(args: argparse.Namespace) -> int:
    if (args.project_file is None) == (args.project_flag is None):
        raise ConfigError("give the project file once: flarelite provision PROJECT.yml -o DIR (or -p PROJECT.yml)")
    project_file = args.project_file or args.project_flag
    output = args.output or os.path.join(args.workspace, _project_name(project_file), "certs")
    made = provision(project_file, output, days=args.days, force=args.force)
    if not args.output:
        print(f"flarelite: the project's certificates go to {os.path.abspath(output)} (-o DIR chooses)")
    for name, paths in made.items():
        print(f"flarelite: wrote {'the CA' if name == 'ca' else repr(name)}: {paths.cert}, {paths.key}")
    return 0


def add_cert_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cert init``, ``cert site`` and ``provision`` on the ``flarelite`` command's subparsers.

    Each sets ``func`` (call it with the parsed namespace; it returns 0 and raises ConfigError on bad input).
    """
    cert = subparsers.add_parser("cert", help="make the project CA and sign site certificates (TLS / mutual TLS)")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True)

    init = cert_sub.add_parser("init", help=f"create the project CA ({CA_CERT}, {CA_KEY}) in a folder")
    init.add_argument("-o", "--output", required=True, help="the project's certificates folder")
    init.add_argument("--project", default=DEFAULT_PROJECT, help=f"project name (default {DEFAULT_PROJECT})")
    init.add_argument("--days", type=int, default=DEFAULT_CA_DAYS, help=f"validity in days (default {DEFAULT_CA_DAYS})")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_cmd_init)

    site = cert_sub.add_parser("site", help="sign a certificate for a site (or, with --server, for the server)")
    site.add_argument("name", help="the site's name, e.g. site-1 (its identity under mutual TLS)")
    site.add_argument("-o", "--output", required=True, help="the folder holding the project CA")
    site.add_argument("--server", action="store_true", help="a server certificate (serverAuth; localhost SANs)")
    site.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="H",
        help="a DNS name or IP clients dial the server by (repeatable)",
    )
    site.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default {DEFAULT_DAYS})")
    site.add_argument("--force", action="store_true", help="replace an existing certificate of that name")
    site.set_defaults(func=_cmd_site)

    prov = subparsers.add_parser(
        "provision",
        help="make a project's CA, server and client certificates from a project file (YAML or JSON)",
        description='PROJECT.yml (YAML or JSON): {"name": "proj", "server": {"name": "server", "hosts": '
        '["10.0.0.5"]}, "clients": ["site-1", "site-2"]} ("name" and "server" may be left out), or NVFlare\'s '
        "project.yml layout (name; participants of type server, with host_names, and of type client).",
    )
    prov.add_argument("project_file", metavar="PROJECT.yml", nargs="?", help="the project description (YAML or JSON)")
    prov.add_argument(
        "-p", "--project_file", dest="project_flag", metavar="PROJECT.yml", help="the same, as NVFlare's flag"
    )
    prov.add_argument(
        "-o", "--output", default=None, help="the folder for the certificates (default WORKSPACE/<project>/certs)"
    )
    prov.add_argument(
        "-w", "--workspace", default="workspace", help="NVFlare's flag: where -o defaults to (default ./workspace)"
    )
    prov.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity of site certificates (default {DEFAULT_DAYS})"
    )
    prov.add_argument("--force", action="store_true", help="replace an existing CA and certificates")
    prov.set_defaults(func=_cmd_provision)
