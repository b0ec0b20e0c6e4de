"""Components that send CUDA tensors in a task and through aux, between site processes.

Copied into a job's ``app/custom/`` folder by tests/test_cuda.py. The server sends site-1 a task holding CUDA
tensors; site-1 sends them on to every other site through aux; each receiver says where and how each tensor
arrived and echoes a CUDA tensor back. Executors built with ``device="cuda"`` ask for that device at START_RUN
(``engine.set_tensor_device``); the others get CPU tensors. The server writes what site-1 reported into
``cuda_report.json`` in its own folder (its working directory), which the test reads.
"""

from __future__ import annotations

import json
import traceback

import torch

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller

TOPIC = "cuda_probe"
REPORT_FILE = "cuda_report.json"
DTYPES = ("float32", "bfloat16", "float16", "int64", "bool")


def expected(dtype: str, device: str = "cpu") -> torch.Tensor:
    """The tensor of ``dtype`` every side can recompute: 3 x 1000 values in 0..6."""
    return (torch.arange(3000, device=device).reshape(3, 1000) % 7).to(getattr(torch, dtype))


def payload() -> dict:
    return {dtype: expected(dtype, "cuda") for dtype in DTYPES}


def describe(tensors: dict) -> dict:
    """For each tensor: its device type, whether its dtype is right, whether its values are."""
    seen = {}
    for dtype in DTYPES:
        t = tensors.get(dtype)
        if not isinstance(t, torch.Tensor):
            seen[dtype] = {"device": None, "dtype_ok": False, "equal": False}
            continue
        seen[dtype] = {
            "device": t.device.type,
            "dtype_ok": t.dtype == getattr(torch, dtype),
            "equal": bool(torch.equal(t.cpu(), expected(dtype))),
        }
    return seen


class CudaController(Controller):
    def control_flow(self, abort_signal, fl_ctx):
        task = Task(name="cuda", data=DXO(DataKind.APP_DEFINED, payload()).to_shareable(), timeout=120)
        self.send_and_wait(task, fl_ctx, targets=["site-1"], abort_signal=abort_signal)
        result = task.client_tasks[0].result
        report = {"rc": result.get_return_code()}
        if report["rc"] == ReturnCode.OK:
            report.update(from_shareable(result).data)
        with open(REPORT_FILE, "w", encoding="utf-8") as f:
            json.dump(report, f)


class CudaExecutor(Executor):
    def __init__(self, device: str | None = None):
        super().__init__()
        self.device = device

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            if self.device:
                engine.set_tensor_device(self.device)
            engine.register_aux_message_handler(TOPIC, self._probe)

    def _probe(self, topic, request, fl_ctx):
        seen = describe(from_shareable(request).data)
        return DXO(DataKind.APP_DEFINED, {"seen": seen, "echo": expected("bfloat16", "cuda")}).to_shareable()

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        try:
            engine = fl_ctx.get_engine()
            task_seen = describe(from_shareable(shareable).data)
            others = [c for c in engine.sites if c not in ("server", engine.name)]
            replies = engine.send_aux_request(
                others, TOPIC, DXO(DataKind.APP_DEFINED, payload()).to_shareable(), timeout=60, fl_ctx=fl_ctx
            )
            peers = {}
            for name, reply in replies.items():
                if reply.get_return_code() != ReturnCode.OK:
                    peers[name] = {"rc": reply.get_return_code()}
                    continue
                data = from_shareable(reply).data
                echo = data["echo"]
                peers[name] = {
                    "rc": ReturnCode.OK,
                    "seen": data["seen"],
                    "echo_device": echo.device.type,
                    "echo_equal": bool(torch.equal(echo.cpu(), expected("bfloat16"))),
                }
            report = {"task_seen": task_seen, "peers": peers}
        except Exception:
            report = {"error": traceback.format_exc()}
        return DXO(DataKind.APP_DEFINED, report).to_shareable()
