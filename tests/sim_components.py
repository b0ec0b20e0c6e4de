"""Components used by the runtime tests (importable by path, as a job's custom code would be)."""

from __future__ import annotations

import sys
import threading
import time

from flarelite.apis.controller_spec import SendOrder, Task, TaskCompletionStatus
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from flarelite.apis.signal import Signal

# What the components saw, for the tests to read (everything runs in the test's process).
RESULTS: dict = {}
EVENTS: list = []
_lock = threading.Lock()


def record(key, value):
    with _lock:
        RESULTS[key] = value


def reset():
    with _lock:
        RESULTS.clear()
        EVENTS.clear()


class ProbeController(Controller):
    """Runs each scenario as a send_and_wait "probe" task to one site and records the site's answer."""

    def __init__(self, scenarios: list, server_handler: bool = False):
        super().__init__()
        self.scenarios = scenarios
        self.server_handler = server_handler

    def start_controller(self, fl_ctx: FLContext) -> None:
        if self.server_handler:
            fl_ctx.get_engine().register_aux_message_handler("ok", self._on_ok)

    def _on_ok(self, topic, request, fl_ctx):
        reply = DXO(DataKind.APP_DEFINED, {"echo": from_shareable(request).data, "at": "server"}).to_shareable()
        return reply

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        for sc in self.scenarios:
            task = Task(name="probe", data=DXO(DataKind.APP_DEFINED, sc).to_shareable())
            self.send_and_wait(task, fl_ctx, targets=[sc["site"]], abort_signal=abort_signal)
            result = task.client_tasks[-1].result
            record(
                sc["name"],
                from_shareable(result).data if result.get_return_code() == ReturnCode.OK else result.get_return_code(),
            )


