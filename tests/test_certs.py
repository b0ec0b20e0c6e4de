"""Certificate generation (flarelite.certs): CA, server and client certificates, provisioning, the commands."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flarelite import certs
from flarelite.errors import ConfigError


def load(path) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def san(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


def eku(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def project(tmp_path):
    out = tmp_path / "certs"
    certs.init_ca(out, "proj")
    return out


def test_ca_is_a_self_signed_ca_with_a_private_key(project):
    ca = load(project / "ca.crt")
    ca.verify_directly_issued_by(ca)
    assert cn(ca) == "proj"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.signature_hash_algorithm.name == "sha256"
    assert mode(project / "ca.key") == 0o600


def test_server_certificate_names_and_usage(project):
    paths = certs.issue(project, "server", "server", hosts=["10.1.2.3", "fl.example.org", "127.0.0.1"])
    assert paths == certs.CertPaths(cert=str(project / "server.crt"), key=str(project / "server.key"))
    cert = load(paths.cert)
    cert.verify_directly_issued_by(load(project / "ca.crt"))
    assert cn(cert) == "server"
    dns, ips = san(cert)
    assert dns == {"server", "localhost", "fl.example.org"}
    assert ips == {"127.0.0.1", "::1", "10.1.2.3"}
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert mode(paths.key) == 0o600


def test_client_certificate_names_and_usage(project):
    paths = certs.issue(project, "site-1")
    cert = load(paths.cert)
    cert.verify_directly_issued_by(load(project / "ca.crt"))
    assert cn(cert) == "site-1"
    assert san(cert) == ({"site-1"}, set())
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]  # + direct peers
    assert mode(paths.key) == 0o600


def test_validity_is_configurable_and_never_outlives_the_ca(tmp_path):
    certs.init_ca(tmp_path, days=30)
    short = load(certs.issue(tmp_path, "site-1", days=7).cert)
    assert 6 < (short.not_valid_after_utc - short.not_valid_before_utc).days <= 7
    long = load(certs.issue(tmp_path, "site-2", days=365).cert)
    assert long.not_valid_after_utc <= load(tmp_path / "ca.crt").not_valid_after_utc
    with pytest.raises(ConfigError, match="days"):
        certs.issue(tmp_path, "site-3", days=0)


def test_a_certificate_from_another_ca_does_not_verify(tmp_path):
    certs.init_ca(tmp_path / "a")
    certs.init_ca(tmp_path / "b")
    cert = load(certs.issue(tmp_path / "b", "site-1").cert)
    with pytest.raises((InvalidSignature, ValueError)):
        cert.verify_directly_issued_by(load(tmp_path / "a" / "ca.crt"))


def test_existing_ca_and_certificates_are_not_overwritten_without_force(project):
    before = (project / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match=r"a CA in .* already exists .*ca\.crt.*refusing to overwrite.*--force"):
        certs.init_ca(project, "proj")
    assert (project / "ca.crt").read_bytes() == before
    certs.init_ca(project, "proj", force=True)
    assert (project / "ca.crt").read_bytes() != before
    assert mode(project / "ca.key") == 0o600

    first = certs.issue(project, "site-1")
    with pytest.raises(ConfigError, match="certificate for 'site-1' already exists"):
        certs.issue(project, "site-1")
    certs.issue(project, "site-1", force=True)
    assert mode(first.key) == 0o600


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "non-empty"),
        ("a/b", "path separator"),
        ("..\\x", "path separator"),
        ("@ALL", "deploy-map keyword"),
        ("ca", "reserved"),
        ("..", "not allowed"),
        ("site 1", "not allowed"),
        ("x" * 65, "not allowed"),
    ],
)
def test_bad_site_names_are_rejected(project, name, message):
    with pytest.raises(ConfigError, match=message):
        certs.issue(project, name)
    assert sorted(os.listdir(project)) == ["ca.crt", "ca.key"]


def test_issue_needs_a_ca_and_a_known_kind_and_good_hosts(tmp_path, project):
    with pytest.raises(ConfigError, match=r"no project CA in .*flarelite cert init -o"):
        certs.issue(tmp_path / "empty", "site-1")
    with pytest.raises(ConfigError, match="'client', 'server' or 'admin'"):
        certs.issue(project, "site-1", kind="peer")
    with pytest.raises(ConfigError, match="hosts .* are for server certificates"):
        certs.issue(project, "site-1", hosts=["10.0.0.1"])
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        certs.issue(project, "server", "server", hosts=["bad host"])


def test_provision_makes_the_whole_project(tmp_path):
    spec = tmp_path / "project.json"
    spec.write_text(
        json.dumps(
            {"name": "proj", "server": {"name": "server", "hosts": ["10.0.0.5"]}, "clients": ["site-1", "site-2"]}
        )
    )
    made = certs.provision(spec, tmp_path / "out")
    assert set(made) == {"ca", "server", "site-1", "site-2"}
    ca = load(tmp_path / "out" / "ca.crt")
    assert cn(ca) == "proj"
    for name in ("server", "site-1", "site-2"):
        cert = load(made[name].cert)
        cert.verify_directly_issued_by(ca)
        assert cn(cert) == name
        assert mode(made[name].key) == 0o600
    assert ipaddress.ip_address("10.0.0.5") in load(made["server"].cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.IPAddress)
    assert eku(load(made["site-2"].cert)) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(ConfigError, match="already exists"):
        certs.provision(spec, tmp_path / "out")
    certs.provision(spec, tmp_path / "out", force=True)


def test_provision_reads_yaml_and_nvflare_project_files(tmp_path, capsys):
    ours = tmp_path / "project.yml"
    ours.write_text("name: proj\nserver:\n  name: server\n  hosts: [10.0.0.5]\nclients:\n  - site-1\n  - site-2\n")
    made = certs.provision(ours, tmp_path / "ours")
    assert set(made) == {"ca", "server", "site-1", "site-2"} and cn(load(made["ca"].cert)) == "proj"

    nvflare = tmp_path / "nvflare_project.yml"
    nvflare.write_text(
        """api_version: 3
