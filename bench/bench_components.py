"""Components the benchmarks run (importable by path, like a job's custom code)."""

from __future__ import annotations

import json
import os
import resource
import time

import numpy as np

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import make_reply

RESULTS: dict = {}


class PingController(Controller):
    """Asks site-1 to make ``n`` aux round trips to site-2; the rtts go to RESULTS and, if given, to JSON file ``out``
    (the way back from a server process)."""

    def __init__(self, n: int = 2000, out: str | None = None):
        super().__init__()
        self.n = n
        self.out = out

    def control_flow(self, abort_signal, fl_ctx):
        task = Task(name="ping", data=DXO(DataKind.APP_DEFINED, {"n": self.n}).to_shareable())
        self.send_and_wait(task, fl_ctx, targets=["site-1"], abort_signal=abort_signal)
        RESULTS["rtts"] = from_shareable(task.client_tasks[0].result).data["rtts"]
        if self.out:
            with open(self.out, "w") as f:
                json.dump(RESULTS["rtts"], f)


class PingExecutor(Executor):
    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler(
                "ping", lambda topic, request, fl_ctx: make_reply(ReturnCode.OK)
            )

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        engine = fl_ctx.get_engine()
        n = from_shareable(shareable).data["n"]
        request = DXO(DataKind.APP_DEFINED, {"message": "ping"}).to_shareable()
        rtts = []
        for _ in range(n):
            t0 = time.perf_counter()
            reply = engine.send_aux_request(["site-2"], "ping", request, timeout=10, fl_ctx=fl_ctx)
            rtts.append(time.perf_counter() - t0)
            assert reply["site-2"].get_return_code() == ReturnCode.OK
        return DXO(DataKind.APP_DEFINED, {"rtts": rtts}).to_shareable()


class RingController(Controller):
    """Each round: broadcast_and_wait a small task; each site exchanges a value with its two ring neighbours."""

    def __init__(self, rounds: int = 3):
        super().__init__()
        self.rounds = rounds

    def control_flow(self, abort_signal, fl_ctx):
        n = len(fl_ctx.get_engine().get_clients())
        times = []
        for r in range(self.rounds):
            t0 = time.perf_counter()
            task = Task(name="ring", data=DXO(DataKind.APP_DEFINED, {"n": n, "round": r}).to_shareable())
            self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
            times.append(time.perf_counter() - t0)
            bad = [ct.client.name for ct in task.client_tasks if ct.result.get_return_code() != ReturnCode.OK]
            assert not bad, f"round {r}: failed sites {bad[:5]}"
        RESULTS["round_times"] = times


class RingExecutor(Executor):
    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler(
                "value", lambda topic, request, fl_ctx: make_reply(ReturnCode.OK)
            )

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        data = from_shareable(shareable).data
        n, me = data["n"], fl_ctx.get_identity_name()
        i = int(me.rsplit("-", 1)[1]) - 1  # the simulator names clients site-1..site-N
        neighbours = sorted({f"site-{(i - 1) % n + 1}", f"site-{(i + 1) % n + 1}"} - {me})
        request = DXO(DataKind.APP_DEFINED, {"value": float(i), "round": data["round"]}).to_shareable()
        replies = fl_ctx.get_engine().send_aux_request(neighbours, "value", request, timeout=30, fl_ctx=fl_ctx)
        if any(r.get_return_code() != ReturnCode.OK for r in replies.values()):
            return make_reply(ReturnCode.ERROR)
        return make_reply(ReturnCode.OK)


def peak_mib() -> float:
    """This process's peak RSS so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checks(array: np.ndarray) -> list[float]:
    """Sums of a few slices spread over ``array``: enough to see that the bytes arrived, cheap to compute."""
    step = max(1, len(array) // 8)
    return [float(array[i : i + 4096].sum(dtype=np.float64)) for i in range(0, len(array), step)]


def _write_report(fl_ctx, **values) -> None:
    """Merge ``values`` into bench.json in this site's folder (WS/<site>/)."""
    path = os.path.join(fl_ctx.get_run_dir(), "bench.json")
    report = {}
    if os.path.exists(path):
        with open(path) as f:
            report = json.load(f)
    with open(path, "w") as f:
        json.dump({**report, **values}, f)


class BlobController(Controller):
    """Asks site-1 to send a float32 array of ``size_mib`` MiB to site-2 through aux (relayed by the server).

    Every site (the server too) writes bench.json in its folder: idle_mib (peak RSS just before the transfer),
    peak_mib (after it); site-1 adds seconds (from send_aux_request until the reply arrived).
    """

    def __init__(self, size_mib: int = 256):
        super().__init__()
        self.size_mib = size_mib

    def control_flow(self, abort_signal, fl_ctx):
        for name, data in (("idle", {}), ("send", {"size_mib": self.size_mib}), ("report", {})):
            if name == "send":
                _write_report(fl_ctx, idle_mib=peak_mib())
            task = Task(name=name, data=DXO(DataKind.APP_DEFINED, data).to_shareable())
            targets = ["site-1"] if name == "send" else None
            self.broadcast_and_wait(task, fl_ctx, targets=targets, min_responses=0, abort_signal=abort_signal)
            bad = [ct.client.name for ct in task.client_tasks if ct.result.get_return_code() != ReturnCode.OK]
            assert not bad, f"task {name}: failed sites {bad}"
        _write_report(fl_ctx, peak_mib=peak_mib())


class BlobExecutor(Executor):
    """site-1 sends the array (task ``send``); site-2's handler checks a few slices of it and replies OK."""

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler("blob", self._receive)

    @staticmethod
    def _receive(topic, request, fl_ctx):
        data = from_shareable(request).data
        ok = checks(data["array"]) == data["checks"]
        return make_reply(ReturnCode.OK if ok else ReturnCode.ERROR)

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name == "idle":
            _write_report(fl_ctx, idle_mib=peak_mib())
        elif task_name == "report":
            _write_report(fl_ctx, peak_mib=peak_mib())
        elif task_name == "send":
            _write_report(fl_ctx, idle_mib=peak_mib())
            n = from_shareable(shareable).data["size_mib"] << 18  # float32 items in size_mib MiB
            array = np.arange(n, dtype=np.float32)
            request = DXO(DataKind.APP_DEFINED, {"array": array, "checks": checks(array)}).to_shareable()
            t0 = time.perf_counter()
            reply = fl_ctx.get_engine().send_aux_request(["site-2"], "blob", request, timeout=600, fl_ctx=fl_ctx)
            seconds = time.perf_counter() - t0
            if reply["site-2"].get_return_code() != ReturnCode.OK:
                return make_reply(ReturnCode.ERROR)
            _write_report(fl_ctx, seconds=seconds)
        return make_reply(ReturnCode.OK)