class ProbeExecutor(Executor):
    """Sends the aux request a "probe" task describes and returns what came back; serves test topics."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        with _lock:
            EVENTS.append((fl_ctx.get_identity_name(), event_type))
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            engine.register_aux_message_handler("ok", self._ok)
            engine.register_aux_message_handler("raise", self._raise)
            engine.register_aux_message_handler("bad", self._bad)
            engine.register_aux_message_handler("slow", self._slow)
            engine.register_aux_message_handler("who", self._who)
            engine.register_aux_message_handler("noted", self._noted)

    def _ok(self, topic, request, fl_ctx):
        return DXO(
            DataKind.APP_DEFINED, {"echo": from_shareable(request).data, "at": fl_ctx.get_identity_name()}
        ).to_shareable()

    def _raise(self, topic, request, fl_ctx):
        raise RuntimeError("handler failed on purpose")

    def _bad(self, topic, request, fl_ctx):
        return 42

    def _slow(self, topic, request, fl_ctx):
        time.sleep(1.5)
        return make_reply(ReturnCode.OK)

    def _who(self, topic, request, fl_ctx):
        peer = fl_ctx.get_peer_context()
        return DXO(
            DataKind.APP_DEFINED,
            {
                "sender": request.get_peer_prop(ReservedKey.IDENTITY_NAME, None),
                "peer_identity": peer.get_identity_name() if peer else None,
                "peer_job": peer.get_job_id() if peer else None,
                "me": fl_ctx.get_identity_name(),
                "thread": threading.current_thread().name,
            },
        ).to_shareable()

    def _noted(self, topic, request, fl_ctx):
        record(("noted", fl_ctx.get_identity_name()), from_shareable(request).data)
        return make_reply(ReturnCode.OK)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        sc = from_shareable(shareable).data
        engine = fl_ctx.get_engine()
        request = DXO(DataKind.APP_DEFINED, {"hello": sc["name"]}).to_shareable()
        if sc.get("multicast"):
            replies = engine.multicast_aux_requests(
                topic=sc["topic"],
                target_requests={t: DXO(DataKind.APP_DEFINED, {"for": t}).to_shareable() for t in sc["targets"]},
                timeout=sc.get("timeout", 5),
                fl_ctx=fl_ctx,
            )
        else:
            replies = engine.send_aux_request(
                targets=sc.get("targets"),
                topic=sc["topic"],
                request=request,
                timeout=sc.get("timeout", 5),
                fl_ctx=fl_ctx,
            )
        out = {}
        for name, reply in replies.items():
            entry = {"rc": reply.get_return_code()}
            if reply.get_header(ReservedHeaderKey.CONTENT_TYPE) == "DXO":
                entry["data"] = from_shareable(reply).data
            out[name] = entry
        out["__thread__"] = threading.current_thread().name
        return DXO(DataKind.APP_DEFINED, out).to_shareable()


class BroadcastController(Controller):
    """Broadcasts one task with the given options and records completion status and per-site rcs."""

    def __init__(
        self,
        task_name: str = "work",
        min_responses: int = 0,
        wait_time_after_min_received: float = 0,
        timeout: int = 0,
        targets: list | None = None,
        mode: str = "broadcast",
    ):
        super().__init__()
        self.task_name = task_name
        self.min_responses = min_responses
        self.wait_time_after_min_received = wait_time_after_min_received
        self.timeout = timeout
        self.targets = targets
        self.mode = mode

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        received = []

        def on_result(client_task, fl_ctx):
            received.append((client_task.client.name, client_task.result.get_return_code()))

        def on_done(task, fl_ctx):
            record("done_cb", task.completion_status)

        data = DXO(DataKind.APP_DEFINED, {"x": 1}).to_shareable()
        task = Task(
            name=self.task_name, data=data, timeout=self.timeout, result_received_cb=on_result, task_done_cb=on_done
        )
        start = time.monotonic()
        if self.mode == "broadcast":
            self.broadcast_and_wait(
                task,
                fl_ctx,
                targets=self.targets,
                min_responses=self.min_responses,
                wait_time_after_min_received=self.wait_time_after_min_received,
                abort_signal=abort_signal,
            )
        elif self.mode == "send":
            self.send_and_wait(task, fl_ctx, targets=self.targets, abort_signal=abort_signal)
        elif self.mode == "send_any":
            self.send_and_wait(task, fl_ctx, targets=self.targets, send_order=SendOrder.ANY, abort_signal=abort_signal)
        elif self.mode == "relay":
            self.relay_and_wait(task, fl_ctx, targets=self.targets, abort_signal=abort_signal)
        record("elapsed", time.monotonic() - start)
        record("status", task.completion_status)
        record("received", received)
        record(
            "client_tasks",
            [
                (ct.client.name, ct.result.get_return_code() if ct.result is not None else None)
                for ct in task.client_tasks
            ],
        )
        record("standing", self.get_num_standing_tasks())


class BehaviourExecutor(Executor):
    """Behaves as the task name says: ok, raise, bad_result, exit and interrupt (site-1), wait_abort, sleep:<s>."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name == "raise":
            raise ValueError("execute failed on purpose")
        if task_name == "bad_result":
            return {"not": "a shareable"}
        if task_name == "exit" and fl_ctx.get_identity_name() == "site-1":
            sys.exit(3)
        if task_name == "interrupt" and fl_ctx.get_identity_name() == "site-1":
            raise KeyboardInterrupt
        if task_name == "wait_abort":
            while not abort_signal.triggered:
                time.sleep(0.01)
            record(("aborted", fl_ctx.get_identity_name()), True)
            return make_reply(ReturnCode.OK)
        if task_name.startswith("sleep"):
            delay = float(fl_ctx.get_identity_name().rsplit("-", 1)[-1]) * 0.4
            time.sleep(delay)
        x = from_shareable(shareable).data["x"]
        return DXO(DataKind.APP_DEFINED, {"x": x + 1, "site": fl_ctx.get_identity_name()}).to_shareable()


