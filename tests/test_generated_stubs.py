"""The committed gRPC modules are what protoc makes of protos/flarelite.proto (nobody edited one without the other)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "flarelite/communication/grpc"
GENERATED = ("flarelite_pb2.py", "flarelite_pb2.pyi", "flarelite_pb2_grpc.py")
COMMAND = [
    "-m",
    "grpc_tools.protoc",
    f"-I{PACKAGE}=protos",
    "--python_out={out}",
    "--grpc_python_out={out}",
    "--pyi_out={out}",
    "protos/flarelite.proto",
]
HOW = (
    "regenerate them from the repository root with\n"
    "    python -m grpc_tools.protoc -Iflarelite/communication/grpc=protos --python_out=. --grpc_python_out=. "
    "--pyi_out=. protos/flarelite.proto\n"
    "and commit the proto and the generated modules together"
)


def committed(name: str) -> bytes:
    with open(os.path.join(REPO, PACKAGE, name), "rb") as f:
        return f.read()


def recorded_grpc_tools_version() -> str | None:
    """The grpcio-tools version the committed stubs were made with (their GRPC_GENERATED_VERSION)."""
    match = re.search(rb"^GRPC_GENERATED_VERSION = '([^']+)'", committed("flarelite_pb2_grpc.py"), re.M)
    return match.group(1).decode() if match else None


def test_generated_modules_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed (pip install -e .[dev])")
    installed = importlib.metadata.version("grpcio-tools")
    recorded = recorded_grpc_tools_version()
    if recorded != installed:
        pytest.skip(
            f"the committed stubs were made with grpcio-tools {recorded}, this is {installed}: "
            "they would differ in version stamps alone"
        )
    out = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, *(arg.format(out=out) for arg in COMMAND)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"protoc failed on protos/flarelite.proto:\n{proc.stderr}"
    made = sorted(
        os.path.relpath(os.path.join(folder, name), out) for folder, _, names in os.walk(out) for name in names
    )
    assert made == sorted(f"{PACKAGE}/{name}" for name in GENERATED), made
    stale = [name for name in GENERATED if (tmp_path / PACKAGE / name).read_bytes() != committed(name)]
    assert not stale, f"{', '.join(f'{PACKAGE}/{n}' for n in stale)} do not match protos/flarelite.proto: {HOW}"
