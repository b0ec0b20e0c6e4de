"""Components for the federated-event and tracking runs (a job's custom code: the processes import them).

The server's FedEventController writes what it saw to ``<its run dir>/fed_events.json`` at END_RUN, so that a
test can read it after a run in separate processes.
"""

from __future__ import annotations

import json
import os
import threading

from flarelite.apis.analytix import AnalyticsDataType
from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_component import FED_EVENT_TOPIC
from flarelite.apis.fl_constant import FedEventHeader, FLContextKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable
from flarelite.apis.signal import Signal

RESULT_FILE = "fed_events.json"


def _raw_event(event_type: object, event_id: object, **payload: object) -> Shareable:
    """A fed.event request built by hand (no fire_fed_event): to test what the receiver accepts."""
    request = Shareable(payload)
    request.set_header(FedEventHeader.EVENT_TYPE, event_type)
    if event_id is not None:
        request.set_header(FedEventHeader.EVENT_ID, event_id)
    request.set_header(FedEventHeader.ORIGIN, "site-evil")  # a claim the receiver must not believe
    request.set_header(FedEventHeader.DIRECTION, "out")
    return request


class FedEventController(Controller):
    """Fires ``fed.hello_clients`` to the clients, sends each one "go", records the fed events it receives."""

    def __init__(self, task_check_period: float = 0.05):
        super().__init__(task_check_period=task_check_period)
        self._seen: list = []
        self._results: dict = {}
        self._lock = threading.Lock()

    def start_controller(self, fl_ctx: FLContext) -> None:
        pass

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        marked = isinstance(data, Shareable) and data.get("marker") == "evil"
        if event_type.startswith("fed.") or marked:
            peer = fl_ctx.get_peer_context()
            with self._lock:
                self._seen.append(
                    {
                        "type": event_type,
                        "peer": peer.get_identity_name() if peer is not None else None,
                        "scope": fl_ctx.get_prop(FLContextKey.EVENT_SCOPE),
                        "origin_header": data.get_header(FedEventHeader.ORIGIN)
                        if isinstance(data, Shareable)
                        else None,
                        "n": data.get("n") if isinstance(data, Shareable) else None,
                        "marked": marked,
                    }
                )
        if event_type == EventType.END_RUN:
            with self._lock:
                out = {"events": self._seen, "results": self._results}
            with open(os.path.join(fl_ctx.get_run_dir(), RESULT_FILE), "w", encoding="utf-8") as f:
                json.dump(out, f)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.fire_fed_event("fed.hello_clients", Shareable({"n": 0}), fl_ctx)
        task = Task(name="go", data=Shareable())
        self.broadcast_and_wait(task, fl_ctx, min_responses=0, abort_signal=abort_signal)
        for client_task in task.client_tasks:
            result = client_task.result
            if result is not None and result.get_return_code() == ReturnCode.OK:
                with self._lock:
                    self._results[client_task.client.name] = from_shareable(result).data


class FedEventExecutor(Executor):
    """On "go": waits for the server's fed event, fires its own, and sends hand-built ones (duplicate, refused)."""

    def __init__(self, wait: float = 20.0):
        super().__init__()
        self.wait = wait
        self._hello = threading.Event()
        self._hello_peer: str | None = None
        self._hello_scope: str | None = None
        self._local: list = []

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == "fed.hello_clients":
            peer = fl_ctx.get_peer_context()
            self._hello_peer = peer.get_identity_name() if peer is not None else None
            self._hello_scope = fl_ctx.get_prop(FLContextKey.EVENT_SCOPE)
            self._hello.set()
        elif event_type == "fed.test_ping":
            self._local.append(fl_ctx.get_prop(FLContextKey.EVENT_SCOPE))

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        me = fl_ctx.get_identity_name()
        engine = fl_ctx.get_engine()
        got_hello = self._hello.wait(self.wait)
        self.fire_fed_event("fed.test_ping", Shareable({"n": 1}), fl_ctx)
        spoof = _raw_event("fed.test_spoof", f"spoof-{me}", n=2)
        spoof_rcs = [
            engine.send_aux_request("server", FED_EVENT_TOPIC, spoof, 10, fl_ctx)["server"].get_return_code()
            for _ in range(2)  # the second is a duplicate: accepted, not fired again
        ]
        bad = _raw_event(EventType.END_RUN, f"bad-{me}", marker="evil")
        bad_rc = engine.send_aux_request("server", FED_EVENT_TOPIC, bad, 10, fl_ctx)["server"].get_return_code()
        no_id = _raw_event("fed.test_noid", None, n=3)
        no_id_rc = engine.send_aux_request("server", FED_EVENT_TOPIC, no_id, 10, fl_ctx)["server"].get_return_code()
        out = {
            "got_hello": got_hello,
            "hello_peer": self._hello_peer,
            "hello_scope": self._hello_scope,
            "local_scopes": list(self._local),
            "spoof_rcs": spoof_rcs,
            "bad_rc": bad_rc,
            "no_id_rc": no_id_rc,
        }
        return DXO(DataKind.APP_DEFINED, out).to_shareable()


class OneTaskController(Controller):
    """Broadcasts one "train" task to every client and waits for the answers."""

    def __init__(self, task_check_period: float = 0.05):
        super().__init__(task_check_period=task_check_period)

    def start_controller(self, fl_ctx: FLContext) -> None:
        pass

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.broadcast_and_wait(
            Task(name="train", data=Shareable()), fl_ctx, min_responses=0, abort_signal=abort_signal
        )


class MetricsExecutor(Executor):
    """On "train": logs a few records through the site's AnalyticsSender (component id ``sender_id``)."""

    def __init__(self, sender_id: str = "analytics_sender"):
        super().__init__()
        self.sender_id = sender_id

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        sender = fl_ctx.get_engine().get_component(self.sender_id)
        offset = int(fl_ctx.get_identity_name().rsplit("-", 1)[-1])  # site-1 -> 1: values differ per site
        for step in range(3):
            sender.add("loss", 1.0 / (step + 1) + offset, AnalyticsDataType.SCALAR, global_step=step)
        sender.add("acc/group", {"a": 0.5 + offset, "b": 0.25}, AnalyticsDataType.SCALARS, global_step=1)
        sender.add("notes", f"hello from {fl_ctx.get_identity_name()}", AnalyticsDataType.TEXT, path="notes/site.txt")
        sender.add("hp", {"lr": 0.1, "opt": "sgd"}, AnalyticsDataType.PARAMETERS)
        sender.add("unstepped", 7.0, AnalyticsDataType.SCALAR)
        return Shareable()