class ExchangeExecutor(Executor):
    """Every site sends its value to all others and blocks in execute until it has every peer's value."""

    def __init__(self, rounds: int = 3, fire_and_forget: bool = False):
        super().__init__()
        self.rounds = rounds
        self.fire_and_forget = fire_and_forget
        self._values: dict = {}
        self._cv = threading.Condition()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            fl_ctx.get_engine().register_aux_message_handler("value", self._on_value)

    def _on_value(self, topic, request, fl_ctx):
        d = from_shareable(request).data
        with self._cv:
            self._values[(d["round"], request.get_peer_prop(ReservedKey.IDENTITY_NAME, None))] = d["value"]
            self._cv.notify_all()
        return make_reply(ReturnCode.OK)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        engine = fl_ctx.get_engine()
        me = fl_ctx.get_identity_name()
        peers = [c for c in from_shareable(shareable).data["sites"] if c != me]
        value = float(me.rsplit("-", 1)[-1])
        for rnd in range(self.rounds):
            req = DXO(DataKind.APP_DEFINED, {"round": rnd, "value": value}).to_shareable()
            replies = engine.send_aux_request(
                peers, "value", req, timeout=0 if self.fire_and_forget else 10, fl_ctx=fl_ctx
            )
            if not self.fire_and_forget:
                assert all(r.get_return_code() == ReturnCode.OK for r in replies.values()), replies
            deadline = time.monotonic() + 10
            with self._cv:
                while not all((rnd, p) in self._values for p in peers):
                    if abort_signal.triggered or time.monotonic() > deadline:
                        return make_reply(ReturnCode.TASK_ABORTED)
                    self._cv.wait(0.1)
                value = (value + sum(self._values.pop((rnd, p)) for p in peers)) / (len(peers) + 1)
        return DXO(DataKind.APP_DEFINED, {"value": value}).to_shareable()


class ExchangeController(Controller):
    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        sites = [c.name for c in fl_ctx.get_engine().get_clients()]
        task = Task(name="exchange", data=DXO(DataKind.APP_DEFINED, {"sites": sites}).to_shareable())
        self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
        record(
            "exchange",
            {
                ct.client.name: from_shareable(ct.result).data["value"]
                if ct.result.get_return_code() == ReturnCode.OK
                else ct.result.get_return_code()
                for ct in task.client_tasks
            },
        )
        record("status", task.completion_status)


class FailingController(Controller):
    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        raise ZeroDivisionError("control_flow failed on purpose")


class BadArgController(Controller):
    def __init__(self, value: int):
        super().__init__()
        if value < 0:
            raise ValueError("value must be >= 0")
        self.value = value

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        pass


