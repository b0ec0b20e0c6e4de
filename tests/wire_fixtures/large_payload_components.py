"""Components that send a large numpy array and torch tensors from one site to another through aux.

Copied into a job's ``app/custom/`` folder by tests/test_large_payloads.py: in the simulator's processes mode
every site is its own process, so the components cannot report through module state; the sending site writes
what came back into a JSON file in its own folder (its working directory), which the test reads.

The payload is computed deterministically from its size on both sides, so the receiver can check it bit for bit
without having it sent twice. torch is imported only when tensors are asked for.
"""

from __future__ import annotations

import json
import os
import traceback
import zlib

import numpy as np

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal

TOPIC = "large"
RESULT_FILE = "large_payload_replies.json"


# ----------------------------------------------------------------------------------------------- the payload


def expected_array(n_bytes: int) -> np.ndarray:
    """A float32 array of ``n_bytes`` (rows of 1024) whose values repeat a block holding NaN, -0.0, inf, subnormals."""
    block = np.arange(65521, dtype=np.float32) * np.float32(0.25) - np.float32(4096)
    block[:6] = [np.nan, -0.0, np.inf, -np.inf, np.float32(1e-45), np.finfo(np.float32).max]
    out = np.empty(n_bytes // 4, dtype=np.float32)
    for start in range(0, out.size, block.size):  # np.resize does the same, several times slower
        out[start : start + block.size] = block[: out.size - start]
    return out.reshape(-1, 1024)


def expected_tensors() -> dict:
    """torch tensors of several dtypes and shapes (incl. 0-d, empty, non-contiguous, larger than one chunk)."""
    import torch

    f32 = torch.arange(12 * 7, dtype=torch.float32).reshape(12, 7) / 3
    return {
        "bf16": torch.linspace(-3, 3, 4096).to(torch.bfloat16).reshape(64, 64),
        "bf16_big": (torch.arange(4 << 20) % 1021 - 510).to(torch.bfloat16),  # 8 MiB: several chunks
        "f16": (torch.arange(4096, dtype=torch.float32) / 7 - 300).to(torch.float16),
        "i64": torch.arange(-5000, 5000, dtype=torch.int64) * (1 << 40) + 12345,
        "bool": torch.arange(1000) % 3 == 0,
        "scalar_bf16": torch.tensor(3.5, dtype=torch.bfloat16),
        "empty_i64": torch.zeros(0, 3, dtype=torch.int64),
        "transposed_f32": f32.t(),  # not contiguous: arrives with the same values and shape
    }


def _tensor_bytes(t) -> bytes:
    import torch

    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def checksum(array: np.ndarray, tensors: dict | None) -> int:
    """crc32 over the array's bytes and then each tensor's bytes, in key order."""
    crc = zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))
    for key in sorted(tensors or {}):
        crc = zlib.crc32(_tensor_bytes(tensors[key]), crc)
    return crc


def compare_array(array: object, array_bytes: int) -> list[str]:
    """How ``array`` differs from ``expected_array(array_bytes)``, bit for bit (an empty list when it does not)."""
    want = expected_array(array_bytes)
    if not isinstance(array, np.ndarray):
        return [f"array arrived as {type(array).__name__}"]
    if array.dtype != want.dtype or array.shape != want.shape:
        return [f"array arrived as {array.dtype}{array.shape}, expected {want.dtype}{want.shape}"]
    if not np.array_equal(array.view(np.uint32), want.view(np.uint32)):
        return [f"array differs first at flat index {int(np.argmax(array.view(np.uint32) != want.view(np.uint32)))}"]
    return []


def compare_tensors(tensors: object) -> list[str]:
    """How ``tensors`` differ from ``expected_tensors()``, bit for bit (an empty list when they do not)."""
    import torch

    expected = expected_tensors()
    if not isinstance(tensors, dict) or sorted(tensors) != sorted(expected):
        return [f"tensors arrived as {type(tensors).__name__} {sorted(tensors or {})!r:.200}"]
    problems = []
    for key, want in expected.items():
        got = tensors[key]
        if not isinstance(got, torch.Tensor):
            problems.append(f"{key}: arrived as {type(got).__name__}")
        elif got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            problems.append(
                f"{key}: arrived as {got.dtype}{tuple(got.shape)}, expected {want.dtype}{tuple(want.shape)}"
            )
        elif got.device.type != "cpu":
            problems.append(f"{key}: arrived on {got.device}")
        elif _tensor_bytes(got) != _tensor_bytes(want):
            problems.append(f"{key}: values differ")
    return problems


