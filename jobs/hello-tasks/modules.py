"""hello-tasks: the three ways a controller hands work to clients, with data in DXOs and results read back."""

from flarelite.apis.controller_spec import ClientTask, Task
from flarelite.apis.dxo import DXO, DataKind, from_shareable
from flarelite.apis.executor import Executor
from flarelite.apis.fl_constant import ReturnCode
from flarelite.apis.fl_context import FLContext
from flarelite.apis.impl.controller import Controller
from flarelite.apis.shareable import Shareable, make_reply
from flarelite.apis.signal import Signal


class TasksController(Controller):
    """broadcast_and_wait a number to add to; send_and_wait to one named site; relay a counter through all."""

    def __init__(self, start_value: int = 10, named_site: str = "site-2"):
        super().__init__()
        self.start_value = start_value
        self.named_site = named_site

    def start_controller(self, fl_ctx: FLContext) -> None:
        self.log_info(fl_ctx, "controller started")

    def stop_controller(self, fl_ctx: FLContext) -> None:
        self.log_info(fl_ctx, "controller stopped")

    def _on_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        result = client_task.result
        if result.get_return_code() != ReturnCode.OK:
            self.log_error(fl_ctx, f"{client_task.client.name} failed: {result.get_return_code()}")
            return
        self.log_info(
            fl_ctx, f"{client_task.task.name}: {client_task.client.name} answered {from_shareable(result).data}"
        )

    def _relay_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        self._on_result(client_task, fl_ctx)
        # the next site of the relay gets the value the previous one returned
        dxo = from_shareable(client_task.result)
        client_task.task.data = DXO(DataKind.APP_DEFINED, {"value": dxo.data["value"]}).to_shareable()

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        data = DXO(DataKind.APP_DEFINED, {"value": self.start_value}).to_shareable()
        task = Task(name="add_one", data=data, result_received_cb=self._on_result, timeout=30)
        self.broadcast_and_wait(task, fl_ctx, targets=None, min_responses=0, abort_signal=abort_signal)
        total = sum(from_shareable(ct.result).data["value"] for ct in task.client_tasks)
        self.log_info(fl_ctx, f"broadcast done ({task.completion_status.value}): sum of answers = {total}")

        task = Task(name="whoami", data=Shareable(), result_received_cb=self._on_result)
        self.send_and_wait(task, fl_ctx, targets=[self.named_site], abort_signal=abort_signal)
        self.log_info(
            fl_ctx, f"send done: {self.named_site} answered {from_shareable(task.client_tasks[0].result).data}"
        )

        data = DXO(DataKind.APP_DEFINED, {"value": 0}).to_shareable()
        task = Task(name="add_one", data=data, result_received_cb=self._relay_result)
        self.relay_and_wait(task, fl_ctx, targets=None, abort_signal=abort_signal)
        final = from_shareable(task.client_tasks[-1].result).data["value"]
        self.log_info(fl_ctx, f"relay done through {[ct.client.name for ct in task.client_tasks]}: value = {final}")


class TasksExecutor(Executor):
    """add_one: returns value + 1; whoami: returns the site's name."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name == "add_one":
            value = from_shareable(shareable).data["value"]
            return DXO(DataKind.APP_DEFINED, {"value": value + 1}).to_shareable()
        if task_name == "whoami":
            return DXO(DataKind.APP_DEFINED, {"name": fl_ctx.get_identity_name()}).to_shareable()
        return make_reply(ReturnCode.TASK_UNKNOWN)