class PanicExecutor(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        self.system_panic("cannot continue on purpose", fl_ctx)
        return make_reply(ReturnCode.OK)


_ = (TaskCompletionStatus, FLContextKey)


class EarlyBirdExecutor(Executor):
    """site-1 sends aux requests from its START_RUN; the other sites are slow to register their handlers."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.START_RUN:
            return
        engine = fl_ctx.get_engine()
        me = fl_ctx.get_identity_name()
        if me == "site-1":
            engine.register_aux_message_handler("noted", ProbeExecutor._noted.__get__(self))
            req = DXO(DataKind.APP_DEFINED, {"early": True}).to_shareable()
            engine.send_aux_request(["site-2"], "noted", req, timeout=0, fl_ctx=fl_ctx)
            replies = engine.send_aux_request(["site-3"], "noted", req, timeout=10, fl_ctx=fl_ctx)
            record("early_replies", {k: v.get_return_code() for k, v in replies.items()})
        else:
            time.sleep(0.8)
            engine.register_aux_message_handler("noted", ProbeExecutor._noted.__get__(self))

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        return make_reply(ReturnCode.OK)


class IsolationExecutor(Executor):
    """site-1 sends a numpy array to site-2, whose handler mutates what it received; site-1's copy must not change."""

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            engine.register_aux_message_handler("mutate", self._mutate)
            try:
                engine.register_aux_message_handler("mutate", self._mutate)
            except ValueError as exc:
                record(("twice", fl_ctx.get_identity_name()), str(exc))

    def _mutate(self, topic, request, fl_ctx):
        import numpy as np

        arr = from_shareable(request).data["arr"]
        record("received_writable", bool(arr.flags.writeable))
        arr += 100
        return DXO(DataKind.WEIGHTS, {"arr": arr, "scalar": np.float32(2.5)}).to_shareable()

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        import numpy as np

        if fl_ctx.get_identity_name() != "site-1":
            return make_reply(ReturnCode.OK)
        mine = np.arange(6, dtype=np.float64).reshape(2, 3)
        replies = fl_ctx.get_engine().send_aux_request(
            ["site-2"], "mutate", DXO(DataKind.WEIGHTS, {"arr": mine}).to_shareable(), timeout=5, fl_ctx=fl_ctx
        )
        back = from_shareable(replies["site-2"]).data
        record("mine_after", mine.tolist())
        record("back", back["arr"].tolist())
        record("back_types", (type(back["arr"]).__name__, str(back["arr"].dtype), type(back["scalar"]).__name__))
        try:
            fl_ctx.get_engine().send_aux_request(
                ["site-2"], "mutate", DXO(DataKind.WEIGHTS, {"bad": {1, 2}}).to_shareable(), timeout=5, fl_ctx=fl_ctx
            )
        except TypeError as exc:
            record("unsupported", str(exc))
        return make_reply(ReturnCode.OK)


HOOKS: dict = {}


class ReconnectController(Controller):
    """Broadcast while site-3 is cut off, then heal the network and broadcast again once site-3 is back."""

    def __init__(self):
        super().__init__()
        self._back = threading.Event()

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.CLIENT_DISCONNECTED:
            with _lock:
                EVENTS.append(("server", "disconnected", fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME)))
        elif event_type == EventType.CLIENT_RECONNECTED:
            with _lock:
                EVENTS.append(("server", "reconnected", fl_ctx.get_prop(FLContextKey.RECONNECTED_CLIENT_NAME)))
            self._back.set()

    def control_flow(self, abort_signal, fl_ctx):
        first = Task(name="cut", data=DXO(DataKind.APP_DEFINED, {"x": 1}).to_shareable(), timeout=20)
        self.broadcast_and_wait(first, fl_ctx, min_responses=0, abort_signal=abort_signal)
        rcs = [(ct.client.name, ct.result.get_return_code() if ct.result else None) for ct in first.client_tasks]
        record("first", (first.completion_status, sorted(rcs)))
        record("disconnect_time", self.get_client_disconnect_time("site-3") is not None)
        HOOKS["heal"]()
        record("back", self._back.wait(10))
        second = Task(name="work", data=DXO(DataKind.APP_DEFINED, {"x": 1}).to_shareable(), timeout=20)
        self.broadcast_and_wait(second, fl_ctx, min_responses=0, abort_signal=abort_signal)
        record(
            "second",
            (
                second.completion_status,
                sorted((ct.client.name, ct.result.get_return_code()) for ct in second.client_tasks),
            ),
        )


class CutExecutor(BehaviourExecutor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name == "cut":
            if fl_ctx.get_identity_name() == "site-3":
                HOOKS["cut"]("site-3")
                return make_reply(ReturnCode.OK)  # cannot be delivered: site-3 is cut off
            task_name = "work"
        return super().execute(task_name, shareable, fl_ctx, abort_signal)


class TogetherExecutor(Executor):
    """As a synchronous peer-to-peer algorithm: ``execute`` returns only once every site of the run executes."""

    def __init__(self):
        super().__init__()

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        n = len(fl_ctx.get_engine().sites) - 1
        with _lock:
            arrived = RESULTS.setdefault("together", set())
            arrived.add(fl_ctx.get_identity_name())
            gate = RESULTS.setdefault("together_gate", threading.Event())
            if len(arrived) >= n:
                gate.set()
        while not gate.is_set():
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            gate.wait(0.05)
        return make_reply(ReturnCode.OK)


class ThreadsController(Controller):
    """Records the threads of the process while every site is idle, then broadcasts one task."""

    def __init__(self, quiet: float = 0.0):
        super().__init__()
        self.quiet = quiet

    def control_flow(self, abort_signal, fl_ctx):
        time.sleep(self.quiet)  # the pools' idle threads go after 2 s
        record("threads", [(t.ident, t.name) for t in threading.enumerate()])
        task = Task(name="work", data=DXO(DataKind.APP_DEFINED, {}).to_shareable())
        self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
        record("rcs", sorted({ct.result.get_return_code() for ct in task.client_tasks}))