def compare(array: object, tensors: object, array_bytes: int, with_torch: bool) -> list[str]:
    """Both checks."""
    return compare_array(array, array_bytes) + (compare_tensors(tensors) if with_torch else [])


# ----------------------------------------------------------------------------------------------- components


class LargePayloadController(Controller):
    """Broadcasts one task to every site and waits for all of them."""

    def __init__(self, task_timeout: int = 120):
        super().__init__()
        self.task_timeout = task_timeout

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        n = len(fl_ctx.get_engine().get_clients())
        task = Task(name="large", data=Shareable(), timeout=self.task_timeout)
        self.broadcast_and_wait(task, fl_ctx, min_responses=n, abort_signal=abort_signal)


class LargePayloadExecutor(Executor):
    """``sender`` sends the payload to ``receiver`` through aux and writes the replies to RESULT_FILE (cwd)."""

    def __init__(
        self,
        sender: str = "site-1",
        receiver: str = "site-2",
        array_bytes: int = 300 << 20,
        with_torch: bool = True,
        aux_timeout: float = 120.0,
    ):
        super().__init__()
        self.sender = sender
        self.receiver = receiver
        self.array_bytes = array_bytes
        self.with_torch = with_torch
        self.aux_timeout = aux_timeout

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler(TOPIC, self._on_large)

    def _on_large(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        data: dict = {}
        try:
            data = from_shareable(request).data
            problems = compare(data.get("array"), data.get("tensors"), self.array_bytes, self.with_torch)
            crc = checksum(data["array"], data.get("tensors")) if not problems else None
            sender = request.get_peer_prop(ReservedKey.IDENTITY_NAME, None)
        except Exception:  # report it to the sender rather than as a bare HANDLER_EXCEPTION
            problems, crc, sender = [traceback.format_exc()[-2000:]], None, None
        reply = DXO(
            DataKind.APP_DEFINED,
            {
                "checksum": crc,
                "problems": problems,
                "sender_seen": sender,
                "echo": data.get("tensors") if not problems and self.with_torch else None,
            },
        ).to_shareable()
        reply.set_return_code(ReturnCode.OK if not problems else ReturnCode.BAD_REQUEST_DATA)
        return reply

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if fl_ctx.get_identity_name() != self.sender:
            return make_reply(ReturnCode.OK)
        out: dict = {}
        try:
            array = expected_array(self.array_bytes)
            tensors = expected_tensors() if self.with_torch else None
            out["expected_checksum"] = checksum(array, tensors)
            payload = {"array": array, "tensors": tensors} if tensors is not None else {"array": array}
            replies = fl_ctx.get_engine().send_aux_request(
                targets=[self.receiver],
                topic=TOPIC,
                request=DXO(DataKind.WEIGHTS, payload).to_shareable(),
                timeout=self.aux_timeout,
                fl_ctx=fl_ctx,
            )
            out["unchanged_after_send"] = not compare(array, tensors, self.array_bytes, self.with_torch)
            out["replies"] = {}
            for name, reply in replies.items():
                entry: dict = {"rc": reply.get_return_code()}
                try:
                    data = from_shareable(reply).data
                except Exception as exc:  # an error reply carries no DXO
                    entry["error"] = repr(exc)
                else:
                    entry.update({k: data[k] for k in ("checksum", "problems", "sender_seen")})
                    if self.with_torch:
                        echo = data.get("echo")
                        entry["echo_problems"] = compare_tensors(echo) if echo is not None else ["no echo"]
                out["replies"][name] = entry
        except Exception:
            out["error"] = traceback.format_exc()
        with open(os.path.join(os.getcwd(), RESULT_FILE), "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        return make_reply(ReturnCode.OK if "error" not in out else ReturnCode.EXECUTION_EXCEPTION)
