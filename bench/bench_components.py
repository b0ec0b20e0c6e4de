"""Components the benchmarks run (importable by path, like a job's custom code)."""

from __future__ import annotations

import time

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import make_reply

RESULTS: dict = {}


class PingController(Controller):
    """Asks site-1 to make ``n`` aux round trips to site-2."""

    def __init__(self, n: int = 2000):
        super().__init__()
        self.n = n

    def control_flow(self, abort_signal, fl_ctx):
        task = Task(name="ping", data=DXO(DataKind.APP_DEFINED, {"n": self.n}).to_shareable())
        self.send_and_wait(task, fl_ctx, targets=["site-1"], abort_signal=abort_signal)
        RESULTS["rtts"] = from_shareable(task.client_tasks[0].result).data["rtts"]


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
