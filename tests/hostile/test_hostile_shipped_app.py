"""What a server ships: files land only inside the site's app folder, and code runs only with the site's consent.

Before the fix install_app followed a pre-planted symlink (custom/evil -> outside: the shipped file was written
outside the app folder), accepted 'a' and 'a/b' together (then died with an OSError), let NUL bytes and
over-long names through to the OS, and kept files of earlier runs; a site in clear mode ran whatever custom/
code any process that answered on the server's address shipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from flarelite.errors import ConfigError
from flarelite.runtime.apps import custom_code_refusal, install_app

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def site_dir():
    folder = tempfile.mkdtemp(prefix="fl")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def outside():
    folder = tempfile.mkdtemp(prefix="fl-outside")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def payload(files: dict, name: str = "app_site-1") -> dict:
    return {"name": name, "client": {"executors": []}, "custom": files}


def tree(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, n), folder) for r, ds, fs in os.walk(folder) for n in ds + fs)


@pytest.mark.parametrize(
    "name, why",
    [
        ("../x", "not normalised"),
        ("/etc/x", "absolute"),
        ("a/../../x", "not normalised"),
        ("a/./b", "not normalised"),
        ("a//b", "not normalised"),
        ("a/b/", "not normalised"),
        ("x\x00y", "NUL"),
        ("a\\..\\x", "backslash"),
        ("C:x", "colon"),
        ("esc\x1b[2Jx", "control character"),
        ("n" * 300, "longer than 255 bytes"),
        ("/".join(["d" * 200] * 6), "longer than 1024 bytes"),
        ("/".join(["d"] * 40), "more than 32 folders deep"),
        ("bad\udc00surrogate\ud800", "cannot be encoded"),
        ("", "non-empty"),
    ],
)
def test_hostile_file_names_are_refused(site_dir, name, why):
    with pytest.raises(ConfigError, match=why) as err:
        install_app(payload({name: b"x", "ok.py": b""}), site_dir, "site-1")
    assert "shipped file name" in str(err.value)
    assert tree(site_dir) == []  # checked before anything is written


def test_a_file_and_a_folder_of_the_same_name_collide(site_dir):
    with pytest.raises(ConfigError, match=r"shipped file 'a' collides with the folder of 'a/b'"):
        install_app(payload({"a/b": b"1", "a": b"2"}), site_dir, "site-1")
    assert tree(site_dir) == []


def test_pre_planted_symlinks_are_not_followed(site_dir, outside):
    app = os.path.join(site_dir, "app_site-1")
    os.makedirs(os.path.join(app, "custom"))
    os.symlink(outside, os.path.join(app, "custom", "evil"))  # custom/evil -> outside
    os.symlink(outside, os.path.join(site_dir, "app_site-2"))  # the whole app folder -> outside
    install_app(payload({"evil/x.py": b"pwned", "keep.py": b"ok"}), site_dir, "site-1")
    install_app(payload({"y.py": b"pwned"}, name="app_site-2"), site_dir, "site-1")
    assert os.listdir(outside) == []
    assert not os.path.islink(os.path.join(app, "custom", "evil"))
    assert open(os.path.join(app, "custom", "evil", "x.py"), "rb").read() == b"pwned"
    assert not os.path.islink(os.path.join(site_dir, "app_site-2"))


def test_the_app_folder_is_fresh_for_each_run(site_dir):
    install_app(payload({"old.py": b"1", "pkg/stale.py": b"2"}), site_dir, "site-1")
    install_app(payload({"new.py": b"3"}), site_dir, "site-1")
    assert tree(os.path.join(site_dir, "app_site-1")) == [
        "config",
        "config/config_fed_client.json",
        "custom",
        "custom/new.py",
    ]


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "local", "x" * 200, "a\x00", ""])
def test_hostile_app_names_are_refused(site_dir, name):
    with pytest.raises(ConfigError, match="invalid name"):
        install_app(payload({"x.py": b""}, name=name), site_dir, "site-1")
    assert tree(site_dir) == []


def test_the_refusal_names_the_files_and_the_option():
    assert custom_code_refusal(payload({}), "site-1") is None
    text = custom_code_refusal(payload({"modules.py": b"", "pkg/__init__.py": b""}), "site-1")
    assert "modules.py" in text and "pkg/__init__.py" in text and "--allow-custom-code" in text and "--mtls" in text
    assert "\x1b" not in custom_code_refusal(payload({"esc\x1b[2J.py": b""}), "site-1")  # no raw control characters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_clear_mode_site_refuses_shipped_code_and_tells_the_server(tmp_path):
    """flarelite server + client in clear mode: without --allow-custom-code the site runs none of the code."""
    jobs = tmp_path / "jobs"
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "hello-p2p", "job.py"), "--export", str(jobs)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job = out.stdout.strip().splitlines()[-1]
    marker = tmp_path / "pwned"
    for app in ("app_site-1",):  # the server's operator (or whoever answers on its address) adds a payload
        with open(os.path.join(job, app, "custom", "modules.py"), "a", encoding="utf-8") as f:
            f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    address = f"127.0.0.1:{_free_port()}"
    cli = [sys.executable, "-m", "flarelite.cli"]
    ws = tmp_path / "ws"
    server = subprocess.Popen(
        [*cli, "server", job, "--address", address, "-w", str(ws), "--ready-timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        site = subprocess.run(
            [*cli, "client", "--name", "site-1", "--server", address, "-w", str(ws / "c"), "--connect-timeout", "30"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        server_out = server.communicate(timeout=60)[0]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert site.returncode == 1
    assert not marker.exists()
    assert not (ws / "c" / "site-1" / "app_site-1").exists()
    log = (ws / "c" / "site-1" / "log.txt").read_text()
    assert "site-1 refused the custom code the server shipped (modules.py)" in log and "--allow-custom-code" in log
    assert server.returncode == 1
    assert "site-1 refused the custom code" in server_out  # the server was told why
