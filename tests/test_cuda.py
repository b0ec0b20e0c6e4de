"""CUDA tensors in payloads: they cross from host memory and arrive on the CPU unless the receiver asks for a
device (``decode(..., device=)``, ``loads(..., device=)``, or ``engine.set_tensor_device`` for a whole site).

The tests marked ``cuda`` run only where torch sees a CUDA GPU and are skipped otherwise; the others check
``set_tensor_device`` wherever torch is installed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.communication.memory import InMemoryCommunicationProtocol
from flarelite.runtime.client import ClientRuntime
from flarelite.runtime.frames import Kind, frame_shareable, make_frame
from flarelite.serialization import decode, dumps, encode, loads
from flarelite.simulator.runner import run_simulation

torch = pytest.importorskip("torch")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire_fixtures")
DTYPES = ("float32", "bfloat16", "float16", "int64", "bool")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_tensor_arrives_on_the_cpu(dtype):
    t = (torch.arange(1000, device="cuda") % 7).to(getattr(torch, dtype))
    out = from_shareable(decode(*encode(DXO(DataKind.WEIGHTS, {"w": t}).to_shareable()))).data["w"]
    assert out.device.type == "cpu" and out.dtype == t.dtype
    assert torch.equal(out, t.cpu())


@cuda
def test_receiver_can_ask_for_a_device():
    t = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    out = loads(dumps({"w": t}), device="cuda")["w"]
    assert out.is_cuda and torch.equal(out, t)


def write_job(root: str, devices: dict[str, str | None]) -> str:
    """A job whose sites each run CudaExecutor(device=devices[site]); components in app_<site>/custom/."""
    folder = os.path.join(root, "cuda_job")
    deploy = {}
    for site, device in [("server", None), *devices.items()]:
        app = os.path.join(folder, f"app_{site}")
        os.makedirs(os.path.join(app, "config"))
        os.makedirs(os.path.join(app, "custom"))
        shutil.copy(os.path.join(FIXTURES, "cuda_components.py"), os.path.join(app, "custom"))
        if site == "server":
            name = "config_fed_server.json"
            config = {"workflows": [{"id": "cuda", "path": "cuda_components.CudaController", "args": {}}]}
        else:
            name = "config_fed_client.json"
            executor = {"path": "cuda_components.CudaExecutor", "args": {"device": device}}
            config = {"executors": [{"tasks": ["*"], "executor": executor}]}
        with open(os.path.join(app, "config", name), "w", encoding="utf-8") as f:
            json.dump({"format_version": 2, "components": [], **config}, f)
        deploy[f"app_{site}"] = [site]
    with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
        json.dump({"name": "cuda_job", "resource_spec": {}, "min_clients": 3, "deploy_map": deploy}, f)
    return folder


@cuda
@pytest.mark.timeout(180)
@pytest.mark.parametrize("direct_p2p", [False, True], ids=["relayed", "direct"])
def test_cuda_tensors_between_site_processes(tmp_path, direct_p2p):
    """Server -> site-1 (task) and site-1 -> site-2, site-3 (aux): CPU on arrival unless the site asked for cuda."""
    job = write_job(str(tmp_path / "jobs"), {"site-1": None, "site-2": None, "site-3": "cuda"})
    ws = tmp_path / "ws"
    assert run_simulation(job, str(ws), protocol="unix", direct_p2p=direct_p2p, ready_timeout=90) == 0
    report = json.loads((ws / "server" / "cuda_report.json").read_text())
    assert report["rc"] == "OK" and "error" not in report, report
    right = {"dtype_ok": True, "equal": True}
    assert report["task_seen"] == {d: {"device": "cpu", **right} for d in DTYPES}
    assert report["peers"]["site-2"]["seen"] == {d: {"device": "cpu", **right} for d in DTYPES}
    assert report["peers"]["site-3"]["seen"] == {d: {"device": "cuda", **right} for d in DTYPES}
    for peer in ("site-2", "site-3"):  # site-1 asked for nothing: the echoed CUDA tensors reach it on the CPU
        assert report["peers"][peer]["echo_device"] == "cpu" and report["peers"][peer]["echo_equal"], report


# ------------------------------------------------------------------------------ set_tensor_device, anywhere


@pytest.fixture
def site(tmp_path):
    return ClientRuntime(
        name="site-1",
        job_id="job",
        protocol=InMemoryCommunicationProtocol("site-1"),
        run_dir=str(tmp_path),
        workspace_root=str(tmp_path),
        app_config={"format_version": 2, "executors": [], "components": []},
    )


def test_set_tensor_device_moves_what_the_site_decodes(site):
    frame = make_frame(Kind.AUX_REQUEST, DXO(DataKind.WEIGHTS, {"w": torch.arange(4.0)}).to_shareable())
    site.set_tensor_device("meta")  # a device every torch build has: the tensor keeps its shape, not its data
    moved = from_shareable(frame_shareable(frame, site.tensor_device)).data["w"]
    assert moved.device.type == "meta" and moved.shape == (4,)
    site.set_tensor_device(None)
    assert site.tensor_device is None
    assert from_shareable(frame_shareable(frame, site.tensor_device)).data["w"].device.type == "cpu"


def test_set_tensor_device_refuses_what_is_not_a_usable_device(site):
    with pytest.raises(ValueError, match=r"site-1: 'warp9' is not a torch device"):
        site.set_tensor_device("warp9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"set_tensor_device\('cuda'\) at site-1: torch sees no CUDA GPU"):
            site.set_tensor_device("cuda")
    assert site.tensor_device is None
