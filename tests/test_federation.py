"""A real long-lived federation (issue 10): a server started without a job and 3 sites as processes, jobs
submitted by an admin through ``flarelite.admin.Session`` and ``flarelite job``; jobs one after another, one
aborted mid-run, a site killed and restarted between jobs, the server restarted while the sites wait, every
job's results downloaded and checked; under mTLS, admins without an admin certificate are refused."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from flarelite.admin import Session
from flarelite.errors import ConnectError
from flarelite.federation import jobs as J
from flarelite.federation.control import ControlError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "federation_fixtures"))
from federation import Federation, export_hello_p2p, export_slow_job  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def federation(short_dir):
    fed = Federation(short_dir)
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()


def received_lines(folder: str) -> int:
    return sum(open(p, errors="replace").read().count("Received message") for p in glob.glob(f"{folder}/*/log.txt"))


def check_hello_p2p_results(session: Session, job_id: str, dest: str) -> None:
    path = session.download_job_result(job_id, dest)
    record = json.load(open(os.path.join(path, "job.json")))
    assert record["status"] == J.FINISHED_COMPLETED and record["results"] == {
        f"site-{i}": "uploaded" for i in (1, 2, 3)
    }
    workspace = os.path.join(path, "workspace")
    assert sorted(os.listdir(workspace)) == ["server", "site-1", "site-2", "site-3"]
    for site in ("site-1", "site-2", "site-3"):
        assert json.load(open(os.path.join(workspace, site, "run_result.json")))["ok"] is True
    assert json.load(open(os.path.join(workspace, "server", "run_result.json")))["ok"] is True
    assert received_lines(workspace) == 6  # each site greeted the two others


def test_jobs_one_after_another_an_abort_a_site_restart_and_a_server_restart(federation, short_dir):
    jobs_dir = os.path.join(short_dir, "jobs")
    hello = export_hello_p2p(jobs_dir)
    slow = export_slow_job(jobs_dir)
    with Session(federation.address, timeout=60) as s:
        federation.wait_connected(s)

        # two jobs, one after the other
        first = s.submit_job(hello)
        assert s.wait_for_job(first, timeout=120)["status"] == J.FINISHED_COMPLETED
        check_hello_p2p_results(s, first, os.path.join(short_dir, "dl"))
        second = s.submit_job(hello)
        assert second != first
        assert s.wait_for_job(second, timeout=120)["status"] == J.FINISHED_COMPLETED
        check_hello_p2p_results(s, second, os.path.join(short_dir, "dl"))

        # one aborted mid-run: it stops on the server and on every site within seconds
        job = s.submit_job(slow)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = s.get_system_info()
            if all(job in site["jobs"] for site in info["sites"]):
                break
            time.sleep(0.2)
        assert all(job in site["jobs"] for site in info["sites"]), info
        began = time.monotonic()
        s.abort_job(job)
        meta = s.wait_for_job(job, timeout=30)
        assert meta["status"] == J.FINISHED_ABORTED
        while time.monotonic() - began < 30 and any(site["jobs"] for site in s.get_system_info()["sites"]):
            time.sleep(0.2)
        assert not any(site["jobs"] for site in s.get_system_info()["sites"]), "a site still runs the aborted job"
        assert time.monotonic() - began < 20
        with pytest.raises(ControlError, match="has ended already"):
            s.abort_job(job)

        # a site killed and restarted between jobs
        federation.kill_site("site-2")
        federation.start_site("site-2")
        federation.wait_connected(s)
        third = s.submit_job(hello)
        assert s.wait_for_job(third, timeout=120)["status"] == J.FINISHED_COMPLETED
        check_hello_p2p_results(s, third, os.path.join(short_dir, "dl"))

    # the server restarted while the sites wait: they come back, and the next job runs
    federation.stop_server()
    time.sleep(2)
    federation.start_server()
    with Session(federation.address, timeout=60) as s:
        federation.wait_connected(s)
        listed = {j["job_id"]: j["status"] for j in s.list_jobs()}
        assert listed[first] == listed[second] == listed[third] == J.FINISHED_COMPLETED
        assert listed[job] == J.FINISHED_ABORTED
        fourth = s.submit_job(hello)
        assert s.wait_for_job(fourth, timeout=120)["status"] == J.FINISHED_COMPLETED
        check_hello_p2p_results(s, fourth, os.path.join(short_dir, "dl"))
    for name in federation.names:
        out = federation.output(name)
        assert "lost the server" in out and "Traceback" not in out


def test_a_job_waits_in_the_queue_until_its_sites_are_connected(short_dir):
    fed = Federation(short_dir, sites=3)
    fed.start_server()
    try:
        hello = export_hello_p2p(os.path.join(short_dir, "jobs"))
        with Session(fed.address, timeout=60) as s:
            job = s.submit_job(hello)
            fed.start_site("site-1")
            fed.wait_connected(s, ["site-1"])
            time.sleep(1.5)
            meta = s.get_job_meta(job)
            assert meta["status"] == J.SUBMITTED and "1 of 3 connected" in meta["waiting"]
            listed = subprocess.run(
                [sys.executable, "-m", "flarelite.cli", "job", "list", "--server", fed.address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "SUBMITTED" in listed.stdout and "waiting for sites: 1 of 3 connected" in listed.stdout
            fed.start_site("site-2")
            fed.start_site("site-3")
            assert s.wait_for_job(job, timeout=120)["status"] == J.FINISHED_COMPLETED
    finally:
        fed.stop()


def test_the_job_commands_print_the_id_last_and_say_what_is_wrong(federation, short_dir):
    hello = export_hello_p2p(os.path.join(short_dir, "jobs"))
    cli = [sys.executable, "-m", "flarelite.cli"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120)

    submitted = run("job", "submit", hello, "--server", federation.address, "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert "FINISHED:COMPLETED" in submitted.stdout and len(job_id) == 36
    status = run("job", "status", job_id, "--server", federation.address)
    assert status.returncode == 0 and "FINISHED:COMPLETED" in status.stdout and "site-1 (results" in status.stdout
    out = os.path.join(short_dir, "out")
    downloaded = run("job", "download", job_id, "--server", federation.address, "-o", out)
    assert downloaded.returncode == 0 and downloaded.stdout.strip().splitlines()[-1] == os.path.join(out, job_id)
    assert received_lines(os.path.join(out, job_id, "workspace")) == 6
    admin = run("admin", "--server", federation.address)
    assert "sites: 3 connected" in admin.stdout and "jobs running: 0" in admin.stdout

    unknown = run("job", "status", "no-such-job", "--server", federation.address)
    assert unknown.returncode == 1 and "no job 'no-such-job'" in unknown.stderr and "Traceback" not in unknown.stderr
    not_a_job = run("job", "submit", short_dir, "--server", federation.address)
    assert not_a_job.returncode == 1 and "meta.json" in not_a_job.stderr and "Traceback" not in not_a_job.stderr
    nowhere = run("job", "list", "--server", f"unix://{short_dir}/none.sock", "--timeout", "2")
    assert nowhere.returncode == 1 and "cannot reach the flarelite server" in nowhere.stderr
    assert len(nowhere.stderr.strip().splitlines()) == 1


def test_mtls_admins_need_an_admin_certificate(short_dir):
    from flarelite import certs

    project = os.path.join(short_dir, "project.yml")
    with open(project, "w") as f:
        f.write(
            "name: fedtest\nparticipants:\n"
            "  - {name: fl-server, type: server}\n"
            "  - {name: site-1, type: client}\n"
            "  - {name: admin@example.org, type: admin, role: project_admin}\n"
        )
    folder = os.path.join(short_dir, "certs")
    certs.provision(project, folder)
    fed = Federation(short_dir, sites=1, security=("--mtls", "--certs", folder))
    fed.start()
    try:
        with Session(fed.address, name="admin@example.org", mode="mtls", certs=folder, timeout=60) as s:
            fed.wait_connected(s)
            hello_like = export_slow_job(os.path.join(short_dir, "jobs"), seconds=0.5)
            job = s.submit_job(hello_like)
            assert s.wait_for_job(job, timeout=120)["status"] == J.FINISHED_COMPLETED
        with Session(fed.address, name="site-1", mode="mtls", certs=folder, timeout=60) as s:
            with pytest.raises(ControlError, match="site-1 has no admin certificate"):
                s.list_jobs()
            with pytest.raises(ControlError, match="no job results to upload here .*admin certificate"):
                s.submit_job(hello_like)  # refused at its first upload piece: nothing of it is stored
        from flarelite.federation.control import ControlClient
        from flarelite.launch import tls_config

        impostor = ControlClient(fed.address, tls_config("mtls", folder, "site-1"), "site-7")
        assert impostor.call("ping", name="admin@example.org") == {
            "server": "flarelite",
            "mode": "mtls",
            "you": "site-1",  # the certificate's name, whatever the request says
            "role": "site",
        }
        impostor.close()
        with pytest.raises(ConnectError):  # no certificate at all: the TLS handshake fails
            Session(fed.address, name="admin@example.org", mode="tls", certs=folder, timeout=3)
    finally:
        fed.stop()


def test_job_processes_get_the_log_config_of_the_server_or_site_that_starts_them(tmp_path, monkeypatch):
    import argparse
    from types import SimpleNamespace

    from flarelite.federation.processes import launch_command
    from flarelite.federation.run import _log_config

    options = SimpleNamespace(mode="clear", certs=None, allowed_classes=[], max_message_size=None, log_config=None)
    assert "--log-config" not in launch_command("client", "--name", "site-1", options=options)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logging.json").write_text("{}")
    assert _log_config(argparse.Namespace(log_config="logging.json")) == str(tmp_path / "logging.json")
    assert _log_config(argparse.Namespace(log_config="debug")) == "debug"  # a level or a preset name stays
    assert _log_config(argparse.Namespace()) is None
    options.log_config = str(tmp_path / "logging.json")
    cmd = launch_command("server", "JOB", options=options)
    assert cmd[cmd.index("--log-config") + 1] == str(tmp_path / "logging.json")
