"""CUDA tensors in payloads: they cross from host memory and arrive on the CPU unless a device is asked for.

Runs only where torch sees a CUDA GPU; skipped otherwise.
"""

from __future__ import annotations

import pytest

from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.serialization import decode, dumps, encode, loads

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int64", "bool"])
def test_cuda_tensor_arrives_on_the_cpu(dtype):
    t = (torch.arange(1000, device="cuda") % 7).to(getattr(torch, dtype))
    out = from_shareable(decode(*encode(DXO(DataKind.WEIGHTS, {"w": t}).to_shareable()))).data["w"]
    assert out.device.type == "cpu" and out.dtype == t.dtype
    assert torch.equal(out, t.cpu())


def test_receiver_can_ask_for_a_device():
    t = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    out = loads(dumps({"w": t}), device="cuda")["w"]
    assert out.is_cuda and torch.equal(out, t)
