"""The seed scenario: every site greets every other site through an aux channel (topic "hello")."""

from flarelite.apis.controller_spec import Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.event_type import EventType
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReservedKey, ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal


class BasicController(Controller):
    """Broadcasts one "talk" task to every client and waits for all of them."""

    def start_controller(self, fl_ctx: FLContext) -> None:
        pass

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self.broadcast_and_wait(
            task=Task(name="talk", data=Shareable()),
            targets=None,
            min_responses=0,
            fl_ctx=fl_ctx,
        )


class P2PExecutor(Executor):
    """On "talk", sends "Hello from <me>" to the other sites; logs every greeting it receives."""

    def __init__(self, num_clients: int = 3, timeout: float = 10):
        super().__init__()
        self.num_clients = num_clients
        self.timeout = timeout

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name == "talk":
            engine = fl_ctx.get_engine()
            identity_name = fl_ctx.get_identity_name()
            engine.send_aux_request(
                targets=[f"site-{i}" for i in range(1, self.num_clients + 1) if f"site-{i}" != identity_name],
                topic="hello",
                request=DXO(
                    data_kind=DataKind.APP_DEFINED,
                    data={"message": f"Hello from {identity_name}"},
                ).to_shareable(),
                timeout=self.timeout,
                fl_ctx=fl_ctx,
            )
            return make_reply(ReturnCode.OK)
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            engine.register_aux_message_handler(topic="hello", message_handle_func=self._handle_aux_request)

    def _handle_aux_request(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        sender = request.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default=None)
        received_message = from_shareable(request).data["message"]
        self.log_info(fl_ctx, f"Received message from {sender}: {received_message}")
        return make_reply(ReturnCode.OK)