name: example_project
description: NVIDIA FLARE sample project yaml file
participants:
  - name: fl.example.org
    type: server
    org: nvidia
    fed_learn_port: 8002
    admin_port: 8003
    host_names: [10.0.0.7]
  - name: site-1
    type: client
    org: nvidia
  - name: site-2
    type: client
    org: nvidia
  - name: admin@nvidia.com
    type: admin
    org: nvidia
    role: project_admin
builders:
  - path: nvflare.lighter.impl.cert.CertBuilder
"""
    )
    made = certs.provision(nvflare, tmp_path / "nv")
    assert set(made) == {"ca", "fl.example.org", "site-1", "site-2", "admin@nvidia.com"}
    admin = load(made["admin@nvidia.com"].cert)
    assert cn(admin) == "admin@nvidia.com"
    assert [a.value for a in admin.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)] == ["admin"]
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]  # a person, never a server
    err = capsys.readouterr().err
    assert err.count("is ignored") == 1 and "nvflare.lighter.impl.cert.CertBuilder" in err
    assert cn(load(made["ca"].cert)) == "example_project"
    server = load(made["fl.example.org"].cert)
    server.verify_directly_issued_by(load(made["ca"].cert))
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fl.example.org" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.0.0.7") in san.get_values_for_type(x509.IPAddress)


def test_provision_defaults_and_bad_files(tmp_path):
    spec = tmp_path / "p.json"
    spec.write_text('{"clients": ["site-1"]}')
    made = certs.provision(spec, tmp_path / "out")
    assert set(made) == {"ca", "server", "site-1"}
    assert cn(load(made["ca"].cert)) == "flarelite"

    cases = {
        "clients: [site-1\n": "not valid YAML or JSON",
        "not a mapping": "must be a mapping",
        "[]": "must be a mapping",
        '{"participants": [{"name": "site-1", "type": "client"}]}': "exactly one participant of type server, found 0",
        '{"participants": ["server"]}': "'participants' must be a list of mappings",
        '{"clients": []}': "'clients' must be a non-empty list",
        '{"clients": ["site-1"], "sites": []}': "not known",
        '{"clients": ["site-1", "site-1"]}': "more than once",
        '{"server": {"name": "site-1"}, "clients": ["site-1"]}': "more than once",
        '{"clients": ["@ALL"]}': "deploy-map keyword",
        '{"server": {"hosts": "10.0.0.1"}, "clients": ["a"]}': "server.hosts",
    }
    for i, (text, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            certs.provision(bad, tmp_path / f"o{i}")
        assert str(bad) in str(info.value)
        assert not (tmp_path / f"o{i}").exists()
    with pytest.raises(ConfigError, match="cannot read project file"):
        certs.provision(tmp_path / "missing.json", tmp_path / "o")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flarelite")
    sub = p.add_subparsers(dest="command", required=True)
    certs.add_cert_commands(sub)
    return p


def run(*argv) -> int:
    args = parser().parse_args([str(a) for a in argv])
    return args.func(args)


def test_commands(tmp_path, capsys):
    out = tmp_path / "c"
    assert run("cert", "init", "-o", out, "--project", "proj") == 0
    assert str(out / "ca.crt") in capsys.readouterr().out
    assert run("cert", "site", "server", "-o", out, "--server", "--host", "10.9.8.7", "--host", "fl.lan") == 0
    assert "server certificate of 'server'" in capsys.readouterr().out
    assert run("cert", "site", "site-1", "-o", out) == 0
    assert str(out / "site-1.key") in capsys.readouterr().out
    server = load(out / "server.crt")
    assert {"fl.lan"} <= san(server)[0] and "10.9.8.7" in san(server)[1]
    assert eku(load(out / "site-1.crt")) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(ConfigError, match="already exists"):
        run("cert", "init", "-o", out)
    assert run("cert", "init", "-o", out, "--force") == 0
    with pytest.raises(ConfigError, match="path separator"):
        run("cert", "site", "a/b", "-o", out)

    spec = tmp_path / "p.json"
    spec.write_text('{"name": "p", "clients": ["site-1", "site-2"]}')
    assert run("provision", spec, "-o", tmp_path / "prov") == 0
    printed = capsys.readouterr().out
    for name in ("ca", "server", "site-1", "site-2"):
        assert str(tmp_path / "prov" / f"{name}.crt") in printed
    with pytest.raises(SystemExit):
        parser().parse_args(["cert"])  # a cert subcommand is required


def test_provision_with_nvflares_flags_alone_writes_under_the_workspace(tmp_path, monkeypatch, capsys):
    """`nvflare provision -p project.yml` needs no output folder: neither does ours (WORKSPACE/<project>/certs)."""
    from flarelite.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "project.yml").write_text("name: example_project\nparticipants:\n  - {name: server, type: server}\n"
                                          "  - {name: site-1, type: client}\n")  # fmt: skip
    assert main(["provision", "-p", "project.yml"]) == 0
    folder = tmp_path / "workspace" / "example_project" / "certs"
    assert {"ca.crt", "server.crt", "site-1.key"} <= set(os.listdir(folder))
    assert str(folder) in capsys.readouterr().out
    assert main(["provision", "-p", "project.yml", "-w", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "example_project" / "certs" / "site-1.crt").is_file()
    (tmp_path / "odd.yml").write_text("name: ../up\nclients: [site-1]\n")
    assert main(["provision", "odd.yml", "--force"]) == 1  # never a folder outside the workspace
    assert "project name '../up' contains a path separator" in capsys.readouterr().err
    assert not (tmp_path / "up").exists()
