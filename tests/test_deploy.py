"""Real deployment from the CLI: flarelite server, flarelite client (apps shipped by the server), flarelite poc."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITES = ("site-1", "site-2", "site-3")


def cli(*args):
    return [sys.executable, "-m", "flarelite.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hello_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "hello-p2p", "job.py"), "--export", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    project = root / "project.json"
    project.write_text(json.dumps({"name": "test", "server": {"name": "server"}, "clients": [*SITES, "site-9"]}))
    subprocess.run(cli("provision", str(project), "-o", str(root / "out")), check=True, timeout=60, capture_output=True)
    return str(root / "out")


def received(ws, site):
    return (ws / site / "log.txt").read_text().count("Received message from")


@pytest.mark.parametrize("security", ["clear", "mtls"])
def test_server_and_clients_started_from_the_cli(tmp_path, hello_job, certs, security):
    address = f"127.0.0.1:{free_port()}"
    sec = [] if security == "clear" else ["--mtls", "--certs", certs]
    # in clear mode the server is not authenticated: the sites run the code it ships only when told to
    consent = ["--allow-custom-code"] if security == "clear" else []
    ws = tmp_path / "ws"
    server = subprocess.Popen(
        cli("server", hello_job, "--address", address, "-w", str(ws), *sec),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    clients = [
        subprocess.Popen(
            cli("client", "--name", name, "--server", address, "-w", str(ws / "c"), *sec, *consent),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in SITES
    ]
    try:
        outs = [p.communicate(timeout=60)[0] for p in [server, *clients]]
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in [server, *clients]] == [0, 0, 0, 0], "\n".join(o[-2000:] for o in outs)
    for name in SITES:
        assert received(ws / "c", name) == 2
        # the app was shipped: the client had no job folder of its own
        assert (ws / "c" / name / f"app_{name}" / "custom" / "modules.py").exists()


def test_a_site_that_is_not_part_of_the_job_is_refused(tmp_path, hello_job, certs):
    address = f"127.0.0.1:{free_port()}"
    sec = ["--mtls", "--certs", certs]
    ws = tmp_path / "ws"
    server = subprocess.Popen(
        cli("server", hello_job, "--address", address, "-w", str(ws), "--ready-timeout", "5", *sec),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # site-9's certificate is valid (same CA) but site-9 is not a site of this job
    intruder = subprocess.run(
        cli("client", "--name", "site-9", "--server", address, "-w", str(ws / "c"), *sec),
        capture_output=True,
        text=True,
        timeout=60,
    )
    server.kill()
    server.communicate(timeout=30)
    assert intruder.returncode == 1
    assert "not a site of this job" in intruder.stderr


def test_poc_runs_the_job_as_a_deployment(tmp_path, hello_job):
    proc = subprocess.run(
        cli("poc", hello_job, "-w", str(tmp_path / "ws"), "--mode", "mtls"), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Received message from") == 6
    assert "run=hello-p2p" in proc.stderr


NVFLARE_PROJECT = """\
api_version: 3
name: example_project
description: NVIDIA FLARE sample project yaml file
participants:
  - name: server1
    type: server
    org: nvidia
    fed_learn_port: 8002
    admin_port: 8003
  - name: site-1
    type: client
    org: nvidia
  - name: site-2
    type: client
    org: nvidia
  - name: site-3
    type: client
    org: nvidia
  - name: admin@nvidia.com
    type: admin
    org: nvidia
    role: project_admin
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
    args:
      template_file: master_template.yml
  - path: nvflare.lighter.impl.cert.CertBuilder
"""


def test_nvflares_project_file_with_a_server_not_called_server_deploys_under_mtls(tmp_path, hello_job):
    (tmp_path / "project.yml").write_text(NVFLARE_PROJECT)
    out = tmp_path / "certs"
    made = subprocess.run(
        cli("provision", "-p", str(tmp_path / "project.yml"), "-o", str(out)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert (out / "server1.crt").exists() and not (out / "server.crt").exists()
    address = f"127.0.0.1:{free_port()}"
    sec = ["--mtls", "--certs", str(out)]
    ws = tmp_path / "ws"
    procs = [subprocess.Popen(cli("server", hello_job, "--address", address, "-w", str(ws), *sec), text=True)]
    procs += [
        subprocess.Popen(
            cli("client", "--name", name, "--server", address, "-w", str(ws / "c"), *sec),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in SITES
    ]
    try:
        outs = [p.communicate(timeout=60)[0] or "" for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(o[-2000:] for o in outs)
    for name in SITES:
        assert received(ws / "c", name) == 2
